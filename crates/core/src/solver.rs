//! The solver: merges every requesting device's constraints into one [`Plan`], or
//! explains the [`Conflict`] naming a minimal set of devices.

use std::fmt;
use std::num::NonZeroU32;

use drm_fourcc::DrmFourcc;
use serde::{Deserialize, Serialize};

use crate::Usage;
use crate::effective::Effective;
use crate::iommu::{self, PteCounts};
use crate::layout::{self, Layout, LayoutAlign, LayoutError, MOD_LINEAR};
use crate::model::{CacheMode, Device};
use crate::platform::Platform;
use crate::requirements::{DeviceSet, Field, MAX_DEVICES, Req, Requirements};
use crate::units::{PageSize, PageSizes, Size, UnitError};
use crate::window::Window;

/// Buffers larger than this are rejected as bad input (256 TiB).
pub const MAX_BUFFER_SIZE: Size = Size::new(1 << 48);
/// Images wider or taller than this are rejected as bad input.
pub const MAX_DIMENSION: u32 = 1 << 16;

/// An image to lay out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDesc {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Format.
    #[serde(with = "crate::layout::fourcc_serde")]
    pub format: DrmFourcc,
    /// Acceptable modifiers; empty means any.
    pub modifiers: Vec<u64>,
}

/// What the buffer holds: a number of bytes, or an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferDesc {
    /// A raw size.
    Size(Size),
    /// An image; the layout decides the size.
    Image(ImageDesc),
}

/// Bad input, as opposed to a genuine conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// No device was named.
    #[error("no devices: name at least one device that will use the buffer")]
    NoDevices,
    /// More devices than a plan can track.
    #[error("{0} devices requested; at most {MAX_DEVICES} can share one buffer")]
    TooManyDevices(usize),
    /// A zero-byte buffer.
    #[error("buffer size must be at least one byte")]
    ZeroSize,
    /// An absurd size.
    #[error("buffer size {0} is over the {MAX_BUFFER_SIZE} limit")]
    TooLarge(Size),
    /// An absurd image.
    #[error("image {width}x{height} is outside 1..={MAX_DIMENSION} in some dimension")]
    BadDimensions {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// Arithmetic overflow.
    #[error(transparent)]
    Overflow(#[from] UnitError),
    /// dmaplace cannot lay out the format.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Why a request could not be solved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    /// The devices' constraints cannot all be met.
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
}

/// One device and the hints it will use the buffer with.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The device.
    pub device: &'a Device,
    /// Its usage hints.
    pub hints: Usage,
}

/// Soft preferences: how to chunk the backing so the IOMMUs map it with few entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Preferences {
    /// Preferred chunk sizes, largest first, with the devices that map each in one entry.
    pub chunk_sizes: Vec<ChunkPref>,
    /// Preferred alignment of the first byte.
    pub alignment: PageSize,
    /// Chunks should be at least this big for the segment limit to be met.
    pub min_chunk: Option<Size>,
    /// Estimated IOMMU page-table entries per device, for the preferred chunking.
    pub entries: Vec<DeviceEntries>,
}

/// A preferred chunk size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChunkPref {
    /// The size.
    pub size: PageSize,
    /// Devices whose IOMMU maps a chunk of this size with one entry.
    pub devices: DeviceSet,
}

/// Page-table entries one device needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceEntries {
    /// Index of the device in `Plan::devices`.
    pub device: usize,
    /// Entries by page size.
    pub ptes: PteCounts,
}

/// The layout part of a plan, with who caused each alignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutPlan {
    /// The chosen layout.
    pub layout: Layout,
    /// Modifiers every device accepts, in preference order.
    pub candidates: Vec<u64>,
    /// Pitch alignment in bytes.
    pub pitch_align: Req<u32>,
    /// Offset alignment in bytes.
    pub offset_align: Req<u32>,
    /// Height alignment in rows.
    pub height_align: Req<u32>,
    /// Size alignment in bytes.
    pub size_align: Req<u32>,
}

