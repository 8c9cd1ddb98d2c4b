// SPDX-License-Identifier: GPL-2.0 OR MIT OR Apache-2.0

//! The merge at the heart of the module: every attached device's constraints,
//! read from its `struct device` (plus what DECLARE adds), merged into one plan
//! with the devices that caused each requirement.
//!
//! This file is pure `core` Rust with no `unsafe` and no kernel types, so that
//! the same source is compiled twice: into the module (`mod plan;`) and into a
//! host test (`crates/linux/tests/kmod_plan.rs`) that checks it against
//! `dmaplace_core::solve` and `dmaplace_core::verify` on random devices. It
//! mirrors `crates/core/src/{effective,requirements,solver,verify}.rs` for the
//! fields a kernel exporter can see: address limits, segments, alignment and the
//! IOMMU's page sizes (no regions, cache modes or protection).

/// The most attachments one buffer tracks (causes are a `u32` bit set).
pub const MAX_DEVICES: usize = 32;
/// The smallest page, and the default alignment and granule.
pub const PAGE: u64 = 4096;
/// `MAX_PAGE_ORDER` on x86-64: the page allocator's largest block is 4 MiB.
pub const MAX_ORDER: u32 = 10;
/// The most preferred chunk sizes a plan lists: page sizes from 4 KiB up to the
/// buffer's size, which CREATE caps at 1 GiB (19 sizes).
pub const MAX_CHUNK_SIZES: usize = 20;

/// One device's constraints, as the module reads them at attach time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConstraints {
    /// `dma_get_mask(dev)`.
    pub dma_mask: u64,
    /// `dev->bus_dma_limit` (inclusive); 0: none.
    pub bus_dma_limit: u64,
    /// `dma_get_max_seg_size(dev)`.
    pub max_segment_size: u64,
    /// `dma_get_seg_boundary(dev)`.
    pub segment_boundary_mask: u64,
    /// `pgsize_bitmap` of the DMA domain when the DMA API goes through an IOMMU
    /// (`use_dma_iommu(dev)`); 0: no IOMMU (dma-direct).
    pub iommu_pgsize_bitmap: u64,
    /// The IOMMU domain's `geometry.aperture_end`; 0 without an IOMMU.
    pub iommu_aperture_end: u64,
    /// DECLAREd maximum number of segments (1: contiguous); 0: no limit.
    pub declared_max_segments: u32,
    /// DECLAREd start alignment in bytes; 0: the default (4 KiB).
    pub declared_alignment: u64,
}

impl DeviceConstraints {
    /// Whether the DMA API maps through an IOMMU for this device.
    pub const fn has_iommu(&self) -> bool {
        self.iommu_pgsize_bitmap != 0
    }
}

/// The width of a mask in bits, as `dmaplace_core::DmaMask` counts it: the
/// smallest `n` with `mask <= DMA_BIT_MASK(n)` (at least 1).
pub const fn mask_bits(mask: u64) -> u32 {
    let bits = 64 - mask.leading_zeros();
    if bits == 0 { 1 } else { bits }
}

/// The exclusive end of the addresses below a `bits`-wide mask, saturated at
/// `u64::MAX` for 64 bits (as `DmaMask::end`).
pub const fn bits_end(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { 1u64 << bits }
}

/// The smallest page size in a `pgsize_bitmap` that is at least 4 KiB.
pub const fn granule_of(pgsize_bitmap: u64) -> u64 {
    let usable = pgsize_bitmap & !(PAGE - 1);
    if usable == 0 { PAGE } else { 1u64 << usable.trailing_zeros() }
}

/// A device's constraints on physical placement (`dmaplace_core::Effective`).
///
/// Behind an IOMMU the device's segment limits and alignment bind IOVAs, which
/// the IOMMU lays out contiguously: what remains is its granule. This is the
/// answer to "IOMMU coalescing makes segment counts meaningless": they are not
/// counted for such a device at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    /// Physical addresses below this end are reachable.
    pub reach_end: u64,
    /// Physical segments at most (1: contiguous).
    pub max_segments: Option<u32>,
    /// Physical segment length at most.
    pub max_segment_size: Option<u64>,
    /// Segments may not cross a multiple of `mask + 1`.
    pub segment_boundary: u64,
    /// Alignment of the first byte.
    pub alignment: u64,
    /// Every segment's start and length are multiples of this.
    pub granule: u64,
}

