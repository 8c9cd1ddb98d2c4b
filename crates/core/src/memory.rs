//! The free memory of an empty machine, and how much of a buffer its segments can hold.
//!
//! This is the memory model behind "a Plan means a placement exists": the solver returns
//! a [`crate::Plan`] only when a backing built by these rules exists, and
//! [`crate::Plan::witness`] builds one.
//!
//! # Sources
//!
//! Memory comes from three kinds of source ([`SourceKind`]):
//!
//! - the **page allocator**: each DRAM bank minus its CMA areas and carveouts, one source
//!   per remaining piece. A segment taken from it is the start of one naturally aligned
//!   block of `2^order` pages (`alloc_pages()`, the tail given back as
//!   `alloc_pages_exact()` does): a segment of `len` bytes starts on a multiple of `len`
//!   rounded up to a power of two, that whole block lies inside the source, and no
//!   segment is longer than `max_buddy_block` (`MAX_ORDER`).
//! - **CMA areas**: any run inside one area, starting on the buffer's alignment
//!   (`cma_alloc()` aligns what it hands out).
//! - **carveouts**: like CMA areas, but only those some device names in its `regions`
//!   (or a hint rule that applies to it names), or, for a protected buffer, the protected
//!   carveouts (and only they). A bank named in `regions` does not make the carveouts
//!   inside it usable.
//!
//! A segment never spans two sources, even adjacent ones: a contiguous run fits inside one
//! CMA area, one carveout, or one page-allocator block. Each source is clipped to the
//! buffer's window (every device's reach, intersected with the pool some device restricts
//! it to) and trimmed to the granule: every segment starts and ends on the largest IOMMU
//! granule of the devices (`iommu_map()` needs aligned physical addresses).
//!
//! # Segments
//!
//! With a segment count limit the stacked limits apply (see [`crate::requirements`]): at
//! most `max_segments` segments, none longer than `max_segment_size` nor crossing a
//! multiple of `segment_boundary_mask + 1`. With more than one segment allowed, a
//! `max_segment_size` longer than the buffer's alignment is used rounded down to a
//! multiple of it, so that aligned runs follow each other without gaps. The buffer's
//! first byte lies on the alignment: one segment (the one placed first) starts on it.
//! Without a count limit the length and boundary limits only shape each device's own sg
//! table and bind nothing.
//!
//! # Capacity
//!
//! Inside one source the best use of `k` segments is known in closed form, as a list of
//! "gains" (the bytes each further segment adds), largest first:
//!
//! - a CMA area or carveout, cut at the boundary windows: each window piece holds runs of
//!   the longest segment length `L` at aligned starts, then one shorter tail;
//! - the page allocator: cut the source into maximal naturally aligned blocks, no larger
//!   than `L` rounded up to a power of two (`2^m`). A smaller block is one segment. A
//!   `2^m` block gives `L` with one segment (its start) and the rest with a second (its
//!   two halves, each at most `L`).
//!
//! Gains are independent across pieces and decreasing within one, so the most `n`
//! segments can hold is the sum of the `n` largest gains; when none of those can start on
//! the alignment, the smallest is swapped for the largest gain that can. A buffer fits
//! when that sum reaches its size.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use smallvec::SmallVec;

use crate::platform::MemoryMap;
use crate::units::{PhysAddr, PhysRange, Size};
use crate::window::Window;

/// Where a source's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The page allocator (buddy): blocks up to `max_buddy_block`.
    PageAllocator,
    /// A CMA area.
    Cma,
    /// A carveout.
    Carveout,
}

impl SourceKind {
    /// Whether a segment from it is one page-allocator block.
    const fn is_buddy(self) -> bool {
        matches!(self, SourceKind::PageAllocator)
    }

    /// The words for it in explanations.
    pub const fn word(self) -> &'static str {
        match self {
            SourceKind::PageAllocator => "page allocator",
            SourceKind::Cma => "CMA area",
            SourceKind::Carveout => "carveout",
        }
    }
}

/// A source of memory, or the part of one a buffer may use: its kind, its region (the
/// index into the [`MemoryMap`]'s `banks`, `cma` or `carveouts`, by kind) and its
/// addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// What kind of memory.
    pub kind: SourceKind,
    /// Index into `banks` (page allocator), `cma` or `carveouts` of the memory map.
    pub region: usize,
    /// Its addresses.
    pub range: PhysRange,
}

