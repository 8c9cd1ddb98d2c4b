//! A device's constraints for one buffer: its own placement, tightened by what the
//! platform says its usage hints mean. Every value carries the reason it has, as a small
//! typed [`Why`] that is rendered to words only when someone reads it.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::Usage;
use crate::model::{CacheModes, Device, DeviceClass, Iommu, LayoutCaps};
use crate::platform::{HintRule, Platform};
use crate::units::{BoundaryMask, DmaMask, PageSize, Size};
use crate::window::Window;

/// Why a device has a constraint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    /// Its `dma_mask`.
    DmaMask(DmaMask),
    /// Its `bus_dma_limit` (inclusive).
    BusDmaLimit(u64),
    /// What its IOMMU reaches (`None`: any address).
    IommuReach(Option<DmaMask>),
    /// Its `regions` list.
    Regions(Arc<[String]>),
    /// No region restriction.
    AnyMemory,
    /// Its `max_segments`.
    MaxSegments(Option<NonZeroU32>),
    /// Its `max_segment_size`.
    MaxSegmentSize(Option<Size>),
    /// Its `max_segment_size`, which is not a whole number of pages: rounded down, as
    /// `sg_alloc_append_table_from_pages()` (`lib/scatterlist.c`) rounds it.
    MaxSegmentSizeRounded(Size),
    /// Its `segment_boundary_mask`.
    Boundary(BoundaryMask),
    /// Its `alignment`.
    Alignment(PageSize),
    /// Behind an IOMMU segment limits bind IOVAs, not pages.
    IommuMerges,
    /// The IOMMU's smallest page.
    IommuGranule(PageSize),
    /// 4 KiB base pages.
    BasePages,
    /// Its `cache_modes`.
    CacheModes(CacheModes),
    /// Nothing asks for protection.
    Unprotected,
    /// The device only works on protected memory.
    ProtectedDevice,
    /// The PROTECTED hint.
    ProtectedHint,
    /// A platform rule for these hints.
    Rule(Usage, Arc<str>),
    /// A layout capability (`pitch_align = 64`).
    Layout(&'static str, u32),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::DmaMask(m) => write!(f, "dma_mask = {m}"),
            Why::BusDmaLimit(l) => write!(f, "bus_dma_limit = {l:#x}"),
            Why::IommuReach(Some(bits)) => write!(f, "its IOMMU reaches {bits} physical addresses"),
            Why::IommuReach(None) => f.write_str("behind an IOMMU, which reaches any address"),
            Why::Regions(r) => write!(f, "regions = [{}]", r.join(", ")),
            Why::AnyMemory => f.write_str("any memory"),
            Why::MaxSegments(Some(n)) => write!(f, "max_segments = {n}"),
            Why::MaxSegments(None) => f.write_str("no max_segments limit"),
            Why::MaxSegmentSize(Some(s)) => write!(f, "max_segment_size = {s}"),
            Why::MaxSegmentSize(None) => f.write_str("no max_segment_size limit"),
            Why::MaxSegmentSizeRounded(raw) => {
                write!(f, "max_segment_size = {raw}, rounded down to whole pages as lib/scatterlist.c does")
            }
            Why::Boundary(b) => write!(f, "segment_boundary_mask = {b}"),
            Why::Alignment(a) => write!(f, "alignment = {a}"),
            Why::IommuMerges => f.write_str("its IOMMU maps any number of pages as one range"),
            Why::IommuGranule(g) => write!(f, "its IOMMU maps {g} pages at the smallest"),
            Why::BasePages => f.write_str("4 KiB pages"),
            Why::CacheModes(c) => write!(f, "cache_modes = {c}"),
            Why::Unprotected => f.write_str("no protection needed"),
            Why::ProtectedDevice => f.write_str("the device only works on protected memory"),
            Why::ProtectedHint => f.write_str("PROTECTED hint: protected carveouts only"),
            Why::Rule(hints, reason) => write!(f, "{hints} hint: {reason}"),
            Why::Layout(name, v) => write!(f, "{name} = {v}"),
        }
    }
}

impl Serialize for Why {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A value and the reason it holds for this device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Why.
    pub why: Why,
}

impl<T> Sourced<T> {
    const fn new(value: T, why: Why) -> Self {
        Sourced { value, why }
    }
}

/// The layout numbers of a device (its formats stay on the [`Device`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutLimits {
    /// `pitch_align`.
    pub pitch_align: u32,
    /// `offset_align`.
    pub offset_align: u32,
    /// `height_align`.
    pub height_align: u32,
    /// `size_align`.
    pub size_align: u32,
    /// `max_width`.
    pub max_width: Option<u32>,
    /// `max_height`.
    pub max_height: Option<u32>,
    /// `max_pitch`.
    pub max_pitch: Option<u32>,
}

