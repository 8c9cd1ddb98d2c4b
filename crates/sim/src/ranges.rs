//! A first-fit allocator of aligned ranges: the IOVA space of an IOMMU domain and the
//! frames of a carveout both use it.

use std::collections::BTreeMap;

/// Free ranges `start -> end` of a bounded space, disjoint and never adjacent.
#[derive(Clone, Debug)]
pub(crate) struct FreeRanges {
    free: BTreeMap<u64, u64>,
    total: u64,
}

impl FreeRanges {
    /// All of `start..end` free.
    pub(crate) fn new(start: u64, end: u64) -> FreeRanges {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end);
        }
        FreeRanges { free, total: end.saturating_sub(start) }
    }

    /// Takes the lowest `align`-aligned range of `len` inside `lo..hi`.
    pub(crate) fn claim(&mut self, len: u64, align: u64, lo: u64, hi: u64) -> Option<u64> {
        let (s, e, t) = self.free.range(..hi).find_map(|(&s, &e)| {
            let t = s.max(lo).checked_next_multiple_of(align)?;
            (t.checked_add(len)? <= e.min(hi)).then_some((s, e, t))
        })?;
        self.free.remove(&s);
        if t > s {
            self.free.insert(s, t);
        }
        if t + len < e {
            self.free.insert(t + len, e);
        }
        self.total -= len;
        Some(t)
    }

    /// Gives `start..start + len` back, merging with free neighbours.
    pub(crate) fn release(&mut self, start: u64, len: u64) {
        let (mut s, mut e) = (start, start + len);
        if let Some((&ps, &pe)) = self.free.range(..s).next_back() {
            debug_assert!(pe <= s, "range {s:#x} freed twice");
            if pe == s {
                self.free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = self.free.get(&e) {
            self.free.remove(&e);
            e = ne;
        }
        self.free.insert(s, e);
        self.total += len;
    }

    /// The free ranges, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&s, &e)| (s, e))
    }

    /// The free total, as kept by `claim` and `release` (the checker recounts it).
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The longest free range.
    pub(crate) fn largest(&self) -> u64 {
        self.iter().map(|(s, e)| e - s).max().unwrap_or(0)
    }
}