/// A few sources, kept inline (no allocation for the usual memory maps).
pub type Sources = SmallVec<[Source; 4]>;

impl Source {
    /// The name of its bank, CMA area or carveout.
    pub fn name<'m>(&self, memory: &'m MemoryMap) -> &'m str {
        let name = match self.kind {
            SourceKind::PageAllocator => memory.banks.get(self.region).map(|r| r.name.as_str()),
            SourceKind::Cma => memory.cma.get(self.region).map(|r| r.name.as_str()),
            SourceKind::Carveout => memory.carveouts.get(self.region).map(|c| c.name.as_str()),
        };
        name.unwrap_or_default()
    }
}

/// The parts of the sources of an empty machine a buffer may use that lie inside
/// `window`: the page allocator's pieces, the CMA areas and the carveouts `named` accepts;
/// for a `protected` buffer, the protected carveouts only. Each part is still one source;
/// sorted by address.
pub fn usable(memory: &MemoryMap, protected: bool, named: &dyn Fn(&str) -> bool, window: &Window) -> Sources {
    let mut out = Sources::new();
    let mut add = |kind: SourceKind, region: usize, range: PhysRange| {
        for w in window.ranges() {
            if let Some(r) = w.intersect(range) {
                out.push(Source { kind, region, range: r });
            }
        }
    };
    for (i, c) in memory.carveouts.iter().enumerate() {
        let usable = if protected { c.protected } else { !c.protected && named(&c.name) };
        if usable {
            add(SourceKind::Carveout, i, c.range());
        }
    }
    if !protected {
        for (i, c) in memory.cma.iter().enumerate() {
            add(SourceKind::Cma, i, c.range());
        }
        for (i, bank) in memory.banks.iter().enumerate() {
            let b = bank.range();
            // The page allocator has the gaps between the CMA areas and carveouts inside
            // the bank: take the next one after `at` each time (there are a few).
            let taken = || memory.cma.iter().map(|c| c.range()).chain(memory.carveouts.iter().map(|c| c.range()));
            let mut at = b.start();
            loop {
                let next = taken().filter_map(|r| r.intersect(b)).filter(|r| r.end() > at).min_by_key(|r| r.start());
                let gap_end = next.map_or(b.end(), |r| r.start());
                if let Ok(range) = PhysRange::new(at, gap_end) {
                    add(SourceKind::PageAllocator, i, range);
                }
                match next {
                    Some(r) => at = at.max(r.end()),
                    None => break,
                }
            }
        }
    }
    if !out.is_sorted_by_key(|p| p.range) {
        out.sort_unstable_by_key(|p| p.range);
    }
    out
}

/// The segment rules a buffer's backing follows (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes to hold (a multiple of the granule).
    pub size: u64,
    /// At most this many segments; `None`: any number.
    pub max_segments: Option<u32>,
    /// No segment longer (stacked `max_segment_size`, page-rounded); with a count limit only.
    pub segment_len: Option<u64>,
    /// No segment crosses a multiple of this (`segment_boundary_mask + 1`); with a count
    /// limit only.
    pub boundary: Option<u64>,
    /// The first segment starts on this (a power of two, at least the granule).
    pub alignment: u64,
    /// Every segment starts and ends on this (a power of two).
    pub granule: u64,
    /// The page allocator's largest block (a power of two).
    pub max_block: u64,
}

impl Limits {
    /// The longest segment a source of `kind` can give (a multiple of the granule), or
    /// `u64::MAX` for no limit; below the granule nothing fits.
    fn longest(&self, kind: SourceKind) -> u64 {
        let mut l = u64::MAX;
        if let Some(n) = self.max_segments {
            let mut len = self.segment_len.unwrap_or(u64::MAX);
            if n > 1 && len != u64::MAX && len >= self.alignment {
                // Segments that start on the alignment tile a CMA area or carveout without
                // gaps only when they are whole multiples of it.
                len -= len % self.alignment;
            }
            l = len.min(self.boundary.unwrap_or(u64::MAX));
        }
        if kind.is_buddy() {
            l = l.min(self.max_block);
        }
        if l == u64::MAX { l } else { l - l % self.granule }
    }
}