impl From<&LayoutCaps> for LayoutLimits {
    fn from(l: &LayoutCaps) -> Self {
        LayoutLimits {
            pitch_align: l.pitch_align,
            offset_align: l.offset_align,
            height_align: l.height_align,
            size_align: l.size_align,
            max_width: l.max_width,
            max_height: l.max_height,
            max_pitch: l.max_pitch,
        }
    }
}

/// One device's constraints on one buffer, all in terms of **physical** placement.
///
/// Behind an IOMMU the device's own `dma_mask` and segment limits apply to IOVAs, so they
/// do not appear here; what remains is what the IOMMU can reach and its granule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// Device name.
    pub device: String,
    /// Device class.
    pub class: DeviceClass,
    /// The hints it was requested with.
    pub hints: Usage,
    /// Physical addresses its DMA can reach.
    pub reach: Sourced<Window>,
    /// Memory it is restricted to (named regions, protected carveouts), if any.
    pub pool: Sourced<Option<Window>>,
    /// The translating IOMMU, unless absent or bypassed for this use.
    pub iommu: Option<Iommu>,
    /// IOVA space behind the IOMMU: `min(iova_bits, dma_mask)`.
    pub iova_space: Option<DmaMask>,
    /// Physical segments at most; 1 means contiguous.
    pub max_segments: Sourced<Option<NonZeroU32>>,
    /// Physical segment length at most.
    pub max_segment_size: Sourced<Option<Size>>,
    /// Physical segments may not cross this boundary.
    pub segment_boundary: Sourced<BoundaryMask>,
    /// Alignment of the buffer's first byte.
    pub alignment: Sourced<PageSize>,
    /// Every segment's start and length are multiples of this.
    pub granule: Sourced<PageSize>,
    /// Usable cache modes.
    pub cache_modes: Sourced<CacheModes>,
    /// Whether it snoops CPU caches.
    pub coherent: bool,
    /// Whether it needs protected memory.
    pub protected: Sourced<bool>,
    /// Whether it can access protected memory.
    pub protected_access: bool,
    /// Layout alignments and limits.
    pub layout: LayoutLimits,
    /// Whether the layout must be LINEAR (the LINEAR hint).
    pub linear_only: bool,
}

impl Effective {
    /// The device's constraints when requested with `hints` on `platform`.
    pub fn new(platform: &Platform, device: &Device, hints: Usage) -> Effective {
        let mut e = Effective::from_device(platform, device, hints);
        for rule in platform.rules.iter().filter(|r| r.applies(&device.name, hints)) {
            e.apply(platform, device, rule);
        }
        if hints.contains(Usage::PROTECTED) {
            e.require_protected(platform, Why::ProtectedHint);
        }
        e.linear_only = hints.contains(Usage::LINEAR);
        e
    }

    /// "display `dss`".
    pub fn label(&self) -> String {
        format!("{} `{}`", self.class.word(), self.device)
    }

    fn from_device(platform: &Platform, d: &Device, hints: Usage) -> Effective {
        let p = &d.placement;
        let (reach, iova_space) = match &p.iommu {
            Some(mmu) => {
                let window = mmu.phys_bits.map_or_else(Window::everything, |bits| Window::below(bits.end()));
                (Sourced::new(window, Why::IommuReach(mmu.phys_bits)), Some(mmu.iova_bits.min(p.dma_mask)))
            }
            None => (physical_reach(p.dma_mask, p.bus_dma_limit), None),
        };
        let pool = match region_pool(platform, &p.regions) {
            Some(w) => Sourced::new(Some(w), Why::Regions(p.regions.clone().into())),
            None => Sourced::new(None, Why::AnyMemory),
        };
        let mut e = Effective {
            device: d.name.clone(),
            class: d.class,
            hints,
            reach,
            pool,
            iommu: p.iommu.clone(),
            iova_space,
            max_segments: Sourced::new(p.max_segments, Why::MaxSegments(p.max_segments)),
            max_segment_size: page_rounded(p.max_segment_size),
            segment_boundary: Sourced::new(p.segment_boundary_mask, Why::Boundary(p.segment_boundary_mask)),
            alignment: Sourced::new(p.alignment, Why::Alignment(p.alignment)),
            granule: Sourced::new(PageSize::SZ_4K, Why::BasePages),
            cache_modes: Sourced::new(p.cache_modes, Why::CacheModes(p.cache_modes)),
            coherent: p.coherent,
            protected: Sourced::new(false, Why::Unprotected),
            protected_access: p.protected_access,
            layout: LayoutLimits::from(&d.layout),
            linear_only: false,
        };
        if let Some(mmu) = &p.iommu {
            // Behind an IOMMU the device's segment limits and alignment bind IOVAs, which
            // the IOMMU lays out contiguously; the pages need only the IOMMU's granule.
            e.max_segments = Sourced::new(None, Why::IommuMerges);
            e.max_segment_size = Sourced::new(None, Why::IommuMerges);
            e.segment_boundary = Sourced::new(BoundaryMask::NONE, Why::IommuMerges);
            e.alignment = Sourced::new(mmu.granule(), Why::IommuGranule(mmu.granule()));
            e.granule = Sourced::new(mmu.granule(), Why::IommuGranule(mmu.granule()));
        }
        if p.protected {
            e.require_protected(platform, Why::ProtectedDevice);
        }
        e
    }