impl Effective {
    /// What `dev`'s constraints mean for the pages.
    pub fn of(dev: &DeviceConstraints) -> Effective {
        if dev.has_iommu() {
            let g = granule_of(dev.iommu_pgsize_bitmap);
            return Effective {
                // intel-iommu (and every IOMMU this module meets) reaches any address.
                reach_end: u64::MAX,
                max_segments: None,
                max_segment_size: None,
                segment_boundary: u64::MAX,
                alignment: g,
                granule: g,
            };
        }
        let mask_end = bits_end(mask_bits(dev.dma_mask));
        let reach_end = match dev.bus_dma_limit {
            0 => mask_end,
            limit if limit.saturating_add(1) < mask_end => limit.saturating_add(1),
            _ => mask_end,
        };
        Effective {
            reach_end,
            max_segments: if dev.declared_max_segments == 0 { None } else { Some(dev.declared_max_segments) },
            // `sg_alloc_append_table_from_pages()` rounds it down to whole pages.
            max_segment_size: Some(dev.max_segment_size & !(PAGE - 1)),
            segment_boundary: dev.segment_boundary_mask,
            alignment: if dev.declared_alignment > PAGE { dev.declared_alignment } else { PAGE },
            granule: PAGE,
        }
    }
}

/// A merged value and the devices (bit `i`: attachment `i`) that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req<T> {
    /// The merged value.
    pub value: T,
    /// Who caused it; 0: nobody restricts it.
    pub causes: u32,
}

impl<T: Copy + PartialEq> Req<T> {
    fn one(i: usize, value: T, restricts: bool) -> Req<T> {
        Req { value, causes: if restricts { 1 << i } else { 0 } }
    }

    /// Keeps the tighter value; on a tie both sets of causes.
    fn tighten(&mut self, o: Req<T>, tighter: impl Fn(&T, &T) -> bool) {
        if tighter(&o.value, &self.value) {
            *self = o;
        } else if !tighter(&self.value, &o.value) {
            self.causes |= o.causes;
        }
    }
}

fn opt_lt<T: Ord>(a: &Option<T>, b: &Option<T>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x < y,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A preferred chunk size: a page size some attached IOMMU maps with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChunkPref {
    /// The size in bytes.
    pub size: u64,
    /// The devices whose IOMMU maps it in one entry.
    pub devices: u32,
}

/// The merged plan (`dmaplace_core::Plan`'s requirements and preferences).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bytes, rounded up to the granule.
    pub size: u64,
    /// The backing must lie below this physical address.
    pub window_end: Req<u64>,
    /// Physical segments at most.
    pub max_segments: Req<Option<u32>>,
    /// Physical segment length at most.
    pub max_segment_size: Req<Option<u64>>,
    /// Segments may not cross a multiple of `mask + 1`.
    pub segment_boundary: Req<u64>,
    /// Alignment of the first byte.
    pub alignment: Req<u64>,
    /// Every segment's start and length are multiples of this.
    pub granule: Req<u64>,
    /// Preferred chunk sizes, largest first (`chunk_sizes[..n_chunk_sizes]`).
    pub chunk_sizes: [ChunkPref; MAX_CHUNK_SIZES],
    /// How many of `chunk_sizes` are used.
    pub n_chunk_sizes: usize,
    /// With a segment limit above 1: chunks at least this long meet it.
    pub min_chunk: Option<u64>,
    /// Why no backing can exist, if none can.
    pub conflict: Option<Conflict>,
}

/// Why the devices' constraints cannot all be met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// No attachment: nothing to merge.
    NoDevices,
    /// `max_segments` segments of at most `segment_cap` bytes cannot hold the buffer.
    /// A `segment_cap` of 0 is a device whose `max_segment_size` is below one page (no sg
    /// table of pages can meet it; `max_segments` is then `u32::MAX` when nothing limits
    /// the count): `dmaplace_core`'s `segment_size` conflict.
    SegmentLimit {
        /// Segments allowed.
        max_segments: u32,
        /// Longest segment allowed.
        segment_cap: u64,
    },
}

impl Plan {
    /// Whether the buffer must be physically contiguous.
    pub fn contiguous(&self) -> bool {
        self.max_segments.value == Some(1)
    }

    /// The preferred chunk sizes, largest first.
    pub fn chunk_sizes(&self) -> &[ChunkPref] {
        &self.chunk_sizes[..self.n_chunk_sizes]
    }

