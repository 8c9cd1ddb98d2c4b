//! IOMMU page-size arithmetic shared by the solver's estimates and the simulator's
//! page tables, and the IOVA space model the solver and the simulator share.
//!
//! # The IOVA space of a domain
//!
//! A device behind an IOMMU emits IOVAs below `2^min(iova_bits, dma_mask)`. The first
//! granule of that space is never handed out: like `iommu-dma`, which starts its IOVA
//! domain at `base_pfn = max(1, aperture_start >> shift)` so that IOVA 0 stays invalid,
//! the usable space is `[granule, 2^bits)` ([`iova_window`]). A mapping of `len` bytes
//! takes the lowest free range aligned to the largest page size not larger than `len`
//! ([`iova_align`]), so that big pages can be used. A buffer can be mapped into an empty
//! domain exactly when [`iova_fits`] says so; the solver refuses a buffer that does not
//! fit (an `iova_space` conflict) and the simulator's allocator uses the same window and
//! alignment, so the two agree by construction.

use serde::{Deserialize, Serialize};

use crate::units::{DmaMask, PageSize, PageSizes};

/// The usable IOVA range `[start, end)` of a domain whose IOMMU maps `pgsizes` and whose
/// device addresses `space` bits: everything below `2^space` except the first granule
/// (IOVA 0 is kept back, as `iommu-dma` does).
pub fn iova_window(pgsizes: PageSizes, space: DmaMask) -> (u64, u64) {
    let granule = pgsizes.smallest().unwrap_or(PageSize::SZ_4K).get();
    (granule, space.end())
}

/// The alignment of a mapping of `len` bytes: the largest page size in `pgsizes` not
/// larger than `len` (the smallest page size for shorter mappings), so the IOMMU can use
/// its biggest pages.
pub fn iova_align(pgsizes: PageSizes, len: u64) -> u64 {
    pgsizes.largest_at_most(len).or(pgsizes.smallest()).map_or(4096, PageSize::get)
}

/// Where a mapping of `len` bytes lands in an empty domain (`pgsizes`, `space` bits):
/// the first [`iova_align`]-aligned address of the [`iova_window`], or `None` when the
/// mapping does not fit.
pub fn iova_first_fit(pgsizes: PageSizes, space: DmaMask, len: u64) -> Option<u64> {
    let (start, end) = iova_window(pgsizes, space);
    let at = start.checked_next_multiple_of(iova_align(pgsizes, len))?;
    (at.checked_add(len)? <= end).then_some(at)
}

/// Whether a buffer of `len` bytes can be mapped into an empty domain.
pub fn iova_fits(pgsizes: PageSizes, space: DmaMask, len: u64) -> bool {
    iova_first_fit(pgsizes, space, len).is_some()
}

/// How many page-table entries of each size a mapping uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PteCounts {
    /// `(page size, entries)`, largest page size first; sizes with no entries are left out.
    pub by_size: Vec<(PageSize, u64)>,
}

impl PteCounts {
    /// Total entries.
    pub fn total(&self) -> u64 {
        self.by_size.iter().map(|(_, n)| n).sum()
    }