/// What a segment taken from a [`Group`] instance covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `[addr, addr + value)`.
    Whole,
    /// The first segment of a `block`-sized page-allocator block at `addr`:
    /// `[addr, addr + value)`, or its first half when the block's second segment is taken
    /// too (the group whose `id` is `pair`).
    BlockFirst { block: u64, pair: usize },
    /// The second segment of such a block: taken only with the first, it turns the two
    /// into the block's halves.
    BlockSecond,
}

/// Equal gains of one source, at addresses `first + (i / inner) * outer + (i % inner) *
/// step` for `i` in `0..count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    /// Its place in the order the groups were made (sorting moves them).
    id: usize,
    value: u64,
    count: u64,
    /// How many instances start on the alignment.
    aligned: u64,
    role: Role,
    first: u64,
    outer: u64,
    inner: u64,
    step: u64,
}

impl Group {
    fn single(value: u64, at: u64, alignment: u64, role: Role) -> Group {
        Group {
            id: 0,
            value,
            count: 1,
            aligned: u64::from(at.is_multiple_of(alignment)),
            role,
            first: at,
            outer: 0,
            inner: 1,
            step: 0,
        }
    }

    fn addr(&self, i: u64) -> u64 {
        self.first + (i / self.inner) * self.outer + (i % self.inner) * self.step
    }
}

/// Gains of a page-allocator source `[s, e)` (granule-trimmed) whose segments are at most
/// `longest`.
fn buddy_groups<S: Sink>(s: u64, e: u64, longest: u64, lim: &Limits, out: &mut S) {
    let top = longest.next_power_of_two();
    let a = lim.alignment;
    let block = |at: u64, size: u64, out: &mut S| {
        if size < top {
            out.push(Group::single(size, at, a, Role::Whole));
        } else {
            push_block_pair(out, longest, top, at, 1, a);
        }
    };
    let mut x = s;
    // Up to the first `top`-aligned address: blocks as large as x's alignment allows.
    while x < e && !x.is_multiple_of(top) {
        let mut p = (1u64 << x.trailing_zeros()).min(top);
        while x + p > e {
            p /= 2;
        }
        block(x, p, out);
        x += p;
    }
    let full = (e - x) / top;
    if full > 0 {
        push_block_pair(out, longest, top, x, full, a);
        x += full * top;
    }
    while x < e {
        let p = 1u64 << (63 - (e - x).leading_zeros());
        block(x, p, out);
        x += p;
    }
}

/// `count` blocks of `top` bytes from `at`: their first segments (`longest`, or the whole
/// block) and, when a block is longer than a segment, their second segments.
fn push_block_pair(out: &mut impl Sink, longest: u64, top: u64, at: u64, count: u64, a: u64) {
    let aligned = if top >= a {
        count
    } else {
        // Every (a / top)-th block starts on the alignment.
        let step = a / top;
        let skip = (a - at % a) % a / top;
        if skip < count { (count - 1 - skip) / step + 1 } else { 0 }
    };
    let first = out.len();
    let whole = longest >= top;
    out.push(Group {
        id: 0,
        value: longest.min(top),
        count,
        aligned,
        role: if whole { Role::Whole } else { Role::BlockFirst { block: top, pair: first + 1 } },
        first: at,
        outer: top,
        inner: 1,
        step: 0,
    });
    if !whole {
        out.push(Group {
            id: 0,
            value: top - longest,
            count,
            aligned: 0,
            role: Role::BlockSecond,
            first: at,
            outer: top,
            inner: 1,
            step: 0,
        });
    }
}

/// Gains of a CMA area or carveout `[s, e)` (granule-trimmed).
fn pool_groups(s: u64, e: u64, longest: u64, lim: &Limits, out: &mut impl Sink) {
    let boundary = if lim.max_segments.is_some() { lim.boundary } else { None };
    let Some(b) = boundary else {
        piece(s, e, longest, lim.alignment, 1, 0, out);
        return;
    };
    let first_end = e.min((s / b).saturating_add(1).saturating_mul(b));
    piece(s, first_end, longest, lim.alignment, 1, 0, out);
    if first_end >= e {
        return;
    }
    let windows = (e - first_end) / b;
    if windows > 0 {
        let a = lim.alignment;
        if a <= b {
            piece(first_end, first_end + b, longest, a, windows, b, out);
        } else {
            // Only windows starting on the alignment hold a segment start.
            let step = a / b;
            let skip = (a - first_end % a) % a / b;
            if skip < windows {
                let at = first_end + skip * b;
                piece(at, at + b, longest, a, (windows - 1 - skip) / step + 1, a, out);
            }
        }
    }
    let last = first_end + windows * b;
    if last < e {
        piece(last, e, longest, lim.alignment, 1, 0, out);
    }
}

