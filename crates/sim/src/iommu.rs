//! Per-device IOMMU domains: an IOVA allocator, page tables built with the kernel's
//! `iommu_pgsize` choice ([`dmaplace_core::iommu`]), and an LRU IOTLB that replays access
//! patterns.
//!
//! The IOVA space and the alignment of each mapping are the core's
//! ([`dmaplace_core::iommu::iova_window`], [`dmaplace_core::iommu::iova_align`]): the
//! solver refuses a buffer that does not fit an empty domain, and the allocator here maps
//! every buffer that does.

use std::collections::BTreeMap;
use std::fmt;

use dmaplace_core::iommu::{self, PteCounts};
use dmaplace_core::units::{DmaAddr, DmaMask, PageSize, PageSizes, Size};

use crate::ranges::FreeRanges;

/// A first-fit allocator of aligned IOVA ranges in `start..end`.
#[derive(Clone, Debug)]
pub(crate) struct IovaAllocator {
    start: u64,
    end: u64,
    free: FreeRanges,
}

impl IovaAllocator {
    pub(crate) fn new(start: u64, end: u64) -> IovaAllocator {
        IovaAllocator { start, end, free: FreeRanges::new(start, end) }
    }

    /// The lowest `align`-aligned free range of `len` bytes.
    pub(crate) fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        self.free.claim(len, align, self.start, self.end)
    }

    /// Returns `start..start + len`.
    pub(crate) fn release(&mut self, start: u64, len: u64) {
        debug_assert!(start >= self.start && start + len <= self.end, "IOVA {start:#x}+{len:#x} outside the space");
        self.free.release(start, len);
    }

    /// Free ranges.
    pub(crate) fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter()
    }

    /// The whole space.
    pub(crate) fn space(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

/// One device's IOMMU domain.
#[derive(Clone, Debug)]
pub(crate) struct Domain {
    /// The IOMMU's name.
    pub(crate) iommu: std::sync::Arc<str>,
    pub(crate) iova: IovaAllocator,
    /// Entries currently in the page tables.
    pub(crate) ptes: PteCounts,
    /// Live mappings: IOVA start -> length.
    pub(crate) live: BTreeMap<u64, u64>,
}

/// A run of page-table entries of one size: `count` pages of `page` from `iova`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteRun {
    /// First IOVA.
    pub iova: DmaAddr,
    /// Physical address it maps to.
    pub phys: u64,
    /// The page size of these entries.
    pub page: PageSize,
    /// How many.
    pub count: u64,
}

/// The entries `iommu_map()` writes for `iova -> phys`, `len` bytes, as runs of one page
/// size; mirrors [`dmaplace_core::iommu::map_entries`] (which the machine also calls for
/// the counts, and checks against).
pub(crate) fn page_runs(pgsizes: PageSizes, iova: u64, phys: u64, len: u64) -> Option<Vec<PteRun>> {
    let mut out = Vec::new();
    let mut done = 0u64;
    while done < len {
        let (v, p) = (iova.checked_add(done)?, phys.checked_add(done)?);
        let page = iommu::pick_pgsize(pgsizes, v, p, len - done)?;
        let run = (len - done) / page.get();
        let n = match pgsizes.iter_desc().filter(|q| *q > page).last() {
            Some(q) => run.min(((q.get() - ((v | p) & (q.get() - 1))) / page.get()).max(1)),
            None => run,
        };
        out.push(PteRun { iova: DmaAddr::new(v), phys: p, page, count: n });
        done += n * page.get();
    }
    Some(out)
}

/// An LRU translation cache of `capacity` entries, keyed by (page size, page base).
#[derive(Clone, Debug)]
pub struct Iotlb {
    capacity: usize,
    /// Entries, least recently used first.
    entries: Vec<(u64, u64)>,
    /// Lookups so far.
    pub lookups: u64,
    /// Misses so far.
    pub misses: u64,
}

impl Iotlb {
    /// An empty (cold) IOTLB. A capacity of 0 misses on every lookup.
    pub fn new(capacity: usize) -> Iotlb {
        Iotlb { capacity, entries: Vec::with_capacity(capacity), lookups: 0, misses: 0 }
    }

    /// Looks up the page of `page` bytes at `base`; returns whether it hit.
    pub fn lookup(&mut self, page: PageSize, base: u64) -> bool {
        self.lookups += 1;
        let key = (page.get(), base);
        if let Some(i) = self.entries.iter().position(|e| *e == key) {
            let e = self.entries.remove(i);
            self.entries.push(e);
            return true;
        }
        self.misses += 1;
        if self.capacity > 0 {
            if self.entries.len() == self.capacity {
                self.entries.remove(0);
            }
            self.entries.push(key);
        }
        false
    }
}

