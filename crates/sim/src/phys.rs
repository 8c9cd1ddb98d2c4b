//! The pools physical memory is split into: buddy zones (DMA, DMA32, Normal), CMA regions and
//! carveouts.

use std::collections::BTreeMap;
use std::fmt;

use crate::buddy::{Area, Pfn};
use crate::ranges::FreeRanges;

/// A page-allocator zone, as Linux names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    /// Below the platform's `zone_dma_bits` (`ZONE_DMA`, as arm64 sizes it from the
    /// narrowest `dma-ranges`).
    Dma,
    /// Below 4 GiB (`ZONE_DMA32`).
    Dma32,
    /// From 4 GiB up (`ZONE_NORMAL`).
    Normal,
}

impl Zone {
    /// The kernel's name.
    pub const fn name(self) -> &'static str {
        match self {
            Zone::Dma => "DMA",
            Zone::Dma32 => "DMA32",
            Zone::Normal => "Normal",
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first frame of ZONE_NORMAL (4 GiB).
pub(crate) const NORMAL_START: Pfn = (1 << 32) / 4096;

/// One buddy allocator: a bank's part in one zone, CMA and carveouts taken out.
#[derive(Clone, Debug)]
pub(crate) struct ZoneArea {
    pub(crate) zone: Zone,
    pub(crate) bank: String,
    pub(crate) area: Area,
}

/// A CMA region: its free frames sit in a buddy allocator that lends them to movable
/// background blocks (borrowers); contiguous claims migrate borrowers out and pin ranges.
#[derive(Clone, Debug)]
pub(crate) struct CmaRegion {
    pub(crate) name: String,
    pub(crate) area: Area,
    /// Ranges claimed by buffers: start -> pages.
    pub(crate) pinned: BTreeMap<Pfn, u64>,
}

impl CmaRegion {
    pub(crate) fn start(&self) -> Pfn {
        self.area.start()
    }
    pub(crate) fn end(&self) -> Pfn {
        self.area.end()
    }
    /// The pinned range overlapping `lo..hi` that ends last, if any.
    pub(crate) fn pinned_overlap(&self, lo: Pfn, hi: Pfn) -> Option<(Pfn, u64)> {
        self.pinned.range(..hi).next_back().filter(|(s, n)| *s + *n > lo).map(|(s, n)| (*s, *n))
    }
}

/// A carveout: a static pool outside the page allocator, with a first-fit allocator.
#[derive(Clone, Debug)]
pub(crate) struct Carveout {
    pub(crate) name: String,
    pub(crate) start: Pfn,
    pub(crate) end: Pfn,
    pub(crate) protected: bool,
    /// Free frames.
    pub(crate) free: FreeRanges,
}

impl Carveout {
    pub(crate) fn new(name: String, start: Pfn, end: Pfn, protected: bool) -> Carveout {
        Carveout { name, start, end, protected, free: FreeRanges::new(start, end) }
    }

    /// The lowest `align`-aligned run of `pages` frames inside `lo..hi`.
    pub(crate) fn claim(&mut self, pages: u64, align: u64, lo: Pfn, hi: Pfn) -> Option<Pfn> {
        self.free.claim(pages, align, lo, hi)
    }

    /// Returns `pages` frames at `pfn`.
    pub(crate) fn release(&mut self, pfn: Pfn, pages: u64) {
        self.free.release(pfn, pages);
    }

    /// Free frames, as recorded.
    pub(crate) fn free_pages(&self) -> u64 {
        self.free.total()
    }

    /// The longest free run, in frames.
    pub(crate) fn largest_free(&self) -> u64 {
        self.free.largest()
    }
}