/// The runs of one window piece `[w, end)` (repeated `copies` times, `stride` apart):
/// segments of `longest` bytes at aligned starts, then a shorter tail.
fn piece(w: u64, end: u64, longest: u64, a: u64, copies: u64, stride: u64, out: &mut impl Sink) {
    let Some(start) = w.checked_next_multiple_of(a).filter(|s| *s < end) else { return };
    let len = longest.min(end - start);
    let step = len.next_multiple_of(a);
    let runs = (end - start - len) / step + 1;
    out.push(Group {
        id: 0,
        value: len,
        count: runs * copies,
        aligned: runs * copies,
        role: Role::Whole,
        first: start,
        outer: stride,
        inner: runs,
        step,
    });
    let tail = start + runs * step;
    if tail < end {
        out.push(Group {
            id: 0,
            value: end - tail,
            count: copies,
            aligned: copies,
            role: Role::Whole,
            first: tail,
            outer: stride,
            inner: 1,
            step: 0,
        });
    }
}

/// The gains of every usable source.
type Groups = SmallVec<[Group; 12]>;

/// Where gains go as they are found: kept ([`Groups`]), or only totalled ([`Totals`], for
/// one segment or any number, where no selection is needed).
trait Sink {
    /// How many groups so far (a group's id is its position).
    fn len(&self) -> usize;
    fn push(&mut self, g: Group);
}

impl Sink for Groups {
    fn len(&self) -> usize {
        SmallVec::len(self)
    }
    fn push(&mut self, g: Group) {
        SmallVec::push(self, g);
    }
}

/// The totals of every gain: all of them, and the longest that starts on the alignment.
#[derive(Default)]
struct Totals {
    groups: usize,
    total: u128,
    longest_aligned: Option<u64>,
}

impl Sink for Totals {
    fn len(&self) -> usize {
        self.groups
    }
    fn push(&mut self, g: Group) {
        self.groups += 1;
        self.total += u128::from(g.value) * u128::from(g.count);
        if g.aligned > 0 {
            self.longest_aligned = Some(self.longest_aligned.unwrap_or(0).max(g.value));
        }
    }
}

/// The gains of every usable source, sorted largest first.
fn groups(usable: &[Source], lim: &Limits, out: &mut Groups) {
    walk(usable, lim, out);
    for (i, g) in out.iter_mut().enumerate() {
        g.id = i;
    }
    out.sort_by_key(|g| Reverse(g.value));
}

/// Finds the gains of every usable source, in address order.
fn walk(usable: &[Source], lim: &Limits, out: &mut impl Sink) {
    for src in usable {
        let g = lim.granule;
        let s = src.range.start().get().next_multiple_of(g);
        let e = src.range.end().get() - src.range.end().get() % g;
        let longest = lim.longest(src.kind);
        if e <= s || longest < g {
            continue;
        }
        if src.kind.is_buddy() {
            buddy_groups(s, e, longest, lim, out);
        } else {
            pool_groups(s, e, longest, lim, out);
        }
    }
}

/// How much of a buffer the usable memory can hold under the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The most bytes `max_segments` segments hold, one of them starting on the alignment
    /// (0 when no segment can start there).
    pub holds: u128,
    /// The longest single segment that starts on the alignment.
    pub longest: u64,
}

impl Capacity {
    /// Whether a buffer of `size` bytes fits.
    pub fn fits(&self, size: u64) -> bool {
        self.holds >= u128::from(size)
    }
}

/// Which instances of each group a best backing takes: `(group, count)` largest first,
/// and the instance that starts on the alignment.
struct Selection {
    take: SmallVec<[(usize, u64); 8]>,
    first: (usize, u64),
}

