//! The solver: merges every requesting device's constraints into one [`Plan`], or
//! explains the [`Conflict`] naming a minimal set of devices.
//!
//! # What an answer means
//!
//! - **A Plan means a placement exists.** [`solve`] returns a plan only when a backing
//!   exists on the platform's empty machine that satisfies every device: the memory model
//!   of [`crate::memory`] (sources, page-allocator blocks, one source per run, granule,
//!   alignment, the stacked segment limits of [`crate::requirements`]) and the IOVA model
//!   of [`crate::iommu`] (the first granule kept back, mappings aligned to the largest
//!   page that fits). [`Plan::witness`] builds such a backing; [`crate::verify`] accepts
//!   it for every device.
//! - **A Conflict means no plan exists.** Layout and placement are decided together: the
//!   solver tries every layout the devices all accept, in preference order (the modifiers;
//!   an image leaves no other layout freedom: pitches, offsets and padding are the smallest
//!   every device accepts, and larger ones are never easier to place), and returns the
//!   first that can also be placed. When none can, the [`Conflict`] keeps one entry per
//!   candidate, the preferred one first, and its message says why each failed. Within that
//!   model the search is complete: a conflict means no layout and no backing exist.
//! - **The reported conflict is canonical.** The devices are ordered by the platform's
//!   device order (then hints), and devices are dropped from the last while the rest
//!   still conflict, repeated until every remaining one is needed. The set reported is
//!   minimal, reaches as little far into the platform's device order as this allows
//!   (where several minimal sets exist, the devices late in the platform's list are
//!   dropped first), is listed in platform order, and is the same whatever the order of
//!   the request.
//!
//! The first candidate that can be placed is found without trying the others, so the
//! common case (the preferred layout fits) costs one pass.

use std::fmt;
use std::num::NonZeroU32;

use drm_fourcc::DrmFourcc;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::Usage;
use crate::effective::Effective;
use crate::iommu::{self, PteCounts};
use crate::layout::{self, Layout, LayoutAlign, LayoutError, MOD_LINEAR};
use crate::memory::{self, Limits, SourceKind, Sources};
use crate::model::{CacheMode, Device};
use crate::platform::Platform;
use crate::requirements::{DeviceSet, Field, MAX_DEVICES, Req, Requirements};
use crate::units::{BoundaryMask, PageSize, PageSizes, Size, UnitError};
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

/// A layout candidate that was preferred to the chosen one but could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Its modifier.
    pub modifier: u64,
    /// The modifier's name on the platform.
    pub modifier_name: String,
    /// The buffer size it needs.
    pub size: Size,
    /// What failed.
    pub kind: ConflictKind,
    /// Why, in words.
    pub reason: String,
}

