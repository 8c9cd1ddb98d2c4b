//! IOMMU page-size arithmetic shared by the solver's estimates and the simulator's
//! page tables.

use serde::{Deserialize, Serialize};

use crate::units::{PageSize, PageSizes};

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
    fn unaligned_range_is_refused() {
        assert_eq!(map_entries(vtd(), 0x800, 0x800, 4096), None);
    }
}