fn first_aligned(g: &Group, alignment: u64) -> Option<u64> {
    if g.aligned == 0 {
        return None;
    }
    // Aligned instances recur at least every `alignment / stride` instances.
    let period = if g.inner > 1 { g.inner } else { 1 };
    let scan = (alignment / g.outer.max(1)).max(1).saturating_mul(period).saturating_add(1);
    (0..g.count.min(scan)).find(|&i| g.addr(i).is_multiple_of(alignment))
}

/// The best use of the limits' segments: the largest gains, one of them aligned. With
/// `enough`, stop as soon as the buffer's size is covered (the witness needs no more).
fn select(groups: &[Group], lim: &Limits, enough: bool) -> Option<Selection> {
    let aligned = groups.iter().position(|g| g.aligned > 0)?;
    let mut left = lim.max_segments.map_or(u64::MAX, u64::from);
    let mut covered = 0u128;
    let mut take: SmallVec<[(usize, u64); 8]> = SmallVec::new();
    let mut first = None;
    for (i, g) in groups.iter().enumerate() {
        if left == 0 || (enough && covered >= u128::from(lim.size)) {
            break;
        }
        let mut n = g.count.min(left);
        if enough {
            let need = (u128::from(lim.size) - covered).div_ceil(u128::from(g.value));
            n = n.min(u64::try_from(need).unwrap_or(u64::MAX));
        }
        if n == 0 {
            continue;
        }
        if first.is_none() && g.aligned > 0 {
            first = Some((i, first_aligned(g, lim.alignment)?));
        }
        take.push((i, n));
        covered += u128::from(g.value) * u128::from(n);
        left -= n;
    }
    let first = match first {
        Some(f) => f,
        None => {
            // No aligned gain made the cut: add the largest aligned one, giving up the
            // smallest taken when every segment is used (every aligned gain is no larger
            // than what was taken).
            if left == 0
                && let Some(last) = take.last_mut()
            {
                last.1 -= 1;
                if last.1 == 0 {
                    take.pop();
                }
            }
            take.push((aligned, 1));
            (aligned, first_aligned(&groups[aligned], lim.alignment)?)
        }
    };
    Some(Selection { take, first })
}

/// How much of a buffer the `usable` sources can hold under `lim`.
pub fn capacity(usable: &[Source], lim: &Limits) -> Capacity {
    if matches!(lim.max_segments, None | Some(1)) {
        // One segment holds the longest aligned run; any number hold everything (one of
        // them aligned): no selection needed.
        let mut t = Totals::default();
        walk(usable, lim, &mut t);
        let longest = t.longest_aligned.unwrap_or(0);
        let holds = match (lim.max_segments, t.longest_aligned) {
            (_, None) => 0,
            (Some(_), Some(l)) => u128::from(l),
            (None, Some(_)) => t.total,
        };
        return Capacity { holds, longest };
    }
    let mut groups = Groups::new();
    self::groups(usable, lim, &mut groups);
    let longest = groups.iter().filter(|g| g.aligned > 0).map(|g| g.value).max().unwrap_or(0);
    let holds = select(&groups, lim, false)
        .map_or(0, |s| s.take.iter().map(|&(i, n)| u128::from(groups[i].value) * u128::from(n)).sum());
    Capacity { holds, longest }
}