/// The layout part of a plan, with who caused each alignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutPlan {
    /// The chosen layout.
    pub layout: Layout,
    /// Modifiers every device accepts, in preference order.
    pub candidates: Vec<u64>,
    /// The candidates preferred to the chosen one, each with why it could not be placed.
    pub rejected: Vec<Rejected>,
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
    /// Where the backing may go: the usable sources inside the devices' window (narrowed
    /// to CMA areas and carveouts when one run must be longer than the page allocator's
    /// largest block).
    pub placement: Window,
    /// The same, source by source: a run never spans two of them.
    pub sources: Sources,
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

    /// A backing that meets this plan on the platform's empty machine, built by the rules
    /// of [`crate::memory`] from [`Plan::sources`]: what makes the plan true. `None` would
    /// be a solver bug (the property tests check that it never happens).
    pub fn witness(&self, platform: &Platform) -> Option<crate::Backing> {
        let lim = limits(&self.requirements, self.size, platform.memory.max_buddy_block);
        let segments = memory::build(&self.sources, &lim)?;
        Some(crate::Backing {
            segments,
            cache_mode: self.cache_mode.value,
            protected: self.requirements.protected.value,
        })
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
        /// The segment limit (stacked), if any.
        max_segments: Option<u32>,
        /// What fits: the longest run (contiguous), the most `max_segments` segments hold,
        /// or all the usable memory (no segment limit).
        available: Size,
        /// The longest run that starts on the buffer's alignment.
        longest: Size,
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
    /// A device's `max_segment_size` is below one page: no sg table of pages can meet it
    /// (`lib/scatterlist.c` refuses it).
    SegmentSize {
        /// The limit, rounded down to whole pages (0).
        max_segment_size: Size,
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
        /// IOVA space (the aperture below `2^min(iova_bits, dma_mask)`).
        space: Size,
        /// The start of the space that is kept back (IOVA 0 up to the first granule).
        reserved: Size,
        /// The alignment of a mapping of this size (the largest page that fits).
        alignment: Size,
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

/// Why one layout candidate could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateConflict {
    /// The candidate's modifier.
    pub modifier: u64,
    /// Its name on the platform.
    pub modifier_name: String,
    /// The buffer size its layout needs.
    pub size: Size,
    /// What failed.
    #[serde(flatten)]
    pub kind: ConflictKind,
    /// Each device's constraint in the failure.
    pub items: Vec<ConflictItem>,
    /// In words.
    pub message: String,
}

/// An unsatisfiable request, explained. `devices` is a minimal conflicting set: together
/// they cannot be satisfied, and without any one of them the rest can. It is found by
/// dropping devices from the last in the platform's device order (see the module docs),
/// and listed in that order.
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
    /// For an image: one entry per layout candidate, the preferred first (`kind` and
    /// `items` above are the preferred one's). Empty for a raw buffer or when the failure
    /// does not depend on the layout.
    pub candidates: Vec<CandidateConflict>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Merges the requests into a plan, or explains why no backing can satisfy them all.
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

/// Why one attempt failed, before minimising.
#[derive(Debug)]
enum Failure {
    Invalid(InvalidRequest),
    /// One entry per layout candidate tried (one, without a candidate, when the failure
    /// does not depend on the layout).
    Conflict(Vec<Tried>),
}

/// The failing constraint and its culprits.
#[derive(Debug)]
struct Fail {
    kind: ConflictKind,
    items: Vec<ConflictItem>,
}

/// A layout candidate that failed.
#[derive(Debug)]
struct Tried {
    /// The modifier and the size its layout needs; `None` for a failure before layouts.
    candidate: Option<(u64, Size)>,
    fail: Fail,
}

impl From<InvalidRequest> for Failure {
    fn from(e: InvalidRequest) -> Self {
        Failure::Invalid(e)
    }
}

impl From<Fail> for Failure {
    fn from(fail: Fail) -> Self {
        Failure::Conflict(vec![Tried { candidate: None, fail }])
    }
}

fn fail<T>(kind: ConflictKind, items: Vec<ConflictItem>) -> Result<T, Fail> {
    Err(Fail { kind, items })
}

fn item(device: &str, constraint: &str, value: impl Into<String>, why: impl Into<String>) -> ConflictItem {
    ConflictItem { device: device.to_owned(), constraint: constraint.to_owned(), value: value.into(), why: why.into() }
}

/// What does not depend on the layout: every device's constraints, their meet, the cache
/// mode, and the memory the buffer may come from.
struct Common<'p> {
    platform: &'p Platform,
    effs: Vec<Effective>,
    req: Requirements,
    cache_mode: Req<CacheMode>,
    /// The usable sources inside the devices' window.
    usable: Sources,
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
    let usable = usable_sources(platform, requests, &req);
    let common = Common { platform, effs, req, cache_mode, usable };
    match desc {
        BufferDesc::Size(s) => {
            let size = common.rounded(*s)?;
            let (placement, sources) = place(&common, size)?;
            Ok(common.plan(size, placement, sources, None))
        }
        BufferDesc::Image(img) => {
            let (size, placement, sources, lp) = place_image(&common, requests, img)?;
            Ok(common.plan(size, placement, sources, Some(lp)))
        }
    }
}

impl Common<'_> {
    /// `raw` bytes rounded up to whole granules.
    fn rounded(&self, raw: Size) -> Result<Size, InvalidRequest> {
        Ok(raw.align_up(self.req.granule.value.max(PageSize::SZ_4K))?)
    }

    fn plan(self, size: Size, placement: Window, sources: Sources, layout: Option<LayoutPlan>) -> Plan {
        let preferences = preferences(&self.effs, &self.req, size);
        Plan {
            platform: self.platform.name.clone(),
            size,
            requirements: self.req,
            placement,
            sources,
            cache_mode: self.cache_mode,
            preferences,
            layout,
            devices: self.effs,
        }
    }
}