/// A solution: hard requirements, soft preferences and layout, each with its causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Platform name.
    pub platform: String,
    /// Bytes to allocate (page-aligned).
    pub size: Size,
    /// Hard requirements.
    pub requirements: Requirements,
    /// Where the backing may go: the window intersected with the pool (general memory
    /// when no device restricts it).
    pub placement: Window,
    /// The cache mode chosen.
    pub cache_mode: Req<CacheMode>,
    /// Soft preferences.
    pub preferences: Preferences,
    /// The layout, for images.
    pub layout: Option<LayoutPlan>,
    /// Each device's own constraints, as solved (what [`crate::verify`] checks against).
    pub devices: Vec<Effective>,
}

impl Plan {
    /// Whether the buffer must be physically contiguous.
    pub fn contiguous(&self) -> bool {
        self.requirements.contiguous()
    }

    /// The devices in `set`, each with why it has its value of `field`.
    pub fn causes(&self, set: DeviceSet, field: Field) -> Vec<Cause> {
        set.iter()
            .filter_map(|i| self.devices.get(i))
            .map(|e| Cause { device: e.device.clone(), why: e.why(field).to_string() })
            .collect()
    }

    /// The names of the devices in `set`.
    pub fn names(&self, set: DeviceSet) -> Vec<&str> {
        set.iter().filter_map(|i| self.devices.get(i)).map(|e| e.device.as_str()).collect()
    }
}

/// A device that caused a requirement, and why, in words.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

/// What went wrong, structured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConflictKind {
    /// No memory lies in every device's reach and pool.
    NoCommonMemory,
    /// The common window holds too little (or too short a run of) memory.
    NoRoom {
        /// Where the memory would have to be.
        within: Window,
        /// Bytes needed.
        needed: Size,
        /// Whether one contiguous run is needed.
        contiguous: bool,
        /// The longest run (contiguous) or the total (otherwise) available.
        available: Size,
    },
    /// A contiguous run larger than the page allocator's largest block is needed where no
    /// CMA area or carveout lies.
    NoContiguousPool {
        /// The window with no CMA area or carveout in it.
        within: Window,
        /// Bytes needed in one run.
        needed: Size,
        /// The page allocator's largest block.
        max_block: Size,
    },
    /// The segment limits cannot cover the buffer.
    SegmentLimit {
        /// Buffer size.
        size: Size,
        /// Segments allowed.
        max_segments: u32,
        /// Longest segment allowed.
        segment_cap: Size,
    },
    /// No cache mode suits every device.
    CacheModes,
    /// Protected memory is needed but a device cannot access it.
    Protected,
    /// A device does not support the format.
    Format {
        /// The format.
        format: String,
    },
    /// No modifier is accepted by every device.
    Modifiers {
        /// The format.
        format: String,
    },
    /// The image exceeds a device's limit.
    Dimension {
        /// `width`, `height` or `pitch`.
        what: String,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The buffer does not fit a device's IOVA space.
    IovaSpace {
        /// Buffer size.
        size: Size,
        /// IOVA space.
        space: Size,
    },
}

/// One device's part in a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictItem {
    /// The device.
    pub device: String,
    /// The constraint (`dma_mask`, `regions`, `max_segments`, ...).
    pub constraint: String,
    /// Its value, in words.
    pub value: String,
    /// Where it comes from.
    pub why: String,
}

/// An unsatisfiable request, explained. `devices` is a minimal conflicting set: together
/// they cannot be satisfied, and without any one of them the rest can.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// Platform.
    pub platform: String,
    /// The minimal set of conflicting devices.
    pub devices: Vec<String>,
    /// The hints each device in `devices` was requested with (same order).
    pub hints: Vec<Usage>,
    /// What conflicts.
    #[serde(flatten)]
    pub kind: ConflictKind,
    /// Each device's constraint in the conflict.
    pub items: Vec<ConflictItem>,
    /// An engineer's explanation.
    pub message: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Merges the requests into a plan, or explains why no backing can satisfy them all.