/// A backing for `lim.size` bytes built from `usable` by the rules above, the aligned
/// segment first; `None` when none exists.
pub fn build(usable: &[Source], lim: &Limits) -> Option<Vec<PhysRange>> {
    let mut groups = Groups::new();
    self::groups(usable, lim, &mut groups);
    let sel = select(&groups, lim, true)?;
    let taken = |id: usize| sel.take.iter().filter(|(i, _)| groups[*i].id == id).map(|(_, n)| *n).sum::<u64>();
    let mut segments: Vec<(u64, u64)> = Vec::new();
    let (fg, fi) = sel.first;
    let emit = |g: &Group, i: u64, out: &mut Vec<(u64, u64)>| {
        let at = g.addr(i);
        match g.role {
            Role::Whole => out.push((at, g.value)),
            Role::BlockFirst { block, pair } => {
                if i < taken(pair) {
                    out.push((at, block / 2));
                    out.push((at + block / 2, block / 2));
                } else {
                    out.push((at, g.value));
                }
            }
            // Emitted as the second half by its block's first segment.
            Role::BlockSecond => {}
        }
    };
    emit(&groups[fg], fi, &mut segments);
    for &(gi, n) in &sel.take {
        let g = &groups[gi];
        let mut done = u64::from(gi == fg);
        let mut i = 0;
        while done < n && i < g.count {
            if !(gi == fg && i == fi) {
                emit(g, i, &mut segments);
                done += 1;
            }
            i += 1;
        }
    }
    let mut left = lim.size;
    let mut out = Vec::new();
    for (at, len) in segments {
        if left == 0 {
            break;
        }
        let len = len.min(left);
        out.push(PhysRange::from_start_size(PhysAddr::new(at), Size::new(len)).ok()?);
        left -= len;
    }
    (left == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;

    fn src(kind: SourceKind, start: u64, end: u64) -> Source {
        Source { kind, region: 0, range: PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap() }
    }

    fn lim(size: u64) -> Limits {
        Limits {
            size,
            max_segments: None,
            segment_len: None,
            boundary: None,
            alignment: 4 * K,
            granule: 4 * K,
            max_block: 4 * M,
        }
    }

    /// A 4 MiB page-allocator piece that starts 2 MiB into a 4 MiB block holds no 4 MiB
    /// block: its largest contiguous run is 2 MiB (two 2 MiB blocks are not one block).
    #[test]
    fn a_contiguous_run_is_one_aligned_block() {
        let piece = [src(SourceKind::PageAllocator, 2 * M, 6 * M)];
        let one = Limits { max_segments: Some(1), ..lim(4 * M) };
        assert_eq!(capacity(&piece, &one), Capacity { holds: 2 * M as u128, longest: 2 * M });
        assert!(build(&piece, &one).is_none());
        // 3 MiB at 0x40_0000 would need the 4 MiB block 0x40_0000..0x80_0000: no.
        assert!(!capacity(&piece, &Limits { size: 3 * M, ..one }).fits(3 * M));
        // Two segments hold it: the 2 MiB blocks at 2 MiB and 4 MiB.
        let two = Limits { max_segments: Some(2), ..one };
        assert!(capacity(&piece, &two).fits(4 * M));
        let b = build(&piece, &two).unwrap();
        assert_eq!(
            b.iter().map(|r| (r.start().get(), r.len().bytes())).collect::<Vec<_>>(),
            [(2 * M, 2 * M), (4 * M, 2 * M)]
        );
        // A CMA area of the same addresses holds 4 MiB in one run.
        let cma = [src(SourceKind::Cma, 2 * M, 6 * M)];
        assert!(capacity(&cma, &one).fits(4 * M));
    }

    /// Two adjacent sources never make one run.
    #[test]
    fn a_run_never_spans_two_sources() {
        let two = [src(SourceKind::Cma, 0, 8 * M), src(SourceKind::Carveout, 8 * M, 16 * M)];
        let one = Limits { max_segments: Some(1), ..lim(12 * M) };
        assert_eq!(capacity(&two, &one).longest, 8 * M);
        assert!(!capacity(&two, &one).fits(12 * M));
        assert!(capacity(&two, &Limits { max_segments: Some(2), ..one }).fits(12 * M));
    }

    /// With 3 segments the three largest runs must add up: 8 + 4 + 2 MiB of CMA areas hold
    /// 14 MiB, not 15 MiB, although 15 MiB are free.
    #[test]
    fn n_segments_hold_the_n_largest_runs() {
        let areas = [
            src(SourceKind::Cma, 0, 8 * M),
            src(SourceKind::Cma, 16 * M, 20 * M),
            src(SourceKind::Cma, 32 * M, 34 * M),
            src(SourceKind::Cma, 48 * M, 49 * M),
        ];
        let three = Limits { max_segments: Some(3), ..lim(15 * M) };
        assert_eq!(capacity(&areas, &three).holds, 14 * M as u128);
        assert!(build(&areas, &three).is_none());
        let b = build(&areas, &Limits { size: 14 * M, ..three }).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.iter().map(|r| r.len().bytes()).sum::<u64>(), 14 * M);
    }

    /// A 64 KiB boundary splits a CMA run at every window; a 48 KiB segment limit leaves a
    /// 16 KiB tail in each.
    #[test]
    fn boundaries_and_segment_length_cut_runs() {
        let area = [src(SourceKind::Cma, 0, 256 * K)];
        let l = Limits { max_segments: Some(8), segment_len: Some(48 * K), boundary: Some(64 * K), ..lim(256 * K) };
        // Gains: 4 windows x (48 KiB + 16 KiB): 8 segments hold 256 KiB, 4 hold 192 KiB.
        assert_eq!(capacity(&area, &l).holds, 256 * K as u128);
        assert_eq!(capacity(&area, &Limits { max_segments: Some(4), ..l }).holds, 192 * K as u128);
        let b = build(&area, &l).unwrap();
        assert!(b.iter().all(|r| r.start().get() / (64 * K) == (r.end().get() - 1) / (64 * K)), "{b:?}");
    }

    /// The first segment must start on the alignment; in a page-allocator piece only
    /// blocks at aligned addresses qualify.
    #[test]
    fn the_first_segment_starts_on_the_alignment() {
        // 0x1000..0x10000: blocks 4K@4K, 8K@8K, 16K@16K, 32K@32K. With 64 KiB alignment none
        // starts on it.
        let piece = [src(SourceKind::PageAllocator, 4 * K, 64 * K)];
        let l = Limits { alignment: 64 * K, ..lim(4 * K) };
        assert_eq!(capacity(&piece, &l).holds, 0);
        // 32 KiB alignment: the 32 KiB block qualifies; with 2 segments it and the 16 KiB one.
        let l = Limits { alignment: 32 * K, max_segments: Some(2), ..lim(48 * K) };
        assert_eq!(capacity(&piece, &l).holds, 48 * K as u128);
        assert_eq!(build(&piece, &l).unwrap()[0].start().get(), 32 * K);
        // 16 KiB alignment, 1 segment: the longest aligned run is the 32 KiB block.
        let l = Limits { alignment: 16 * K, max_segments: Some(1), ..lim(32 * K) };
        assert_eq!(capacity(&piece, &l).longest, 32 * K);
    }

    /// The alignment swaps the smallest chosen segment for an aligned one; a block whose
    /// second segment is not chosen keeps its single run (a regression: the halves were
    /// once taken from the wrong block after sorting).
    #[test]
    fn swapping_in_the_aligned_segment_keeps_the_count() {
        let pieces =
            [src(SourceKind::PageAllocator, 0x3000, 0xb000), src(SourceKind::PageAllocator, 0x1_3000, 0x1_b000)];
        let l = Limits {
            max_segments: Some(2),
            segment_len: Some(12 * K),
            boundary: Some(32 * K),
            alignment: 32 * K,
            max_block: 16 * K,
            ..lim(20 * K)
        };
        // Gains: 12 KiB at 0x4000 and 0x1_4000 (not aligned), 8 KiB at 0x8000 and 0x1_8000
        // (aligned), then 4 KiB pieces. Best: 12 + 8.
        assert_eq!(capacity(&pieces, &l).holds, 20 * K as u128);
        let b = build(&pieces, &l).unwrap();
        let got: Vec<(u64, u64)> = b.iter().map(|r| (r.start().get(), r.len().bytes())).collect();
        assert_eq!(got, [(0x8000, 8 * K), (0x4000, 12 * K)]);
    }

    /// A segment length that is not a power of two: a 4 MiB block gives 3 MiB with one
    /// segment and all 4 MiB with two (its 2 MiB halves).
    #[test]
    fn page_allocator_blocks_split_into_halves() {
        let piece = [src(SourceKind::PageAllocator, 0, 8 * M)];
        let l = Limits { max_segments: Some(2), segment_len: Some(3 * M), ..lim(6 * M) };
        // Gains: 3, 3 (each block's start), then 1, 1 (each block's halves instead).
        assert_eq!(capacity(&piece, &l).holds, 6 * M as u128);
        assert_eq!(capacity(&piece, &Limits { max_segments: Some(3), ..l }).holds, 7 * M as u128);
        assert_eq!(capacity(&piece, &Limits { max_segments: Some(4), ..l }).holds, 8 * M as u128);
        let b = build(&piece, &Limits { size: 7 * M, max_segments: Some(3), ..l }).unwrap();
        let got: Vec<(u64, u64)> = b.iter().map(|r| (r.start().get(), r.len().bytes())).collect();
        assert_eq!(got, [(0, 2 * M), (2 * M, 2 * M), (4 * M, 3 * M)]);
    }
}
