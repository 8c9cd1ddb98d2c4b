//! The hard placement requirements, merged over devices.
//!
//! Each field is a value with the set of devices that caused it. Merging is a meet in a
//! semilattice: it is commutative, associative and idempotent, and adding a device never
//! loosens a requirement (the property tests check all four). Causes are kept as a bit
//! set of device indices, so merging allocates nothing; words come from
//! [`crate::Plan::causes`] when someone reads them.
//!
//! # Segment limits are stacked
//!
//! One backing serves every device, and the exporter builds each device's sg table from it
//! (split at that device's own `max_segment_size` and `segment_boundary_mask`). The plan
//! promises the stacked limits, as the block layer's `blk_stack_limits()` stacks queue
//! limits: at most `max_segments` (the smallest count limit) segments, none longer than
//! `max_segment_size` nor crossing `segment_boundary_mask` (the tightest of the devices
//! that limit the count). A backing within the stacked limits gives every device a table
//! within its own limits. A device with no count limit takes any number of entries, so its
//! `max_segment_size` and boundary only shape its own table and are not stacked (except a
//! `max_segment_size` below one page, which no table can meet).

use std::fmt;
use std::num::NonZeroU32;

use serde::{Serialize, Serializer};

use crate::effective::{Effective, Sourced};
use crate::model::CacheModes;
use crate::units::{BoundaryMask, PageSize, Size};
use crate::window::Window;

/// The most devices one request may name.
pub const MAX_DEVICES: usize = 128;

/// A set of device indices (into the request list / `Plan::devices`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DeviceSet(u128);

impl DeviceSet {
    /// No device.
    pub const EMPTY: DeviceSet = DeviceSet(0);

    /// The set holding device `i` (< [`MAX_DEVICES`]).
    pub const fn one(i: usize) -> DeviceSet {
        assert!(i < MAX_DEVICES);
        DeviceSet(1 << i)
    }
    /// The union.
    pub const fn union(self, o: DeviceSet) -> DeviceSet {
        DeviceSet(self.0 | o.0)
    }
    /// Whether `i` is in the set.
    pub const fn contains(self, i: usize) -> bool {
        i < MAX_DEVICES && self.0 & (1 << i) != 0
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The indices, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_DEVICES).filter(move |i| self.contains(*i))
    }
}

impl fmt::Debug for DeviceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for DeviceSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A requirement: its value and the devices that caused it (empty: nobody restricts it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Req<T> {
    /// The merged value.
    pub value: T,
    /// Who caused it: indices into `Plan::devices`.
    pub causes: DeviceSet,
}

impl<T: Clone + PartialEq> Req<T> {
    fn from_device(index: usize, s: &Sourced<T>, restricts: bool) -> Req<T> {
        Req { value: s.value.clone(), causes: if restricts { DeviceSet::one(index) } else { DeviceSet::EMPTY } }
    }

    /// Keeps the tighter of two totally ordered values (`tighter(a, b)`: `a` is strictly
    /// tighter); on a tie both sets of causes are kept.
    fn tighten(&mut self, other: &Req<T>, tighter: impl Fn(&T, &T) -> bool) {
        if tighter(&other.value, &self.value) {
            self.value = other.value.clone();
            self.causes = other.causes;
        } else if !tighter(&self.value, &other.value) {
            self.causes = self.causes.union(other.causes);
        }
    }

    /// A set-like meet (intersection); every restricting device stays a cause.
    fn meet_with(&mut self, other: &Req<T>, meet: impl Fn(&mut T, &T)) {
        meet(&mut self.value, &other.value);
        self.causes = self.causes.union(other.causes);
    }
}

/// The fields of [`Requirements`] (and of the layout), to ask a plan why one holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// [`Requirements::window`].
    Window,
    /// [`Requirements::pool`].
    Pool,
    /// [`Requirements::max_segments`].
    MaxSegments,
    /// [`Requirements::max_segment_size`].
    MaxSegmentSize,
    /// [`Requirements::segment_boundary`].
    SegmentBoundary,
    /// [`Requirements::alignment`].
    Alignment,
    /// [`Requirements::granule`].
    Granule,
    /// [`Requirements::cache_modes`].
    CacheModes,
    /// [`Requirements::protected`].
    Protected,
    /// [`Requirements::protected_access`].
    ProtectedAccess,
    /// Layout pitch alignment.
    PitchAlign,
    /// Layout offset alignment.
    OffsetAlign,
    /// Layout height alignment.
    HeightAlign,
    /// Layout size alignment.
    SizeAlign,
}