    /// Adds `n` entries of size `p`.
    pub fn add(&mut self, p: PageSize, n: u64) {
        match self.by_size.iter_mut().find(|(s, _)| *s == p) {
            Some((_, c)) => *c += n,
            None => {
                self.by_size.push((p, n));
                self.by_size.sort_by_key(|&(p, _)| std::cmp::Reverse(p));
            }
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &PteCounts) {
        for &(p, n) in &other.by_size {
            self.add(p, n);
        }
    }
}

/// The page size the kernel's `iommu_pgsize()` would pick for the next entry: the largest
/// size in `pgsizes` that fits in `len` and to which both `iova` and `phys` are aligned.
pub fn pick_pgsize(pgsizes: PageSizes, iova: u64, phys: u64, len: u64) -> Option<PageSize> {
    let addr_align = iova | phys;
    pgsizes.iter_desc().find(|p| p.get() <= len && addr_align & (p.get() - 1) == 0)
}

/// Maps `len` bytes at `iova` -> `phys` entry by entry, as `iommu_map()` does, and counts
/// the entries. `None` when the range is not aligned to the smallest page size.
pub fn map_entries(pgsizes: PageSizes, iova: u64, phys: u64, len: u64) -> Option<PteCounts> {
    let mut counts = PteCounts::default();
    let mut done = 0u64;
    while done < len {
        let p = pick_pgsize(pgsizes, iova.checked_add(done)?, phys.checked_add(done)?, len - done)?;
        // Take every consecutive entry of this size at once: the alignment only improves.
        let run = (len - done) / p.get();
        let next_bigger = pgsizes.iter_desc().filter(|q| q.get() > p.get()).last();
        let n = match next_bigger {
            // Stop where a bigger page becomes possible.
            Some(q) => {
                let a = (iova + done) | (phys + done);
                let to_boundary = (q.get() - (a & (q.get() - 1))) / p.get();
                run.min(to_boundary.max(1))
            }
            None => run,
        };
        counts.add(p, n);
        done += n * p.get();
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vtd() -> PageSizes {
        PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_2M, PageSize::SZ_1G])
    }

    #[test]
    fn eight_mib_2m_aligned_on_vtd_is_four_entries() {
        let c = map_entries(vtd(), 0x4000_0000, 0x1_0020_0000, 8 << 20).unwrap();
        assert_eq!(c.total(), 4);
        assert_eq!(c.by_size, [(PageSize::SZ_2M, 4)]);
    }

    #[test]
    fn eight_mib_on_4k_only_is_2048_entries() {
        let c = map_entries(PageSizes::SZ_4K_ONLY, 0x4000_0000, 0x1_0020_0000, 8 << 20).unwrap();
        assert_eq!(c.total(), 2048);
    }

    #[test]
    fn misaligned_start_uses_small_pages_until_aligned() {
        // Starts 4 KiB before a 2 MiB boundary: 1 x 4K, then 2M pages, then the 4K tail.
        let c = map_entries(vtd(), 0x1f_f000, 0x1f_f000, (4 << 20) + 4096).unwrap();
        assert_eq!(c.by_size, [(PageSize::SZ_2M, 2), (PageSize::SZ_4K, 1)]);
        // iova and phys disagree mod 2 MiB: only 4 KiB pages fit.
        let c = map_entries(vtd(), 0x20_0000, 0x20_1000, 4 << 20).unwrap();
        assert_eq!(c.by_size, [(PageSize::SZ_4K, 1024)]);
    }

    #[test]
    fn iova_space_keeps_the_first_granule_back() {
        // rk3399's RGA: a 25-bit (32 MiB) table of 4 KiB pages. IOVA 0..4 KiB is kept back,
        // so 32 MiB does not fit and 32 MiB - 4 KiB does, at IOVA 0x1000.
        let rga = PageSizes::SZ_4K_ONLY;
        let bits = DmaMask::new(25).unwrap();
        assert_eq!(iova_window(rga, bits), (0x1000, 0x200_0000));
        assert_eq!(iova_first_fit(rga, bits, 32 << 20), None);
        assert_eq!(iova_first_fit(rga, bits, (32 << 20) - 4096), Some(0x1000));
        // VT-d in a 28-bit space: 200 MiB is aligned to 2 MiB, so it starts at 2 MiB.
        let bits = DmaMask::new(28).unwrap();
        assert_eq!(iova_align(vtd(), 200 << 20), 2 << 20);
        assert_eq!(iova_first_fit(vtd(), bits, 200 << 20), Some(2 << 20));
        // 255 MiB would need 2 MiB + 255 MiB > 256 MiB.
        assert!(!iova_fits(vtd(), bits, 255 << 20));
        assert!(iova_fits(vtd(), bits, 254 << 20));
        // A 64-bit space saturates instead of overflowing.
        assert!(iova_fits(vtd(), DmaMask::BITS_64, 1 << 40));
    }

    #[test]
    fn unaligned_range_is_refused() {
        assert_eq!(map_entries(vtd(), 0x800, 0x800, 4096), None);
    }
}
