//! [`Window`]: a set of physical address ranges, the "where may the pages go" answer.

use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::units::{PageSize, PhysAddr, PhysRange, Size};

/// A set of physical addresses: sorted, disjoint, non-adjacent ranges.
///
/// The empty window means "nowhere". Intersection is the merge operation of the
/// address part of the solver.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Window(SmallVec<[PhysRange; 2]>);

impl Window {
    /// Every representable address.
    pub fn everything() -> Window {
        Window::below(u64::MAX)
    }

    /// Nowhere.
    pub fn empty() -> Window {
        Window(SmallVec::new())
    }

    /// Addresses below `end`; empty for 0.
    pub fn below(end: u64) -> Window {
        Window(PhysRange::below(end).into_iter().collect())
    }

    /// The union of `ranges`, normalised.
    pub fn from_ranges(ranges: impl IntoIterator<Item = PhysRange>) -> Window {
        let mut v: SmallVec<[PhysRange; 4]> = ranges.into_iter().collect();
        v.sort_unstable();
        let mut out: SmallVec<[PhysRange; 2]> = SmallVec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if r.start() <= last.end() => {
                    if r.end() > last.end() {
                        *last = PhysRange::new(last.start(), r.end()).expect("extends a non-empty range");
                    }
                }
                _ => out.push(r),
            }
        }
        Window(out)
    }

    /// The union of disjoint `ranges` given in address order (adjacent ones merge), without
    /// sorting; out-of-order input falls back to [`Window::from_ranges`].
    pub fn from_sorted(ranges: impl IntoIterator<Item = PhysRange>) -> Window {
        let mut out: SmallVec<[PhysRange; 2]> = SmallVec::new();
        let mut rest = ranges.into_iter();
        while let Some(r) = rest.next() {
            match out.last_mut() {
                Some(last) if r.start() == last.end() => {
                    *last = PhysRange::new(last.start(), r.end()).expect("extends a non-empty range");
                }
                Some(last) if r.start() < last.end() => {
                    return Window::from_ranges(out.into_iter().chain([r]).chain(rest));
                }
                _ => out.push(r),
            }
        }
        Window(out)
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[PhysRange] {
        &self.0
    }

    /// Whether no address is in the window.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The addresses in both windows.
    pub fn intersect(&self, other: &Window) -> Window {
        let (mut i, mut j) = (0, 0);
        let mut out = SmallVec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            if let Some(r) = a.intersect(b) {
                out.push(r);
            }
            if a.end() <= b.end() {
                i += 1;
            } else {
                j += 1;
            }
        }
        Window(out)
    }

    /// The addresses in `self` but not in `other`.
    pub fn subtract(&self, other: &Window) -> Window {
        let mut out = SmallVec::new();
        for &r in &self.0 {
            let mut cur = r.start();
            for &o in &other.0 {
                if o.end() <= cur || o.start() >= r.end() {
                    continue;
                }
                if o.start() > cur {
                    out.extend(PhysRange::new(cur, o.start()).ok());
                }
                cur = cur.max(o.end());
            }
            out.extend(PhysRange::new(cur, r.end()).ok());
        }
        Window(out)
    }

    /// Whether the window is a subset of `other`.
    pub fn is_subset_of(&self, other: &Window) -> bool {
        self.0.iter().all(|r| other.contains_range(*r))
    }

    /// Whether `range` lies inside the window.
    pub fn contains_range(&self, range: PhysRange) -> bool {
        self.0.iter().any(|r| r.contains_range(range))
    }

    /// The total number of bytes in the window (saturating).
    pub fn total(&self) -> Size {
        Size::new(self.0.iter().fold(0u64, |acc, r| acc.saturating_add(r.len().bytes())))
    }

    /// The longest range.
    pub fn largest(&self) -> Option<PhysRange> {
        self.0.iter().copied().max_by_key(|r| (r.len(), std::cmp::Reverse(r.start())))
    }

    /// The lowest `align`-aligned range of `size` bytes inside the window, if any.
    pub fn first_fit(&self, size: Size, align: PageSize) -> Option<PhysRange> {
        self.0.iter().find_map(|r| {
            let start = r.start().align_up(align).ok()?;
            let candidate = PhysRange::from_start_size(start, size).ok()?;
            r.contains_range(candidate).then_some(candidate)
        })
    }

    /// The first address past the window, if non-empty.
    pub fn end(&self) -> Option<PhysAddr> {
        self.0.last().map(|r| r.end())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(nowhere)");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ∪ ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(s), PhysAddr::new(e)).unwrap()
    }

    #[test]
    fn normalises_overlaps_and_adjacency() {
        let w = Window::from_ranges([r(10, 20), r(0, 5), r(5, 8), r(15, 30)]);
        assert_eq!(w.ranges(), [r(0, 8), r(10, 30)]);
        assert_eq!(w.total(), Size::new(28));
    }

    #[test]
    fn intersect_and_subtract() {
        let a = Window::from_ranges([r(0, 10), r(20, 30)]);
        let b = Window::from_ranges([r(5, 25)]);
        assert_eq!(a.intersect(&b).ranges(), [r(5, 10), r(20, 25)]);
        assert_eq!(a.subtract(&b).ranges(), [r(0, 5), r(25, 30)]);
        assert!(a.intersect(&Window::empty()).is_empty());
        assert!(a.intersect(&b).is_subset_of(&a));
    }

    #[test]
    fn from_sorted_merges_adjacent_ranges() {
        let w = Window::from_sorted([r(0, 5), r(5, 8), r(10, 20)]);
        assert_eq!(w.ranges(), [r(0, 8), r(10, 20)]);
        assert_eq!(Window::from_sorted([r(10, 20), r(0, 5), r(30, 40)]).ranges(), [r(0, 5), r(10, 20), r(30, 40)]);
    }

    #[test]
    fn first_fit_respects_alignment() {
        let w = Window::from_ranges([r(0x1000, 0x3000), r(0x10000, 0x30000)]);
        let got = w.first_fit(Size::new(0x10000), PageSize::SZ_64K).unwrap();
        assert_eq!(got, r(0x10000, 0x20000));
        assert_eq!(w.first_fit(Size::new(0x30000), PageSize::SZ_4K), None);
    }
}