/// The sources of the empty machine the buffer may use, clipped to the devices' window:
/// carveouts only when a device (or a rule for it) names them, protected carveouts only
/// (and always) for a protected buffer.
fn usable_sources(platform: &Platform, requests: &[Request<'_>], req: &Requirements) -> Sources {
    let named = |name: &str| {
        requests.iter().any(|r| {
            r.device.placement.regions.iter().any(|n| n == name)
                || platform
                    .rules
                    .iter()
                    .any(|rule| rule.applies(&r.device.name, r.hints) && rule.regions.iter().any(|n| n == name))
        })
    };
    let protected = req.protected.value;
    match &req.pool.value {
        Some(pool) => memory::usable(&platform.memory, protected, &named, &req.window.value.intersect(pool)),
        None => memory::usable(&platform.memory, protected, &named, &req.window.value),
    }
}

/// Places one buffer of `size` bytes: the IOVA spaces, then the memory.
fn place(c: &Common<'_>, size: Size) -> Result<(Window, Sources), Fail> {
    check_iova_space(&c.effs, size)?;
    check_memory(c, size)
}

/// Tries each layout every device accepts, most preferred first, and returns the plan of
/// the first that can be placed.
fn place_image(
    c: &Common<'_>,
    requests: &[Request<'_>],
    img: &ImageDesc,
) -> Result<(Size, Window, Sources, LayoutPlan), Failure> {
    let mut shape = layout_shape(c.platform, requests, &c.effs, img)?;
    let mut tried: Vec<Tried> = Vec::new();
    for i in 0..shape.candidates.len() {
        let m = shape.candidates[i];
        let Some(info) = c.platform.modifier_info(m) else { continue };
        let l = layout::compute(img.format, info, img.width, img.height, shape.align).map_err(InvalidRequest::from)?;
        let size = c.rounded(Size::new(l.size))?;
        let widest = l.planes.iter().map(|p| p.pitch).max().unwrap_or(0);
        let placed =
            check_dimension(&c.effs, "pitch", widest.into(), |e| e.layout.max_pitch).and_then(|()| place(c, size));
        match placed {
            Ok((placement, sources)) => {
                let rejected = tried.iter().filter_map(|t| rejected(c, img, t)).collect();
                let lp = LayoutPlan {
                    layout: l,
                    candidates: std::mem::take(&mut shape.candidates),
                    rejected,
                    pitch_align: shape.pitch_align,
                    offset_align: shape.offset_align,
                    height_align: shape.height_align,
                    size_align: shape.size_align,
                };
                return Ok((size, placement, sources, lp));
            }
            Err(fail) => tried.push(Tried { candidate: Some((m, size)), fail }),
        }
    }
    if tried.is_empty() {
        let names: Vec<String> = shape.candidates.iter().map(|m| c.platform.modifier_name(*m)).collect();
        return Err(InvalidRequest::Layout(LayoutError::UnknownFormat(
            format!("{} with modifiers {}", layout::fourcc_name(img.format), names.join(" ")),
            "(no tile geometry known for these modifiers: describe them in a [[modifier]] table)".into(),
        ))
        .into());
    }
    Err(Failure::Conflict(tried))
}

fn rejected(c: &Common<'_>, img: &ImageDesc, t: &Tried) -> Option<Rejected> {
    let (modifier, size) = t.candidate?;
    let desc = BufferDesc::Image(img.clone());
    Some(Rejected {
        modifier,
        modifier_name: c.platform.modifier_name(modifier),
        size,
        kind: t.fail.kind.clone(),
        reason: crate::explain::message(c.platform, &desc, &c.effs, &t.fail.kind, &t.fail.items),
    })
}

fn check_protection(effs: &[Effective], req: &Requirements) -> Result<(), Fail> {
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

fn choose_cache_mode(platform: &Platform, effs: &[Effective], req: &Requirements) -> Result<Req<CacheMode>, Fail> {
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

/// Every device behind an IOMMU must be able to map the buffer into its empty domain
/// ([`iommu::iova_fits`], the model the simulator's IOVA allocator follows).
fn check_iova_space(effs: &[Effective], size: Size) -> Result<(), Fail> {
    for e in effs {
        let (Some(bits), Some(mmu)) = (e.iova_space, &e.iommu) else { continue };
        let pgs = mmu.pgsize_bitmap;
        if !iommu::iova_fits(pgs, bits, size.bytes()) {
            let (start, end) = iommu::iova_window(pgs, bits);
            let space = if bits.bits() >= 64 { Size::new(u64::MAX) } else { Size::new(end) };
            return fail(
                ConflictKind::IovaSpace {
                    size,
                    space,
                    reserved: Size::new(start),
                    alignment: Size::new(iommu::iova_align(pgs, size.bytes())),
                },
                vec![item(
                    &e.device,
                    "iova_bits",
                    bits.to_string(),
                    format!("IOMMU {} aperture and dma_mask", mmu.name),
                )],
            );
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
        let counted = e.max_segments.value.is_some();
        if let Some(n) = e.max_segments.value {
            items.push(item(&e.device, "max_segments", n.to_string(), e.max_segments.why.to_string()));
        }
        if let Some(s) = e.max_segment_size.value
            && (counted || s.is_zero())
        {
            items.push(item(&e.device, "max_segment_size", s.to_string(), e.max_segment_size.why.to_string()));
        }
        if counted && e.segment_boundary.value != BoundaryMask::NONE {
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

/// The segment rules for a buffer of `size` bytes under `req` ([`memory::Limits`]).
pub(crate) fn limits(req: &Requirements, size: Size, max_block: PageSize) -> Limits {
    Limits {
        size: size.bytes(),
        max_segments: req.max_segments.value.map(NonZeroU32::get),
        segment_len: req.max_segment_size.value.map(Size::bytes),
        boundary: req.segment_boundary.value.get().checked_add(1),
        alignment: req.alignment.value.max(req.granule.value).get(),
        granule: req.granule.value.max(PageSize::SZ_4K).get(),
        max_block: max_block.get(),
    }
}

/// Checks that the usable memory can hold the buffer under the segment limits, and
/// returns where the backing may go: the usable sources, only CMA areas and carveouts
/// when one run must be longer than the page allocator's largest block.
fn check_memory(c: &Common<'_>, size: Size) -> Result<(Window, Sources), Fail> {
    let (platform, effs, req) = (c.platform, &c.effs, &c.req);
    if c.usable.is_empty() {
        return fail(ConflictKind::NoCommonMemory, window_items(effs, &platform.memory.ram()));
    }
    let items = || {
        let mut items = window_items(effs, &platform.memory.ram());
        items.extend(segment_items(effs));
        items
    };
    if let Some(s) = req.max_segment_size.value
        && s.is_zero()
    {
        return fail(ConflictKind::SegmentSize { max_segment_size: s }, segment_items(effs));
    }
    let lim = limits(req, size, platform.memory.max_buddy_block);
    let max_segments = lim.max_segments;
    if let (Some(n), Some(cap)) = (max_segments, req.segment_cap()) {
        let cap = cap - cap % lim.granule;
        if u128::from(n) * u128::from(cap) < u128::from(size.bytes()) {
            return fail(
                ConflictKind::SegmentLimit { size, max_segments: n, segment_cap: Size::new(cap) },
                segment_items(effs),
            );
        }
    }
    let max_block = platform.memory.max_buddy_block.size();
    let contiguous = max_segments == Some(1);
    let sources: Sources = if contiguous && size > max_block {
        c.usable.iter().filter(|s| s.kind != SourceKind::PageAllocator).copied().collect()
    } else {
        c.usable.clone()
    };
    if sources.is_empty() {
        let within = Window::from_ranges(c.usable.iter().map(|s| s.range));
        return fail(ConflictKind::NoContiguousPool { within, needed: size, max_block }, items());
    }
    let capacity = memory::capacity(&sources, &lim);
    if !capacity.fits(size.bytes()) {
        let within = Window::from_ranges(sources.iter().map(|s| s.range));
        let holds = Size::new(u64::try_from(capacity.holds).unwrap_or(u64::MAX));
        let longest = Size::new(capacity.longest);
        return fail(
            ConflictKind::NoRoom {
                within,
                needed: size,
                contiguous,
                max_segments,
                available: if contiguous { longest } else { holds },
                longest,
            },
            items(),
        );
    }
    Ok((Window::from_sorted(sources.iter().map(|s| s.range)), sources))
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
fn ideal_chunks(req: &Requirements, prefs: &[ChunkPref], size: Size) -> SmallVec<[(u64, u64, u64); 4]> {
    let mut out = SmallVec::new();
    if req.contiguous() || prefs.is_empty() {
        out.push((0, size.bytes(), 1));
        return out;
    }
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

/// What every layout candidate shares: the candidates, in preference order, and the
/// merged alignments.
struct Shape {
    candidates: Vec<u64>,
    align: LayoutAlign,
    pitch_align: Req<u32>,
    offset_align: Req<u32>,
    height_align: Req<u32>,
    size_align: Req<u32>,
}

fn layout_shape(
    platform: &Platform,
    requests: &[Request<'_>],
    effs: &[Effective],
    img: &ImageDesc,
) -> Result<Shape, Failure> {
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
        return Err(Fail { kind: ConflictKind::Format { format: fmt_name }, items: missing }.into());
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
        return Err(Fail { kind: ConflictKind::Modifiers { format: fmt_name }, items }.into());
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
    Ok(Shape { candidates, align, pitch_align, offset_align, height_align, size_align })
}

fn check_dimension(
    effs: &[Effective],
    what: &str,
    value: u64,
    max: impl Fn(&Effective) -> Option<u32>,
) -> Result<(), Fail> {
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

/// The requests in canonical order: the platform's device order, then hints (then the
/// request order, which only separates identical requests).
fn canonical_order(platform: &Platform, requests: &[Request<'_>]) -> Vec<usize> {
    let rank = |r: &Request<'_>| platform.devices.iter().position(|d| d.name == r.device.name).unwrap_or(usize::MAX);
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&requests[a], &requests[b]);
        (rank(ra), &ra.device.name, ra.hints.bits(), a).cmp(&(rank(rb), &rb.device.name, rb.hints.bits(), b))
    });
    order
}

/// Finds the canonical minimal conflicting subset and explains its failure: in canonical
/// order, drop devices from the last while the rest still conflict, and repeat until a
/// pass drops nothing (so every device left is needed, even where naming a carveout or
/// asking for protection makes a larger set solvable than a smaller one).
fn explain(platform: &Platform, desc: &BufferDesc, requests: &[Request<'_>]) -> SolveError {
    let subset = |idx: &[usize]| -> Vec<Request<'_>> { idx.iter().map(|&i| requests[i]).collect() };
    let conflicts = |idx: &[usize]| matches!(attempt(platform, desc, &subset(idx)), Err(Failure::Conflict(_)));
    let mut keep = canonical_order(platform, requests);
    loop {
        let mut dropped = false;
        for i in (0..keep.len()).rev() {
            if keep.len() == 1 {
                break;
            }
            let mut without = keep.clone();
            without.remove(i);
            if conflicts(&without) {
                keep = without;
                dropped = true;
            }
        }
        if !dropped {
            break;
        }
    }
    let minimal = subset(&keep);
    match attempt(platform, desc, &minimal) {
        Err(Failure::Conflict(tried)) => SolveError::Conflict(Box::new(conflict(platform, desc, &minimal, tried))),
        Err(Failure::Invalid(e)) => SolveError::Invalid(e),
        Ok(_) => unreachable!("a subset that failed before fails again: the solver is deterministic"),
    }
}

fn conflict(platform: &Platform, desc: &BufferDesc, minimal: &[Request<'_>], tried: Vec<Tried>) -> Conflict {
    let devices: Vec<String> = minimal.iter().map(|r| r.device.name.clone()).collect();
    let hints: Vec<Usage> = minimal.iter().map(|r| r.hints).collect();
    let effs: Vec<Effective> = minimal.iter().map(|r| Effective::new(platform, r.device, r.hints)).collect();
    let mut candidates: Vec<CandidateConflict> = tried
        .iter()
        .filter_map(|t| {
            let (modifier, size) = t.candidate?;
            Some(CandidateConflict {
                modifier,
                modifier_name: platform.modifier_name(modifier),
                size,
                kind: t.fail.kind.clone(),
                items: t.fail.items.clone(),
                message: crate::explain::message(platform, desc, &effs, &t.fail.kind, &t.fail.items),
            })
        })
        .collect();
    let first = tried.into_iter().next().expect("a failure has at least one entry").fail;
    let message = match candidates.as_slice() {
        [] | [_] => crate::explain::message(platform, desc, &effs, &first.kind, &first.items),
        _ => crate::explain::candidates(desc, &candidates),
    };
    if candidates.len() == 1 {
        candidates.clear();
    }
    Conflict {
        platform: platform.name.clone(),
        devices,
        hints,
        kind: first.kind,
        items: first.items,
        message,
        candidates,
    }
}