/// How a device walks a mapped buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessPattern {
    /// The whole buffer from start to end, in `burst`-byte accesses.
    Linear {
        /// Bytes per access (a cache line, a bus burst).
        burst: u64,
    },
    /// A 2D surface of `rows` rows of `pitch` bytes, walked in tiles of `tile_width`
    /// bytes by `tile_height` rows: tiles left to right, tile rows top to bottom, each tile
    /// row by row, each row in `burst`-byte accesses. Edge tiles are clipped.
    Tiled {
        /// Bytes per row.
        pitch: u64,
        /// Rows.
        rows: u64,
        /// Tile width in bytes.
        tile_width: u64,
        /// Tile height in rows.
        tile_height: u64,
        /// Bytes per access.
        burst: u64,
    },
}

impl fmt::Display for AccessPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessPattern::Linear { burst } => write!(f, "linear scan ({burst} B bursts)"),
            AccessPattern::Tiled { pitch, rows, tile_width, tile_height, burst } => {
                write!(
                    f,
                    "tiled walk ({tile_width} B x {tile_height} rows tiles over {rows} rows of {pitch} B, {burst} B bursts)"
                )
            }
        }
    }
}

impl AccessPattern {
    /// The byte spans touched, in order, as `(offset, len)`; checked against `len`.
    pub(crate) fn spans(&self, len: u64) -> Result<Vec<(u64, u64)>, String> {
        match *self {
            AccessPattern::Linear { burst } => {
                if burst == 0 {
                    return Err("burst must be at least one byte".into());
                }
                Ok(vec![(0, len)])
            }
            AccessPattern::Tiled { pitch, rows, tile_width, tile_height, burst } => {
                if burst == 0 || tile_width == 0 || tile_height == 0 || pitch == 0 {
                    return Err("pitch, tile sizes and burst must be non-zero".into());
                }
                let need = pitch.checked_mul(rows).ok_or("pitch x rows overflows")?;
                if need > len {
                    return Err(format!("{rows} rows of {pitch} B need {need} B"));
                }
                let mut out = Vec::new();
                for ty in (0..rows).step_by(usize::try_from(tile_height).unwrap_or(usize::MAX)) {
                    for tx in (0..pitch).step_by(usize::try_from(tile_width).unwrap_or(usize::MAX)) {
                        let w = tile_width.min(pitch - tx);
                        for row in ty..(ty + tile_height).min(rows) {
                            out.push((row * pitch + tx, w));
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Bytes per access.
    pub(crate) fn burst(&self) -> u64 {
        match *self {
            AccessPattern::Linear { burst } | AccessPattern::Tiled { burst, .. } => burst,
        }
    }
}

/// What replaying an access pattern through an IOTLB cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IotlbStats {
    /// Accesses (bursts) made.
    pub accesses: u64,
    /// Translations looked up: one per page touched by a run of consecutive accesses.
    pub lookups: u64,
    /// Lookups that missed (page-table walks).
    pub misses: u64,
}

/// Replays `spans` (buffer offsets) over `runs` (sorted by IOVA, starting at `iova`).
pub(crate) fn replay(runs: &[PteRun], iova: u64, spans: &[(u64, u64)], burst: u64, tlb: &mut Iotlb) -> IotlbStats {
    let (l0, m0) = (tlb.lookups, tlb.misses);
    let mut accesses = 0u64;
    for &(off, len) in spans {
        accesses += len.div_ceil(burst);
        let (mut a, end) = (iova + off, iova + off + len);
        while a < end {
            // The run holding `a`: the last one starting at or before it.
            let i = runs.partition_point(|r| r.iova.get() <= a) - 1;
            let p = runs[i].page.get();
            let base = a & !(p - 1);
            tlb.lookup(runs[i].page, base);
            a = (base + p).min(end);
        }
    }
    IotlbStats { accesses, lookups: tlb.lookups - l0, misses: tlb.misses - m0 }
}

/// The IOVA alignment for a mapping of `len` bytes: the largest page size that fits
/// ([`dmaplace_core::iommu::iova_align`], the rule the solver checks against).
pub(crate) fn iova_align(pgsizes: PageSizes, len: u64) -> u64 {
    iommu::iova_align(pgsizes, len)
}

/// A device's IOVA allocator: [`dmaplace_core::iommu::iova_window`], the first granule
/// kept back, so that an empty domain maps exactly what the solver says fits.
pub(crate) fn domain_space(pgsizes: PageSizes, space: DmaMask) -> IovaAllocator {
    let (start, end) = iommu::iova_window(pgsizes, space);
    IovaAllocator::new(start, end.max(start))
}

/// A [`Size`] for an IOVA space end (saturating for 64-bit spaces).
pub(crate) fn space_size(start: u64, end: u64) -> Size {
    Size::new(end.saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_first_fit_aligned_and_merging() {
        let mut a = IovaAllocator::new(0x1000, 0x100_0000);
        assert_eq!(a.alloc(0x3000, 0x1000), Some(0x1000));
        assert_eq!(a.alloc(0x20_0000, 0x20_0000), Some(0x20_0000));
        assert_eq!(a.alloc(0x1000, 0x1000), Some(0x4000));
        a.release(0x1000, 0x3000);
        a.release(0x4000, 0x1000);
        a.release(0x20_0000, 0x20_0000);
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), [(0x1000, 0x100_0000)]);
        assert_eq!(a.alloc(0x100_0000, 0x1000), None);
    }

    /// The domain maps into an empty space exactly what the core says fits: rk3399's RGA
    /// (25-bit, 4 KiB pages) takes 32 MiB - 4 KiB at IOVA 0x1000, not 32 MiB.
    #[test]
    fn empty_domain_agrees_with_the_core() {
        let bits = DmaMask::new(25).unwrap();
        let pgs = PageSizes::SZ_4K_ONLY;
        for len in [4096u64, (32 << 20) - 4096, 32 << 20] {
            let mut d = domain_space(pgs, bits);
            let got = d.alloc(len, iova_align(pgs, len));
            assert_eq!(got, iommu::iova_first_fit(pgs, bits, len), "{len:#x}");
        }
        assert_eq!(domain_space(pgs, bits).alloc((32 << 20) - 4096, 4096), Some(0x1000));
        assert_eq!(domain_space(pgs, bits).alloc(32 << 20, 4096), None);
        // VT-d pages in a 28-bit space: 2 MiB alignment for 200 MiB.
        let vtd = PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_2M, PageSize::SZ_1G]);
        let bits = DmaMask::new(28).unwrap();
        for len in [200u64 << 20, 254 << 20, 255 << 20] {
            let got = domain_space(vtd, bits).alloc(len, iova_align(vtd, len));
            assert_eq!(got, iommu::iova_first_fit(vtd, bits, len), "{len:#x}");
        }
    }

    /// The case from the stress test: on rk3399 the solver refuses 32 MiB for the RGA (its
    /// 32 MiB table keeps IOVA page 0 back), and what it accepts, the machine maps.
    #[test]
    fn rk3399_rga_maps_every_size_the_solver_accepts() {
        use dmaplace_core::{BufferDesc, Request, SolveError, Usage, builtin, solve};

        use crate::config::SimConfig;
        use crate::machine::Machine;

        let p = builtin::load("rk3399").unwrap().unwrap();
        let rga = [Request { device: p.device("rga").unwrap(), hints: Usage::empty() }];
        let too_big = solve(&p, &BufferDesc::Size(Size::mib(32)), &rga);
        assert!(matches!(too_big, Err(SolveError::Conflict(_))), "{too_big:?}");
        let plan = solve(&p, &BufferDesc::Size(Size::new((32 << 20) - 4096)), &rga).unwrap();
        let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
        let b = m.allocate_plan(&plan, "rga").unwrap();
        let (map, sg) = m.map_for(&plan.devices[0], &b).unwrap();
        assert_eq!(sg.entries[0].dma_addr, DmaAddr::new(0x1000));
        m.unmap_for(&plan.devices[0], map).unwrap();
        m.release(b).unwrap();
    }

    #[test]
    fn lru_evicts_least_recent() {
        let mut t = Iotlb::new(2);
        let p = PageSize::SZ_4K;
        assert!(!t.lookup(p, 0));
        assert!(!t.lookup(p, 0x1000));
        assert!(t.lookup(p, 0));
        assert!(!t.lookup(p, 0x2000)); // evicts 0x1000, not 0
        assert!(t.lookup(p, 0));
        assert!(!t.lookup(p, 0x1000));
        assert_eq!((t.lookups, t.misses), (6, 4));
    }
}