    fn require_protected(&mut self, platform: &Platform, why: Why) {
        self.protected = Sourced::new(true, why.clone());
        let protected = platform.memory.protected();
        let pool = match self.pool.value.take() {
            Some(w) => w.intersect(&protected),
            None => protected,
        };
        self.pool = Sourced::new(Some(pool), why);
    }

    fn apply(&mut self, platform: &Platform, device: &Device, rule: &HintRule) {
        let why = Why::Rule(rule.hints & self.hints, rule.reason.clone());
        if rule.bypass_iommu {
            let p = &device.placement;
            self.iommu = None;
            self.iova_space = None;
            self.reach = physical_reach(p.dma_mask, p.bus_dma_limit);
            self.max_segments = Sourced::new(p.max_segments, Why::MaxSegments(p.max_segments));
            self.max_segment_size = page_rounded(p.max_segment_size);
            self.segment_boundary = Sourced::new(p.segment_boundary_mask, Why::Boundary(p.segment_boundary_mask));
            self.granule = Sourced::new(PageSize::SZ_4K, Why::BasePages);
            self.alignment = Sourced::new(p.alignment, Why::Alignment(p.alignment));
        }
        let segments = if rule.contiguous { NonZeroU32::new(1) } else { rule.max_segments };
        if let Some(n) = segments
            && self.max_segments.value.is_none_or(|cur| n < cur)
        {
            self.max_segments = Sourced::new(Some(n), why.clone());
        }
        if let Some(bits) = rule.dma_bits {
            let narrowed = self.reach.value.intersect(&Window::below(bits.end()));
            if narrowed != self.reach.value {
                self.reach = Sourced::new(narrowed, why.clone());
            }
        }
        if let Some(w) = region_pool(platform, &rule.regions) {
            let pool = match self.pool.value.take() {
                Some(cur) => cur.intersect(&w),
                None => w,
            };
            self.pool = Sourced::new(Some(pool), why.clone());
        }
        if let Some(modes) = rule.cache_modes {
            self.cache_modes = Sourced::new(self.cache_modes.value & modes, why.clone());
        }
        if let Some(a) = rule.alignment
            && a > self.alignment.value
        {
            self.alignment = Sourced::new(a, why.clone());
        }
        if rule.protected {
            self.require_protected(platform, why);
        }
    }
}

/// A `max_segment_size` as the kernel applies it: rounded down to whole 4 KiB pages
/// (`sg_alloc_append_table_from_pages()` does `ALIGN_DOWN(max_segment, PAGE_SIZE)`). A
/// limit below one page rounds to 0: the device cannot map a page-backed buffer at all.
fn page_rounded(limit: Option<Size>) -> Sourced<Option<Size>> {
    match limit {
        Some(raw) if !raw.is_aligned(PageSize::SZ_4K) => {
            Sourced::new(Some(Size::new(raw.bytes() & !(PageSize::SZ_4K.get() - 1))), Why::MaxSegmentSizeRounded(raw))
        }
        _ => Sourced::new(limit, Why::MaxSegmentSize(limit)),
    }
}

fn physical_reach(mask: DmaMask, bus_dma_limit: Option<u64>) -> Sourced<Window> {
    match bus_dma_limit {
        Some(limit) if limit.saturating_add(1) < mask.end() => {
            Sourced::new(Window::below(limit.saturating_add(1)), Why::BusDmaLimit(limit))
        }
        _ => Sourced::new(Window::below(mask.end()), Why::DmaMask(mask)),
    }
}

fn region_pool(platform: &Platform, names: &[String]) -> Option<Window> {
    if names.is_empty() {
        return None;
    }
    Some(Window::from_ranges(names.iter().filter_map(|n| platform.memory.region(n)).map(|r| r.range)))
}