pub fn solve(platform: &Platform, desc: &BufferDesc, requests: &[Request<'_>]) -> Result<Plan, SolveError> {
    validate(desc, requests)?;
    match attempt(platform, desc, requests) {
        Ok(plan) => Ok(plan),
        Err(Failure::Invalid(e)) => Err(SolveError::Invalid(e)),
        Err(Failure::Conflict(_)) => Err(explain(platform, desc, requests)),
    }
}

fn validate(desc: &BufferDesc, requests: &[Request<'_>]) -> Result<(), InvalidRequest> {
    if requests.is_empty() {
        return Err(InvalidRequest::NoDevices);
    }
    if requests.len() > MAX_DEVICES {
        return Err(InvalidRequest::TooManyDevices(requests.len()));
    }
    validate_desc(desc)
}

/// Rejects zero or absurd sizes, bad dimensions and formats without a layout rule.
pub(crate) fn validate_desc(desc: &BufferDesc) -> Result<(), InvalidRequest> {
    match desc {
        BufferDesc::Size(s) if s.is_zero() => Err(InvalidRequest::ZeroSize),
        BufferDesc::Size(s) if *s > MAX_BUFFER_SIZE => Err(InvalidRequest::TooLarge(*s)),
        BufferDesc::Image(img)
            if img.width == 0 || img.height == 0 || img.width > MAX_DIMENSION || img.height > MAX_DIMENSION =>
        {
            Err(InvalidRequest::BadDimensions { width: img.width, height: img.height })
        }
        BufferDesc::Image(img) if layout::format_info(img.format).is_none() => {
            let known: Vec<String> = layout::FORMATS.iter().map(|f| layout::fourcc_name(f.fourcc)).collect();
            Err(LayoutError::UnknownFormat(layout::fourcc_name(img.format), known.join(" ")).into())
        }
        _ => Ok(()),
    }
}

/// Why one attempt failed: the failing constraint and its culprits, before minimising.
#[derive(Debug)]
enum Failure {
    Invalid(InvalidRequest),
    Conflict(Fail),
}

#[derive(Debug)]
struct Fail {
    kind: ConflictKind,
    /// Devices (indices into the attempt's requests) whose constraints are involved.
    items: Vec<ConflictItem>,
}

impl From<InvalidRequest> for Failure {
    fn from(e: InvalidRequest) -> Self {
        Failure::Invalid(e)
    }
}

fn fail<T>(kind: ConflictKind, items: Vec<ConflictItem>) -> Result<T, Failure> {
    Err(Failure::Conflict(Fail { kind, items }))
}

fn item(device: &str, constraint: &str, value: impl Into<String>, why: impl Into<String>) -> ConflictItem {
    ConflictItem { device: device.to_owned(), constraint: constraint.to_owned(), value: value.into(), why: why.into() }
}

fn attempt(platform: &Platform, desc: &BufferDesc, requests: &[Request<'_>]) -> Result<Plan, Failure> {
    let effs: Vec<Effective> = requests.iter().map(|r| Effective::new(platform, r.device, r.hints)).collect();
    let ram = platform.memory.ram();
    let mut devices = effs.iter().enumerate();
    let (_, first) = devices.next().ok_or(InvalidRequest::NoDevices)?;
    let mut req = Requirements::of(first, 0, &ram);
    for (i, e) in devices {
        req.absorb(&Requirements::of(e, i, &ram));
    }
    check_protection(&effs, &req)?;
    let cache_mode = choose_cache_mode(platform, &effs, &req)?;
    let layout = match desc {
        BufferDesc::Size(_) => None,
        BufferDesc::Image(img) => Some(plan_layout(platform, requests, &effs, img)?),
    };
    let raw_size = match (&layout, desc) {
        (Some(l), _) => Size::new(l.layout.size),
        (None, BufferDesc::Size(s)) => *s,
        (None, BufferDesc::Image(_)) => unreachable!("images always have a layout"),
    };
    let size = raw_size.align_up(req.granule.value.max(PageSize::SZ_4K)).map_err(InvalidRequest::from)?;
    check_iova_space(&effs, size)?;
    let window = req.window.value.intersect(req.pool.value.as_ref().unwrap_or(&platform.memory.general()));
    let placement = check_memory(platform, &effs, &req, window, size)?;
    let preferences = preferences(&effs, &req, size);
    Ok(Plan {
        platform: platform.name.clone(),
        size,
        requirements: req,
        placement,
        cache_mode,
        preferences,
        layout,
        devices: effs,
    })
}

fn check_protection(effs: &[Effective], req: &Requirements) -> Result<(), Failure> {
    if !req.protected.value || req.protected_access.value {
        return Ok(());
    }
    let items = effs
        .iter()
        .filter(|e| e.protected.value)
        .map(|e| item(&e.device, "protected", "needs protected memory", e.protected.why.to_string()))
        .chain(
            effs.iter()
                .filter(|e| !e.protected_access)
                .map(|e| item(&e.device, "protected_access", "false", "cannot access protected memory")),
        )
        .collect();
    fail(ConflictKind::Protected, items)
}

fn choose_cache_mode(platform: &Platform, effs: &[Effective], req: &Requirements) -> Result<Req<CacheMode>, Failure> {
    let modes = req.cache_modes.value;
    match platform.cache_preference.iter().copied().chain(CacheMode::ALL).find(|m| modes.has(*m)) {
        Some(m) => Ok(Req { value: m, causes: req.cache_modes.causes }),
        None => fail(
            ConflictKind::CacheModes,
            effs.iter()
                .map(|e| item(&e.device, "cache_modes", e.cache_modes.value.to_string(), e.cache_modes.why.to_string()))
                .collect(),
        ),
    }
}

fn check_iova_space(effs: &[Effective], size: Size) -> Result<(), Failure> {
    for e in effs {
        if let Some(bits) = e.iova_space {
            let space = Size::new(bits.mask()).checked_add(Size::new(1)).unwrap_or(Size::new(u64::MAX));
            if size > space {
                let name = e.iommu.as_ref().map_or("", |m| &*m.name);
                return fail(
                    ConflictKind::IovaSpace { size, space },
                    vec![item(&e.device, "iova_bits", bits.to_string(), format!("IOMMU {name} aperture and dma_mask"))],
                );
            }
        }
    }
    Ok(())
}

fn window_items(effs: &[Effective], ram: &Window) -> Vec<ConflictItem> {
    let mut items = Vec::new();
    for e in effs {
        if let Some(pool) = &e.pool.value {
            items.push(item(&e.device, "regions", pool.to_string(), e.pool.why.to_string()));
        }
        if !ram.is_subset_of(&e.reach.value) {
            items.push(item(&e.device, "reach", e.reach.value.to_string(), e.reach.why.to_string()));
        }
    }
    items
}

fn segment_items(effs: &[Effective]) -> Vec<ConflictItem> {
    let mut items = Vec::new();
    for e in effs {
        if let Some(n) = e.max_segments.value {
            items.push(item(&e.device, "max_segments", n.to_string(), e.max_segments.why.to_string()));
        }
        if let Some(s) = e.max_segment_size.value {
            items.push(item(&e.device, "max_segment_size", s.to_string(), e.max_segment_size.why.to_string()));
        }
        if e.segment_boundary.value != crate::units::BoundaryMask::NONE {
            items.push(item(
                &e.device,
                "segment_boundary_mask",
                e.segment_boundary.value.to_string(),
                e.segment_boundary.why.to_string(),
            ));
        }
    }
    items
}

/// Checks that the window can hold the buffer under the segment limits, and returns
/// where the backing must go: the window, narrowed to CMA areas and carveouts when a
/// segment must be longer than the page allocator's largest block.
fn check_memory(
    platform: &Platform,
    effs: &[Effective],
    req: &Requirements,
    placement: Window,
    size: Size,
) -> Result<Window, Failure> {
    let ram = platform.memory.ram();
    if placement.is_empty() {
        return fail(ConflictKind::NoCommonMemory, window_items(effs, &ram));
    }
    let max_segments = req.max_segments.value.map(NonZeroU32::get);
    if let (Some(n), Some(cap)) = (max_segments, req.segment_cap())
        && u128::from(n) * u128::from(cap) < u128::from(size.bytes())
    {
        return fail(
            ConflictKind::SegmentLimit { size, max_segments: n, segment_cap: Size::new(cap) },
            segment_items(effs),
        );
    }
    let Some(n) = max_segments else {
        let total = placement.total();
        if total < size {
            return fail(
                ConflictKind::NoRoom { within: placement, needed: size, contiguous: false, available: total },
                window_items(effs, &ram),
            );
        }
        return Ok(placement);
    };
    // The longest run needed: with n segments, at least one is size / n long.
    let run = Size::new(size.bytes().div_ceil(u64::from(n))).align_up(PageSize::SZ_4K).map_err(InvalidRequest::from)?;
    let max_block = platform.memory.max_buddy_block;
    let pool = if run > max_block.size() {
        placement.intersect(&platform.memory.large_contiguous())
    } else {
        placement.clone()
    };
    let items = || {
        let mut items = window_items(effs, &ram);
        items.extend(segment_items(effs));
        items
    };
    if pool.is_empty() {
        return fail(
            ConflictKind::NoContiguousPool { within: placement, needed: run, max_block: max_block.size() },
            items(),
        );
    }
    let align = if n == 1 { req.alignment.value } else { PageSize::SZ_4K };
    if pool.first_fit(run, align).is_none() || pool.total() < size {
        let available = if n == 1 { pool.largest().map_or(Size::ZERO, |r| r.len()) } else { pool.total() };
        return fail(
            ConflictKind::NoRoom { within: pool, needed: if n == 1 { size } else { run }, contiguous: true, available },
            items(),
        );
    }
    Ok(pool)
}

fn preferences(effs: &[Effective], req: &Requirements, size: Size) -> Preferences {
    let mmus = || effs.iter().enumerate().filter_map(|(i, e)| e.iommu.as_ref().map(|m| (i, m.pgsize_bitmap)));
    let union = mmus().fold(PageSizes::EMPTY, |acc, (_, p)| acc.union(p));
    let granule = req.granule.value;
    let chunk_sizes: Vec<ChunkPref> = union
        .iter_desc()
        .filter(|p| *p >= granule && p.get() <= size.bytes())
        .map(|p| ChunkPref {
            size: p,
            devices: mmus()
                .filter(|(_, bm)| bm.contains(p))
                .fold(DeviceSet::EMPTY, |s, (i, _)| s.union(DeviceSet::one(i))),
        })
        .collect();
    let alignment = chunk_sizes.first().map_or(req.alignment.value, |c| c.size.max(req.alignment.value));
    let min_chunk =
        req.max_segments.value.filter(|n| n.get() > 1).map(|n| Size::new(size.bytes().div_ceil(u64::from(n.get()))));
    let chunks = ideal_chunks(req, &chunk_sizes, size);
    let entries = mmus()
        .filter_map(|(i, bm)| {
            let mut ptes = PteCounts::default();
            for &(offset, len, count) in &chunks {
                let one = iommu::map_entries(bm, offset, offset, len)?;
                for (p, n) in one.by_size {
                    ptes.add(p, n * count);
                }
            }
            Some(DeviceEntries { device: i, ptes })
        })
        .collect();
    Preferences { chunk_sizes, alignment, min_chunk, entries }
}

/// The chunking the preferences aim for, as `(offset, len, count)` runs of equal chunks:
/// one run when contiguous, else the largest preferred chunks first, each naturally
/// aligned (a chunk's entries do not depend on which of the equal chunks it is).
fn ideal_chunks(req: &Requirements, prefs: &[ChunkPref], size: Size) -> Vec<(u64, u64, u64)> {
    if req.contiguous() || prefs.is_empty() {
        return vec![(0, size.bytes(), 1)];
    }
    let mut out = Vec::with_capacity(prefs.len() + 1);
    let mut offset = 0u64;
    let mut left = size.bytes();
    for c in prefs {
        let n = left / c.size.get();
        if n > 0 {
            out.push((offset, c.size.get(), n));
            offset += n * c.size.get();
            left -= n * c.size.get();
        }
    }
    if left > 0 {
        out.push((offset, left, 1));
    }
    out
}

/// Per-device layout alignments merged by least common multiple.
fn layout_req(
    effs: &[Effective],
    pick: impl Fn(&Effective) -> u32,
    name: &'static str,
) -> Result<Req<u32>, InvalidRequest> {
    let mut value = 1u64;
    let mut causes = DeviceSet::EMPTY;
    for (i, e) in effs.iter().enumerate() {
        let v = pick(e);
        if v > 1 {
            value = layout::lcm("alignment", value, name, v.into())?;
            causes = causes.union(DeviceSet::one(i));
        }
    }
    let value = u32::try_from(value).map_err(|_| UnitError::Overflow {
        lhs_name: name,
        lhs: value,
        op: "as",
        rhs_name: "u32::MAX",
        rhs: u32::MAX.into(),
    })?;
    Ok(Req { value, causes })
}

fn plan_layout(
    platform: &Platform,
    requests: &[Request<'_>],
    effs: &[Effective],
    img: &ImageDesc,
) -> Result<LayoutPlan, Failure> {
    let fmt_name = layout::fourcc_name(img.format);
    let missing: Vec<ConflictItem> = requests
        .iter()
        .filter(|r| r.device.layout.modifiers_for(img.format).is_none())
        .map(|r| {
            let list: Vec<String> = r.device.layout.formats.iter().map(|f| layout::fourcc_name(f.fourcc)).collect();
            item(&r.device.name, "formats", list.join(" "), "layout.formats")
        })
        .collect();
    if !missing.is_empty() {
        return fail(ConflictKind::Format { format: fmt_name }, missing);
    }
    let candidates = modifier_candidates(platform, requests, img);
    if candidates.is_empty() {
        let items = requests
            .iter()
            .map(|r| {
                let linear_only = r.hints.contains(Usage::LINEAR);
                let mods: &[u64] = if linear_only {
                    &[MOD_LINEAR]
                } else {
                    r.device.layout.modifiers_for(img.format).unwrap_or_default()
                };
                let names: Vec<String> = mods.iter().map(|m| platform.modifier_name(*m)).collect();
                item(
                    &r.device.name,
                    "modifiers",
                    names.join(" "),
                    if linear_only { "LINEAR hint" } else { "layout.formats" },
                )
            })
            .collect();
        return fail(ConflictKind::Modifiers { format: fmt_name }, items);
    }
    check_dimension(effs, "width", img.width.into(), |e| e.layout.max_width)?;
    check_dimension(effs, "height", img.height.into(), |e| e.layout.max_height)?;
    let pitch_align = layout_req(effs, |e| e.layout.pitch_align, "pitch_align")?;
    let offset_align = layout_req(effs, |e| e.layout.offset_align, "offset_align")?;
    let height_align = layout_req(effs, |e| e.layout.height_align, "height_align")?;
    let size_align = layout_req(effs, |e| e.layout.size_align, "size_align")?;
    let align = LayoutAlign {
        pitch: pitch_align.value,
        offset: offset_align.value,
        height: height_align.value,
        size: size_align.value,
    };
    let mut last_err = None;
    for m in &candidates {
        let Some(info) = platform.modifier_info(*m) else { continue };
        let l = layout::compute(img.format, info, img.width, img.height, align).map_err(InvalidRequest::from)?;
        let widest = l.planes.iter().map(|p| p.pitch).max().unwrap_or(0);
        match check_dimension(effs, "pitch", widest.into(), |e| e.layout.max_pitch) {
            Ok(()) => {
                return Ok(LayoutPlan { layout: l, candidates, pitch_align, offset_align, height_align, size_align });
            }
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => {
            let names: Vec<String> = candidates.iter().map(|m| platform.modifier_name(*m)).collect();
            Err(InvalidRequest::Layout(LayoutError::UnknownFormat(
                format!("{fmt_name} with modifiers {}", names.join(" ")),
                "(no tile geometry known for these modifiers: describe them in a [[modifier]] table)".into(),
            ))
            .into())
        }
    }
}

fn check_dimension(
    effs: &[Effective],
    what: &str,
    value: u64,
    max: impl Fn(&Effective) -> Option<u32>,
) -> Result<(), Failure> {
    let worst = effs
        .iter()
        .filter_map(|e| max(e).map(|m| (e, u64::from(m))))
        .filter(|(_, m)| value > *m)
        .min_by_key(|(_, m)| *m);
    match worst {
        None => Ok(()),
        Some((e, m)) => fail(
            ConflictKind::Dimension { what: what.into(), value, max: m },
            vec![item(&e.device, &format!("max_{what}"), m.to_string(), format!("layout.max_{what}"))],
        ),
    }
}

/// Modifiers every device accepts for the format, most preferred first: the platform's
/// order, then the rest by value, LINEAR last unless the platform ranks it.
fn modifier_candidates(platform: &Platform, requests: &[Request<'_>], img: &ImageDesc) -> Vec<u64> {
    let first = requests.first().and_then(|r| r.device.layout.modifiers_for(img.format)).unwrap_or_default();
    let mut common: Vec<u64> = if img.modifiers.is_empty() { first.to_vec() } else { img.modifiers.clone() };
    for r in requests {
        let mods = r.device.layout.modifiers_for(img.format).unwrap_or_default();
        let linear_only = r.hints.contains(Usage::LINEAR);
        common.retain(|m| mods.contains(m) && (!linear_only || *m == MOD_LINEAR));
    }
    common.sort_unstable();
    common.dedup();
    let rank = |m: &u64| match platform.modifier_preference.iter().position(|p| p == m) {
        Some(i) => (0, i, *m),
        None if *m == MOD_LINEAR => (2, 0, *m),
        None => (1, 0, *m),
    };
    common.sort_by_key(rank);
    common
}

/// Finds a minimal conflicting subset by deletion and explains its failure.
fn explain(platform: &Platform, desc: &BufferDesc, requests: &[Request<'_>]) -> SolveError {
    let mut keep: Vec<usize> = (0..requests.len()).collect();
    let subset = |idx: &[usize]| -> Vec<Request<'_>> { idx.iter().map(|&i| requests[i]).collect() };
    let mut i = 0;
    while i < keep.len() {
        let mut without = keep.clone();
        without.remove(i);
        if !without.is_empty() && matches!(attempt(platform, desc, &subset(&without)), Err(Failure::Conflict(_))) {
            keep = without;
        } else {
            i += 1;
        }
    }
    let minimal = subset(&keep);
    match attempt(platform, desc, &minimal) {
        Err(Failure::Conflict(f)) => SolveError::Conflict(Box::new(conflict(platform, desc, &minimal, f))),
        Err(Failure::Invalid(e)) => SolveError::Invalid(e),
        Ok(_) => unreachable!("a subset that failed before fails again: the solver is deterministic"),
    }
}

fn conflict(platform: &Platform, desc: &BufferDesc, minimal: &[Request<'_>], f: Fail) -> Conflict {
    let devices: Vec<String> = minimal.iter().map(|r| r.device.name.clone()).collect();
    let hints: Vec<Usage> = minimal.iter().map(|r| r.hints).collect();
    let effs: Vec<Effective> = minimal.iter().map(|r| Effective::new(platform, r.device, r.hints)).collect();
    let message = crate::explain::message(platform, desc, &effs, &f.kind, &f.items);
    Conflict { platform: platform.name.clone(), devices, hints, kind: f.kind, items: f.items, message }
}