/// Hard placement requirements: what a backing must satisfy for every device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirements {
    /// Physical addresses every device can reach.
    pub window: Req<Window>,
    /// Memory the buffer must come from (named regions, protected carveouts); `None`:
    /// general memory.
    pub pool: Req<Option<Window>>,
    /// Physical segments at most (1: contiguous).
    pub max_segments: Req<Option<NonZeroU32>>,
    /// Physical segment length at most, stacked over the devices with a segment count
    /// limit (page-rounded; see the module docs).
    pub max_segment_size: Req<Option<Size>>,
    /// Segments may not cross a multiple of `mask + 1`, stacked over the devices with a
    /// segment count limit.
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
    /// The requirements of device number `index`. `ram` tells which address limits
    /// restrict anything.
    pub fn of(e: &Effective, index: usize, ram: &Window) -> Requirements {
        let counted = e.max_segments.value.is_some();
        let unmappable = e.max_segment_size.value.is_some_and(Size::is_zero);
        let max_segment_size = if counted || unmappable {
            Req::from_device(index, &e.max_segment_size, e.max_segment_size.value.is_some())
        } else {
            Req { value: None, causes: DeviceSet::EMPTY }
        };
        let segment_boundary = if counted {
            Req::from_device(index, &e.segment_boundary, e.segment_boundary.value != BoundaryMask::NONE)
        } else {
            Req { value: BoundaryMask::NONE, causes: DeviceSet::EMPTY }
        };
        Requirements {
            window: Req::from_device(index, &e.reach, !ram.is_subset_of(&e.reach.value)),
            pool: Req::from_device(index, &e.pool, e.pool.value.is_some()),
            max_segments: Req::from_device(index, &e.max_segments, e.max_segments.value.is_some()),
            max_segment_size,
            segment_boundary,
            alignment: Req::from_device(index, &e.alignment, e.alignment.value > PageSize::SZ_4K),
            granule: Req::from_device(index, &e.granule, e.granule.value > PageSize::SZ_4K),
            cache_modes: Req::from_device(index, &e.cache_modes, e.cache_modes.value != CacheModes::all()),
            protected: Req::from_device(index, &e.protected, e.protected.value),
            protected_access: Req {
                value: e.protected_access,
                causes: if e.protected_access { DeviceSet::EMPTY } else { DeviceSet::one(index) },
            },
        }
    }

    /// The requirements of both: the meet.
    pub fn merge(&self, o: &Requirements) -> Requirements {
        let mut r = self.clone();
        r.absorb(o);
        r
    }

    /// Merges `o` into `self` in place (the same meet as [`Requirements::merge`]).
    pub fn absorb(&mut self, o: &Requirements) {
        self.window.meet_with(&o.window, |a, b| *a = a.intersect(b));
        self.pool.meet_with(&o.pool, |a, b| match (a.as_mut(), b) {
            (Some(x), Some(y)) => *x = x.intersect(y),
            (None, Some(y)) => *a = Some(y.clone()),
            (_, None) => {}
        });
        self.max_segments.tighten(&o.max_segments, opt_lt);
        self.max_segment_size.tighten(&o.max_segment_size, opt_lt);
        self.segment_boundary.tighten(&o.segment_boundary, |a, b| a < b);
        self.alignment.tighten(&o.alignment, |a, b| a > b);
        self.granule.tighten(&o.granule, |a, b| a > b);
        self.cache_modes.meet_with(&o.cache_modes, |a, b| *a &= *b);
        self.protected.meet_with(&o.protected, |a, b| *a |= *b);
        self.protected_access.meet_with(&o.protected_access, |a, b| *a &= *b);
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

    /// Where the devices allow the pages to go: the window intersected with the pool when
    /// some device restricts it. (The plan's placement further keeps unrestricted buffers
    /// out of carveouts; that is policy, not a device requirement.)
    pub fn hard_window(&self) -> Window {
        match &self.pool.value {
            Some(pool) => self.window.value.intersect(pool),
            None => self.window.value.clone(),
        }
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

impl Effective {
    /// Why this device has its value of `field`.
    pub fn why(&self, field: Field) -> crate::effective::Why {
        use crate::effective::Why;
        let l = &self.layout;
        match field {
            Field::Window => self.reach.why.clone(),
            Field::Pool => self.pool.why.clone(),
            Field::MaxSegments => self.max_segments.why.clone(),
            Field::MaxSegmentSize => self.max_segment_size.why.clone(),
            Field::SegmentBoundary => self.segment_boundary.why.clone(),
            Field::Alignment => self.alignment.why.clone(),
            Field::Granule => self.granule.why.clone(),
            Field::CacheModes => self.cache_modes.why.clone(),
            Field::Protected => self.protected.why.clone(),
            Field::ProtectedAccess => Why::Layout("protected_access", u32::from(self.protected_access)),
            Field::PitchAlign => Why::Layout("pitch_align", l.pitch_align),
            Field::OffsetAlign => Why::Layout("offset_align", l.offset_align),
            Field::HeightAlign => Why::Layout("height_align", l.height_align),
            Field::SizeAlign => Why::Layout("size_align", l.size_align),
        }
    }
}