    /// The longest piece one segment may be: `min(max_segment_size, boundary + 1)`.
    pub fn segment_cap(&self) -> Option<u64> {
        let size = self.max_segment_size.value;
        let boundary = self.segment_boundary.value.checked_add(1);
        match (size, boundary) {
            (Some(a), Some(b)) => Some(if a < b { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    let r = v % a;
    if r == 0 { v } else { v.saturating_add(a - r) }
}

/// Merges the constraints of `devs` (attachment order) for a `size`-byte buffer
/// on a machine whose RAM ends at `ram_end`. An address limit at or above
/// `ram_end` restricts nothing, so it names no cause (as in the core solver).
pub fn merge(devs: &[DeviceConstraints], size: u64, ram_end: u64) -> Plan {
    let mut plan = Plan {
        size,
        window_end: Req { value: u64::MAX, causes: 0 },
        max_segments: Req { value: None, causes: 0 },
        max_segment_size: Req { value: None, causes: 0 },
        segment_boundary: Req { value: u64::MAX, causes: 0 },
        alignment: Req { value: PAGE, causes: 0 },
        granule: Req { value: PAGE, causes: 0 },
        chunk_sizes: [ChunkPref::default(); MAX_CHUNK_SIZES],
        n_chunk_sizes: 0,
        min_chunk: None,
        conflict: None,
    };
    if devs.is_empty() {
        plan.conflict = Some(Conflict::NoDevices);
        return plan;
    }
    let mut pgsizes = 0u64;
    for (i, d) in devs.iter().take(MAX_DEVICES).enumerate() {
        let e = Effective::of(d);
        // The window is a set-like meet: every restricting device stays a cause.
        if e.reach_end < ram_end {
            plan.window_end.causes |= 1 << i;
        }
        if e.reach_end < plan.window_end.value {
            plan.window_end.value = e.reach_end;
        }
        plan.max_segments.tighten(Req::one(i, e.max_segments, e.max_segments.is_some()), opt_lt);
        // The segment limits are stacked over the devices that limit the count (as
        // `blk_stack_limits()`): a device that takes any number of entries gets its own
        // table split at its own limits, and binds nothing else. A limit below one page
        // binds anyway: no table can meet it.
        let counted = e.max_segments.is_some();
        let (cap, boundary) = if counted || e.max_segment_size == Some(0) {
            (e.max_segment_size, if counted { e.segment_boundary } else { u64::MAX })
        } else {
            (None, u64::MAX)
        };
        plan.max_segment_size.tighten(Req::one(i, cap, cap.is_some()), opt_lt);
        plan.segment_boundary.tighten(Req::one(i, boundary, boundary != u64::MAX), |a, b| a < b);
        plan.alignment.tighten(Req::one(i, e.alignment, e.alignment > PAGE), |a, b| a > b);
        plan.granule.tighten(Req::one(i, e.granule, e.granule > PAGE), |a, b| a > b);
        if d.has_iommu() {
            pgsizes |= d.iommu_pgsize_bitmap;
        }
    }
    let granule = if plan.granule.value > PAGE { plan.granule.value } else { PAGE };
    plan.size = align_up(size, granule);
    // Preferred chunks: the page sizes the attached IOMMUs map, largest first.
    let mut bit = 63i32;
    while bit >= 0 {
        let p = 1u64 << bit;
        if pgsizes & p != 0 && p >= plan.granule.value && p <= plan.size && plan.n_chunk_sizes < MAX_CHUNK_SIZES {
            let mut devices = 0u32;
            for (i, d) in devs.iter().take(MAX_DEVICES).enumerate() {
                if d.has_iommu() && d.iommu_pgsize_bitmap & p != 0 {
                    devices |= 1 << i;
                }
            }
            plan.chunk_sizes[plan.n_chunk_sizes] = ChunkPref { size: p, devices };
            plan.n_chunk_sizes += 1;
        }
        bit -= 1;
    }
    plan.min_chunk = match plan.max_segments.value {
        Some(n) if n > 1 => Some(plan.size.div_ceil(u64::from(n))),
        _ => None,
    };
    if plan.max_segment_size.value == Some(0) {
        let max_segments = plan.max_segments.value.unwrap_or(u32::MAX);
        plan.conflict = Some(Conflict::SegmentLimit { max_segments, segment_cap: 0 });
    } else if let (Some(n), Some(cap)) = (plan.max_segments.value, plan.segment_cap()) {
        let cap = cap - cap % granule;
        if u128::from(n) * u128::from(cap) < u128::from(plan.size) {
            plan.conflict = Some(Conflict::SegmentLimit { max_segments: n, segment_cap: cap });
        }
    }
    plan
}

/// How many sg entries a correct table builder needs for `segments` (physical
/// `(start, len)` in buffer order): adjacent segments merged, each run split at
/// `max_segment_size` and at segment boundaries (`dmaplace_core::verify::sg_entries`).
pub fn sg_entries(segments: impl Iterator<Item = (u64, u64)>, max_segment_size: Option<u64>, boundary: u64) -> u64 {
    let mut n = 0u64;
    let mut run: Option<(u64, u64)> = None;
    let mut count_run = |start: u64, end: u64| {
        let cap = match max_segment_size {
            Some(c) if c > 0 => c,
            _ => u64::MAX,
        };
        let mut s = start;
        while s < end {
            let boundary_end = (s | boundary).saturating_add(1);
            let mut piece_end = end;
            if s.saturating_add(cap) < piece_end {
                piece_end = s.saturating_add(cap);
            }
            let b = if boundary_end > s + 1 { boundary_end } else { s + 1 };
            if b < piece_end {
                piece_end = b;
            }
            s = piece_end;
            n += 1;
        }
    };
    for (start, len) in segments {
        let end = start.saturating_add(len);
        run = match run {
            Some((rs, re)) if re == start => Some((rs, end)),
            Some((rs, re)) => {
                count_run(rs, re);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((rs, re)) = run {
        count_run(rs, re);
    }
    n
}

/// Why a backing fails one device's constraints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmet {
    /// Segment `index` ends above the reachable addresses.
    Reach {
        /// The segment.
        index: usize,
    },
    /// Segment `index` is not a multiple of the granule.
    Granule {
        /// The segment.
        index: usize,
    },
    /// The first byte is not aligned.
    Alignment,
    /// Too many sg entries.
    Segments {
        /// Entries the backing needs.
        needed: u64,
    },
    /// Smaller than the buffer.
    Size,
}

/// Checks a backing (physical `(start, len)` segments in buffer order) against
/// one device's own constraints (`dmaplace_core::verify` for these fields).
pub fn serves(e: &Effective, size: u64, segments: impl Iterator<Item = (u64, u64)> + Clone) -> Result<(), Unmet> {
    let mut total = 0u64;
    for (i, (start, len)) in segments.clone().enumerate() {
        if start.saturating_add(len) > e.reach_end {
            return Err(Unmet::Reach { index: i });
        }
        if start % e.granule != 0 || len % e.granule != 0 {
            return Err(Unmet::Granule { index: i });
        }
        if i == 0 && start % e.alignment != 0 {
            return Err(Unmet::Alignment);
        }
        total = total.saturating_add(len);
    }
    if total < size {
        return Err(Unmet::Size);
    }
    if let Some(max) = e.max_segments {
        let needed = sg_entries(segments, e.max_segment_size, e.segment_boundary);
        if needed > u64::from(max) {
            return Err(Unmet::Segments { needed });
        }
    }
    Ok(())
}

/// The allocation strategy for a plan: contiguous, or chunks of these orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// One physically contiguous range.
    pub contiguous: bool,
    /// Chunk orders to try, largest first (`orders[..n_orders]`); the last is the
    /// smallest allowed.
    pub orders: [u32; 12],
    /// How many of `orders` are used.
    pub n_orders: usize,
    /// The first chunk's order at least (for the plan's alignment).
    pub first_order: u32,
}

/// `get_order`: the order of the smallest power-of-two block of pages holding `bytes`.
pub fn order_of(bytes: u64) -> u32 {
    let pages = bytes.div_ceil(PAGE).max(1);
    64 - (pages - 1).leading_zeros()
}

/// Chooses how to allocate for `plan`: contiguous when a device without an IOMMU
/// needs one segment (or the segment limit cannot be met with page-allocator
/// chunks); else chunks in the orders the attached IOMMUs map (capped at
/// `MAX_ORDER`; with no IOMMU attached, orders 10, 9, 8 and 4), never smaller than
/// the segment limit allows, ending at order 0 when nothing asks for more.
pub fn strategy(plan: &Plan) -> Strategy {
    let mut s = Strategy { contiguous: false, orders: [0; 12], n_orders: 0, first_order: 0 };
    if plan.contiguous() {
        s.contiguous = true;
        return s;
    }
    let min_order = match plan.min_chunk {
        Some(m) => order_of(m),
        None => order_of(plan.granule.value),
    };
    if min_order > MAX_ORDER {
        s.contiguous = true;
        return s;
    }
    for c in plan.chunk_sizes() {
        let o = order_of(c.size);
        if c.size.is_power_of_two() && c.size >= PAGE && o <= MAX_ORDER && o > min_order && s.n_orders < 11 {
            s.orders[s.n_orders] = o;
            s.n_orders += 1;
        }
    }
    // No IOMMU to please: the largest blocks the page allocator has (fewer sg
    // entries for everyone), falling back as the system heap does.
    if plan.n_chunk_sizes == 0 {
        for o in [MAX_ORDER, 9, 8, 4] {
            if o > min_order {
                s.orders[s.n_orders] = o;
                s.n_orders += 1;
            }
        }
    }
    s.orders[s.n_orders] = min_order;
    s.n_orders += 1;
    s.first_order = order_of(plan.alignment.value).min(MAX_ORDER);
    s
}
