//! Verification: does a concrete backing satisfy every device's own constraints?
//!
//! This is independent of the solver: it checks each device's [`Effective`] constraints,
//! not the merged plan, so it catches a solver bug as well as an allocator bug. Every
//! backend's tests run it on what they allocated.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::effective::Effective;
use crate::model::CacheMode;
use crate::requirements::Requirements;
use crate::solver::Plan;
use crate::units::{BoundaryMask, PageSize, PhysRange, Size};

/// A concrete placement: physical segments in buffer order, and how the CPU maps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    /// Physical segments, in buffer order.
    pub segments: Vec<PhysRange>,
    /// The CPU mapping's cache mode.
    pub cache_mode: CacheMode,
    /// Whether the memory is protected.
    pub protected: bool,
}

impl Backing {
    /// Total bytes.
    pub fn len(&self) -> Size {
        Size::new(self.segments.iter().map(|s| s.len().bytes()).sum())
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Physically adjacent segments merged, as `sg_alloc_table_from_pages` merges pages.
    pub fn runs(&self) -> Vec<PhysRange> {
        let mut out: Vec<PhysRange> = Vec::with_capacity(self.segments.len());
        for &s in &self.segments {
            match out.last_mut() {
                Some(last) if last.end() == s.start() => {
                    *last = PhysRange::new(last.start(), s.end()).expect("extends a non-empty range");
                }
                _ => out.push(s),
            }
        }
        out
    }
}

/// The number of sg entries a correct sg-table builder needs for `backing`: adjacent
/// pages merged, each run split at `max_segment_size` and at segment boundaries.
pub fn sg_entries(backing: &Backing, max_segment_size: Option<Size>, boundary: BoundaryMask) -> u64 {
    let cap = max_segment_size.map_or(u64::MAX, Size::bytes).max(1);
    backing
        .runs()
        .iter()
        .map(|r| {
            let (mut start, end) = (r.start().get(), r.end().get());
            let mut n = 0u64;
            while start < end {
                let boundary_end = (start | boundary.get()).saturating_add(1);
                let piece_end = end.min(start.saturating_add(cap)).min(boundary_end.max(start + 1));
                start = piece_end;
                n += 1;
            }
            n
        })
        .sum()
}

/// A way in which a backing fails a device's constraints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The device, or `*` for the plan as a whole.
    pub device: String,
    /// The constraint (`reach`, `max_segments`, ...).
    pub constraint: String,
    /// What was found.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device `{}` violates {}: {}", self.device, self.constraint, self.detail)
    }
}

impl std::error::Error for Violation {}

fn violation(device: &str, constraint: &str, detail: String) -> Result<(), Violation> {
    Err(Violation { device: device.to_owned(), constraint: constraint.to_owned(), detail })
}

/// Checks `backing` against the plan's size and each device's own constraints.
pub fn verify(plan: &Plan, devices: &[Effective], backing: &Backing) -> Result<(), Violation> {
    devices.iter().try_for_each(|e| verify_device(e, backing))?;
    if backing.len() < plan.size {
        return violation("*", "size", format!("backing holds {} but the plan needs {}", backing.len(), plan.size));
    }
    Ok(())
}

fn verify_device(e: &Effective, b: &Backing) -> Result<(), Violation> {
    let d = e.device.as_str();
    for (i, s) in b.segments.iter().enumerate() {
        if !e.reach.value.contains_range(*s) {
            return violation(d, "reach", format!("segment {i} at {s} is outside {} ({})", e.reach.value, e.reach.why));
        }
        if let Some(pool) = &e.pool.value
            && !pool.contains_range(*s)
        {
            return violation(d, "regions", format!("segment {i} at {s} is outside {pool} ({})", e.pool.why));
        }
        let g = e.granule.value;
        if !s.start().is_aligned(g) || !s.len().is_aligned(g) {
            return violation(d, "granule", format!("segment {i} at {s} is not a multiple of {g} ({})", e.granule.why));
        }
    }
    if let Some(first) = b.segments.first()
        && !first.start().is_aligned(e.alignment.value)
    {
        return violation(
            d,
            "alignment",
            format!("buffer starts at {}, not {}-aligned ({})", first.start(), e.alignment.value, e.alignment.why),
        );
    }
    if let Some(cap) = e.max_segment_size.value
        && cap.is_zero()
        && !b.is_empty()
    {
        return violation(
            d,
            "max_segment_size",
            format!("no segment fits: the limit is below one page ({})", e.max_segment_size.why),
        );
    }
    if let Some(max) = e.max_segments.value {
        let n = sg_entries(b, e.max_segment_size.value, e.segment_boundary.value);
        if n > u64::from(max.get()) {
            return violation(
                d,
                "max_segments",
                format!("the backing needs {n} sg entries, over {max} ({})", e.max_segments.why),
            );
        }
    }
    if !e.cache_modes.value.has(b.cache_mode) {
        return violation(
            d,
            "cache_modes",
            format!("{} is not in {} ({})", b.cache_mode, e.cache_modes.value, e.cache_modes.why),
        );
    }
    if e.protected.value && !b.protected {
        return violation(d, "protected", format!("the backing is not protected memory ({})", e.protected.why));
    }
    if b.protected && !e.protected_access {
        return violation(
            d,
            "protected_access",
            "the backing is protected memory, which the device cannot access".into(),
        );
    }
    Ok(())
}

impl Plan {
    /// Whether `backing` meets the plan's merged hard requirements (window, pool, segments,
    /// alignment, granule, cache mode, protection) and size.
    pub fn admits(&self, b: &Backing) -> bool {
        let r: &Requirements = &self.requirements;
        let g: PageSize = r.granule.value;
        b.len() >= self.size
            && b.segments
                .iter()
                .all(|s| self.placement.contains_range(*s) && s.start().is_aligned(g) && s.len().is_aligned(g))
            && b.segments.first().is_some_and(|s| s.start().is_aligned(r.alignment.value))
            && r.max_segments
                .value
                .is_none_or(|n| sg_entries(b, r.max_segment_size.value, r.segment_boundary.value) <= u64::from(n.get()))
            && b.cache_mode == self.cache_mode.value
            && b.protected == r.protected.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::PhysAddr;

    fn seg(start: u64, len: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start), Size::new(len)).unwrap()
    }

    fn backing(segments: Vec<PhysRange>) -> Backing {
        Backing { segments, cache_mode: CacheMode::Cached, protected: false }
    }

    #[test]
    fn adjacent_segments_merge_into_one_entry() {
        let b = backing(vec![seg(0x1000, 0x1000), seg(0x2000, 0x1000), seg(0x8000, 0x1000)]);
        assert_eq!(b.runs().len(), 2);
        assert_eq!(sg_entries(&b, None, BoundaryMask::NONE), 2);
    }

    #[test]
    fn runs_split_at_max_segment_size_and_boundaries() {
        let b = backing(vec![seg(0, 0x40000)]);
        assert_eq!(sg_entries(&b, Some(Size::kib(64)), BoundaryMask::NONE), 4);
        // A 64 KiB boundary starting 4 KiB in: pieces 60K, 64K, 64K, 64K, 4K.
        let b = backing(vec![seg(0x1000, 0x40000)]);
        assert_eq!(sg_entries(&b, None, BoundaryMask::new(0xffff).unwrap()), 5);
    }
}
