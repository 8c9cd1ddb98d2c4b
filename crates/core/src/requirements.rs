//! The hard placement requirements, merged over devices.
//!
//! Each field is a value with the devices that caused it. Merging is a meet in a
//! semilattice: it is commutative, associative and idempotent, and adding a device never
//! loosens a requirement (the property tests check all four).

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::effective::{Effective, Sourced};
use crate::model::CacheModes;
use crate::units::{BoundaryMask, PageSize, Size};
use crate::window::Window;

/// A device that caused a requirement, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cause {
    /// Device name.
    pub device: String,
    /// The parameter or rule behind it.
    pub why: String,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.why)
    }
}

/// A requirement: its value and the devices that caused it (empty: nobody restricts it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Req<T> {
    /// The merged value.
    pub value: T,
    /// Who caused it.
    pub causes: BTreeSet<Cause>,
}

impl<T: Clone + PartialEq> Req<T> {
    fn from_device(device: &str, s: &Sourced<T>, restricts: bool) -> Req<T> {
        let causes = if restricts {
            BTreeSet::from([Cause { device: device.to_owned(), why: s.why.clone() }])
        } else {
            BTreeSet::new()
        };
        Req { value: s.value.clone(), causes }
    }

    /// The tighter of two totally ordered values (`tighter(a, b)` is true when `a` is
    /// strictly tighter); on a tie both sets of causes are kept.
    fn tightest(&self, other: &Req<T>, tighter: impl Fn(&T, &T) -> bool) -> Req<T> {
        if tighter(&self.value, &other.value) {
            self.clone()
        } else if tighter(&other.value, &self.value) {
            other.clone()
        } else {
            Req { value: self.value.clone(), causes: self.causes.union(&other.causes).cloned().collect() }
        }
    }

    /// A set-like meet (intersection); every restricting device stays a cause.
    fn meet(&self, other: &Req<T>, meet: impl Fn(&T, &T) -> T) -> Req<T> {
        Req { value: meet(&self.value, &other.value), causes: self.causes.union(&other.causes).cloned().collect() }
    }

    /// The device names among the causes.
    pub fn devices(&self) -> Vec<&str> {
        let names: BTreeSet<&str> = self.causes.iter().map(|c| c.device.as_str()).collect();
        names.into_iter().collect()
    }
}

/// Hard placement requirements: what a backing must satisfy for every device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Physical addresses every device can reach.
    pub window: Req<Window>,
    /// Memory the buffer must come from (named regions, protected carveouts); `None`:
    /// general memory.
    pub pool: Req<Option<Window>>,
    /// Physical segments at most (1: contiguous).
    pub max_segments: Req<Option<NonZeroU32>>,
    /// Physical segment length at most.
    pub max_segment_size: Req<Option<Size>>,
    /// Segments may not cross a multiple of `mask + 1`.
    pub segment_boundary: Req<BoundaryMask>,
    /// Alignment of the first byte.
    pub alignment: Req<PageSize>,
    /// Every segment's start and length are multiples of this.
    pub granule: Req<PageSize>,
    /// Cache modes every device can use.
    pub cache_modes: Req<CacheModes>,
    /// Protected memory is needed.
    pub protected: Req<bool>,
    /// Every device can access protected memory.
    pub protected_access: Req<bool>,
}

fn opt_lt<T: Ord>(a: &Option<T>, b: &Option<T>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x < y,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

impl Requirements {
    /// One device's requirements. `ram` tells which address limits restrict anything.
    pub fn of(e: &Effective, ram: &Window) -> Requirements {
        let d = e.device.as_str();
        Requirements {
            window: Req::from_device(d, &e.reach, !ram.is_subset_of(&e.reach.value)),
            pool: Req::from_device(d, &e.pool, e.pool.value.is_some()),
            max_segments: Req::from_device(d, &e.max_segments, e.max_segments.value.is_some()),
            max_segment_size: Req::from_device(d, &e.max_segment_size, e.max_segment_size.value.is_some()),
            segment_boundary: Req::from_device(d, &e.segment_boundary, e.segment_boundary.value != BoundaryMask::NONE),
            alignment: Req::from_device(d, &e.alignment, e.alignment.value > PageSize::SZ_4K),
            granule: Req::from_device(d, &e.granule, e.granule.value > PageSize::SZ_4K),
            cache_modes: Req::from_device(d, &e.cache_modes, e.cache_modes.value != CacheModes::all()),
            protected: Req::from_device(d, &e.protected, e.protected.value),
            protected_access: Req::from_device(
                d,
                &Sourced { value: e.protected_access, why: "cannot access protected memory".into() },
                !e.protected_access,
            ),
        }
    }

    /// The requirements of both: the meet.
    pub fn merge(&self, o: &Requirements) -> Requirements {
        Requirements {
            window: self.window.meet(&o.window, Window::intersect),
            pool: self.pool.meet(&o.pool, |a, b| match (a, b) {
                (Some(x), Some(y)) => Some(x.intersect(y)),
                (x, None) | (None, x) => x.clone(),
            }),
            max_segments: self.max_segments.tightest(&o.max_segments, opt_lt),
            max_segment_size: self.max_segment_size.tightest(&o.max_segment_size, opt_lt),
            segment_boundary: self.segment_boundary.tightest(&o.segment_boundary, |a, b| a < b),
            alignment: self.alignment.tightest(&o.alignment, |a, b| a > b),
            granule: self.granule.tightest(&o.granule, |a, b| a > b),
            cache_modes: self.cache_modes.meet(&o.cache_modes, |a, b| *a & *b),
            protected: self.protected.meet(&o.protected, |a, b| *a || *b),
            protected_access: self.protected_access.meet(&o.protected_access, |a, b| *a && *b),
        }
    }

    /// Whether every requirement of `self` is at least as tight as `other`'s.
    pub fn at_least_as_tight_as(&self, other: &Requirements) -> bool {
        let pool_ok = match (&self.pool.value, &other.pool.value) {
            (_, None) => true,
            (Some(a), Some(b)) => a.is_subset_of(b),
            (None, Some(_)) => false,
        };
        self.window.value.is_subset_of(&other.window.value)
            && pool_ok
            && !opt_lt(&other.max_segments.value, &self.max_segments.value)
            && !opt_lt(&other.max_segment_size.value, &self.max_segment_size.value)
            && self.segment_boundary.value <= other.segment_boundary.value
            && self.alignment.value >= other.alignment.value
            && self.granule.value >= other.granule.value
            && other.cache_modes.value.contains(self.cache_modes.value)
            && (self.protected.value || !other.protected.value)
            && (!self.protected_access.value || other.protected_access.value)
    }

    /// The longest piece one segment may be: `min(max_segment_size, boundary + 1)`.
    pub fn segment_cap(&self) -> Option<u64> {
        let size = self.max_segment_size.value.map(Size::bytes);
        let boundary = self.segment_boundary.value.get().checked_add(1);
        match (size, boundary) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the buffer must be physically contiguous.
    pub fn contiguous(&self) -> bool {
        self.max_segments.value.is_some_and(|n| n.get() == 1)
    }
}
