//! The vocabulary a device uses to describe itself: usage hints, placement
//! constraints (the kernel side: where the pages go) and layout capabilities
//! (the userspace side: formats, modifiers, pitch).

use std::fmt;
use std::num::NonZeroU32;

use bitflags::bitflags;
use serde::{Deserialize, Serialize};

use crate::units::{BoundaryMask, DmaMask, PageSize, PageSizes, Size};

bitflags! {
    /// What a device will do with a buffer, in the vocabulary of GBM and minigbm's
    /// `BO_USE_*` flags. Hints only: each platform decides what a hint means.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
    pub struct Usage: u32 {
        /// Scanned out by a display controller (`GBM_BO_USE_SCANOUT`).
        const SCANOUT = 1 << 0;
        /// A hardware cursor plane (`GBM_BO_USE_CURSOR`).
        const CURSOR = 1 << 1;
        /// Rendered to by a GPU (`GBM_BO_USE_RENDERING`).
        const RENDERING = 1 << 2;
        /// Sampled as a texture (`BO_USE_TEXTURE`).
        const TEXTURING = 1 << 3;
        /// Written by a camera / ISP (`BO_USE_CAMERA_WRITE`).
        const CAMERA_WRITE = 1 << 4;
        /// Read by a camera pipeline (`BO_USE_CAMERA_READ`).
        const CAMERA_READ = 1 << 5;
        /// Written by a video decoder (`BO_USE_HW_VIDEO_DECODER`).
        const VIDEO_DECODE = 1 << 6;
        /// Read by a video encoder (`BO_USE_HW_VIDEO_ENCODER`).
        const VIDEO_ENCODE = 1 << 7;
        /// Read often by the CPU (`BO_USE_SW_READ_OFTEN`).
        const CPU_READ_OFTEN = 1 << 8;
        /// Written often by the CPU (`BO_USE_SW_WRITE_OFTEN`).
        const CPU_WRITE_OFTEN = 1 << 9;
        /// Protected (secure) content (`BO_USE_PROTECTED`).
        const PROTECTED = 1 << 10;
        /// Must be laid out linearly (`GBM_BO_USE_LINEAR`).
        const LINEAR = 1 << 11;
    }
}

impl Usage {
    /// Parses a comma- or `|`-separated list of hint names, case-insensitively
    /// (`"scanout,rendering"`).
    pub fn parse_list(text: &str) -> Result<Usage, String> {
        let mut usage = Usage::empty();
        for word in text.split([',', '|']).map(str::trim).filter(|w| !w.is_empty()) {
            let upper = word.to_ascii_uppercase().replace('-', "_");
            let flag = Usage::from_name(&upper).ok_or_else(|| {
                let known: Vec<&str> = Usage::all().iter_names().map(|(n, _)| n).collect();
                format!("unknown usage hint {word:?}; known hints: {}", known.join(", "))
            })?;
            usage |= flag;
        }
        Ok(usage)
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter_names().map(|(n, _)| n).collect();
        f.write_str(&names.join("|"))
    }
}

/// How the CPU maps the pages, and therefore what cache maintenance the devices need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Cached; coherent devices snoop, others need clean/invalidate around DMA.
    Cached,
    /// Write-combined: uncached reads, buffered writes (`dma_alloc_wc`, `pgprot_writecombine`).
    WriteCombined,
    /// Uncached.
    Uncached,
}

impl CacheMode {
    /// All modes, in the default order of preference.
    pub const ALL: [CacheMode; 3] = [CacheMode::Cached, CacheMode::WriteCombined, CacheMode::Uncached];

    /// The set holding only this mode.
    pub const fn as_set(self) -> CacheModes {
        match self {
            CacheMode::Cached => CacheModes::CACHED,
            CacheMode::WriteCombined => CacheModes::WRITE_COMBINED,
            CacheMode::Uncached => CacheModes::UNCACHED,
        }
    }

    /// The kernel-ish name.
    pub const fn name(self) -> &'static str {
        match self {
            CacheMode::Cached => "cached",
            CacheMode::WriteCombined => "write-combined",
            CacheMode::Uncached => "uncached",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

bitflags! {
    /// A set of [`CacheMode`]s a device can work with.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct CacheModes: u8 {
        /// [`CacheMode::Cached`].
        const CACHED = 1;
        /// [`CacheMode::WriteCombined`].
        const WRITE_COMBINED = 2;
        /// [`CacheMode::Uncached`].
        const UNCACHED = 4;
    }
}

impl CacheModes {
    /// Whether `mode` is in the set.
    pub const fn has(self, mode: CacheMode) -> bool {
        self.contains(mode.as_set())
    }
    /// The modes in the set, in default preference order.
    pub fn modes(self) -> impl Iterator<Item = CacheMode> {
        CacheMode::ALL.into_iter().filter(move |m| self.has(*m))
    }
}

impl Default for CacheModes {
    fn default() -> Self {
        CacheModes::all()
    }
}

impl fmt::Display for CacheModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.modes().map(CacheMode::name).collect();
        write!(f, "{{{}}}", names.join(", "))
    }
}

impl Serialize for CacheModes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.modes())
    }
}

impl<'de> Deserialize<'de> for CacheModes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let modes = Vec::<CacheMode>::deserialize(d)?;
        if modes.is_empty() {
            return Err(serde::de::Error::custom("cache_modes must name at least one mode"));
        }
        Ok(modes.into_iter().fold(CacheModes::empty(), |acc, m| acc | m.as_set()))
    }
}

/// An IOMMU (or a device's private MMU) that translates the device's addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iommu {
    /// Name of the IOMMU, e.g. `"VT-d"` or `"rk-iommu"`.
    pub name: std::sync::Arc<str>,
    /// The page sizes it can map (`iommu_domain.pgsize_bitmap`).
    #[serde(with = "pgsizes_serde")]
    pub pgsize_bitmap: PageSizes,
    /// Width of the IOVA space (the aperture).
    #[serde(default = "default_iova_bits")]
    pub iova_bits: DmaMask,
    /// Width of the physical (output) addresses the IOMMU can reach, when narrower than
    /// the machine's (e.g. Rockchip RGA2's MMU reaches only below 4 GiB).
    #[serde(default)]
    pub phys_bits: Option<DmaMask>,
}

fn default_iova_bits() -> DmaMask {
    DmaMask::BITS_32
}

impl Iommu {
    /// The smallest page size: the granule every mapped chunk must be a multiple of.
    pub fn granule(&self) -> PageSize {
        self.pgsize_bitmap.smallest().unwrap_or(PageSize::SZ_4K)
    }
}

/// Serialises a [`PageSizes`] as a list of sizes (`["4KiB", "2MiB"]`) or a raw bitmap.
pub(crate) mod pgsizes_serde {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::units::{PageSize, PageSizes};

    pub fn serialize<S: Serializer>(p: &PageSizes, s: S) -> Result<S::Ok, S::Error> {
        let mut v: Vec<u64> = p.iter_desc().map(PageSize::get).collect();
        v.reverse();
        s.collect_seq(v)
    }

    struct PgSizes;

    impl<'de> Visitor<'de> for PgSizes {
        type Value = PageSizes;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a pgsize_bitmap integer or a list of page sizes such as [\"4KiB\", \"2MiB\"]")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<PageSizes, E> {
            check(PageSizes::from_bitmap(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<PageSizes, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("pgsize_bitmap {v} is negative")))
                .and_then(|v| self.visit_u64(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PageSizes, A::Error> {
            let mut set = PageSizes::EMPTY;
            while let Some(p) = seq.next_element::<PageSize>()? {
                set = set.union(PageSizes::from_sizes([p]));
            }
            check(set)
        }
    }

    fn check<E: de::Error>(set: PageSizes) -> Result<PageSizes, E> {
        if set.is_empty() {
            return Err(E::custom("pgsize_bitmap must hold at least one page size"));
        }
        if set.smallest().is_some_and(|p| p < PageSize::SZ_4K) {
            return Err(E::custom(format!("pgsize_bitmap {:#x} holds page sizes below 4 KiB ({set})", set.bitmap())));
        }
        Ok(set)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PageSizes, D::Error> {
        d.deserialize_any(PgSizes)
    }
}

/// Per-device placement constraints: the kernel side, "where the pages go".
///
/// Mirrors `dma_mask`, `bus_dma_limit` and `struct device_dma_parameters`, extended as the
/// seed thread asks: max segments (1 = contiguous), alignment, cache modes, protection.
/// Behind an IOMMU the address and segment limits apply to IOVAs, not to the physical pages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// `dma_mask`: the addresses the device can emit (physical, or IOVA behind an IOMMU).
    #[serde(default = "default_mask")]
    pub dma_mask: DmaMask,
    /// `bus_dma_limit`: the highest physical address the interconnect passes (inclusive).
    #[serde(default)]
    pub bus_dma_limit: Option<u64>,
    /// Named memory regions (banks, CMA areas, carveouts) the device is limited to; empty
    /// means any RAM.
    #[serde(default)]
    pub regions: Vec<String>,
    /// The translating IOMMU, if any.
    #[serde(default)]
    pub iommu: Option<Iommu>,
    /// Maximum scatter-gather segments; 1 means physically contiguous; none means unlimited.
    #[serde(default)]
    pub max_segments: Option<NonZeroU32>,
    /// `max_segment_size`; none means unlimited.
    #[serde(default)]
    pub max_segment_size: Option<Size>,
    /// `segment_boundary_mask`.
    #[serde(default = "default_boundary")]
    pub segment_boundary_mask: BoundaryMask,
    /// Minimum alignment of the buffer's start, as the device addresses it.
    #[serde(default = "default_alignment")]
    pub alignment: PageSize,
    /// The CPU cache modes the device works with.
    #[serde(default)]
    pub cache_modes: CacheModes,
    /// Whether the device snoops CPU caches (`dma-coherent`).
    #[serde(default)]
    pub coherent: bool,
    /// Whether every buffer of this device must be protected memory.
    #[serde(default)]
    pub protected: bool,
    /// Whether the device can access protected memory at all.
    #[serde(default = "yes")]
    pub protected_access: bool,
}

fn default_mask() -> DmaMask {
    DmaMask::BITS_64
}
fn default_boundary() -> BoundaryMask {
    BoundaryMask::NONE
}
fn default_alignment() -> PageSize {
    PageSize::SZ_4K
}
fn yes() -> bool {
    true
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            dma_mask: default_mask(),
            bus_dma_limit: None,
            regions: Vec::new(),
            iommu: None,
            max_segments: None,
            max_segment_size: None,
            segment_boundary_mask: default_boundary(),
            alignment: default_alignment(),
            cache_modes: CacheModes::all(),
            coherent: false,
            protected: false,
            protected_access: true,
        }
    }
}

/// One format a device supports, with its modifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatCaps {
    /// The DRM fourcc.
    #[serde(with = "crate::layout::fourcc_serde")]
    pub fourcc: drm_fourcc::DrmFourcc,
    /// Supported modifiers (`u64`); defaults to LINEAR only.
    #[serde(default = "linear_only", with = "crate::layout::modifier_list_serde")]
    pub modifiers: Vec<u64>,
}

fn linear_only() -> Vec<u64> {
    vec![crate::layout::MOD_LINEAR]
}

/// Layout capabilities: the userspace side (format, pitch, offsets).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutCaps {
    /// Supported formats. Empty means the device does not interpret pixels (a DMA or
    /// copy engine): any format, LINEAR only.
    #[serde(default)]
    pub formats: Vec<FormatCaps>,
    /// Each plane's pitch is a multiple of this many bytes.
    #[serde(default = "one")]
    pub pitch_align: u32,
    /// Each plane's offset is a multiple of this many bytes.
    #[serde(default = "one")]
    pub offset_align: u32,
    /// The luma height is padded to a multiple of this many rows.
    #[serde(default = "one")]
    pub height_align: u32,
    /// The total size is a multiple of this many bytes.
    #[serde(default = "one")]
    pub size_align: u32,
    /// Largest width in pixels.
    #[serde(default)]
    pub max_width: Option<u32>,
    /// Largest height in pixels.
    #[serde(default)]
    pub max_height: Option<u32>,
    /// Largest pitch in bytes.
    #[serde(default)]
    pub max_pitch: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Default for LayoutCaps {
    fn default() -> Self {
        LayoutCaps {
            formats: Vec::new(),
            pitch_align: 1,
            offset_align: 1,
            height_align: 1,
            size_align: 1,
            max_width: None,
            max_height: None,
            max_pitch: None,
        }
    }
}

impl LayoutCaps {
    /// The modifiers the device accepts for `fourcc`: `None` when it does not support the
    /// format, LINEAR only when it lists no formats at all.
    pub fn modifiers_for(&self, fourcc: drm_fourcc::DrmFourcc) -> Option<&[u64]> {
        if self.formats.is_empty() {
            return Some(&[crate::layout::MOD_LINEAR]);
        }
        self.formats.iter().find(|f| f.fourcc == fourcc).map(|f| f.modifiers.as_slice())
    }
}

/// What kind of block a device is; used to word explanations ("display `dss`").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceClass {
    /// A display controller.
    Display,
    /// A GPU.
    Gpu,
    /// A camera interface or ISP.
    Camera,
    /// A video decoder, encoder or codec.
    Video,
    /// A 2D engine or DMA engine.
    Dma,
    /// A capture card or other I/O device.
    Capture,
    /// An accelerator.
    Accelerator,
    /// Something else.
    Other,
}

impl DeviceClass {
    /// The word used in explanations.
    pub const fn word(self) -> &'static str {
        match self {
            DeviceClass::Display => "display",
            DeviceClass::Gpu => "GPU",
            DeviceClass::Camera => "camera",
            DeviceClass::Video => "video",
            DeviceClass::Dma => "DMA engine",
            DeviceClass::Capture => "capture",
            DeviceClass::Accelerator => "accelerator",
            DeviceClass::Other => "device",
        }
    }
}

/// How the device is attached to the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// An on-chip (platform) device.
    #[default]
    Platform,
    /// A PCIe device.
    Pcie,
}

/// A device: its name, its placement constraints and its layout capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Short name, unique on the platform (`dss`, `v3d`).
    pub name: String,
    /// What kind of block it is.
    pub class: DeviceClass,
    /// How it is attached.
    #[serde(default)]
    pub bus: Bus,
    /// One line of description.
    #[serde(default)]
    pub description: String,
    /// Where its pages may go.
    #[serde(default)]
    pub placement: Placement,
    /// What layouts it reads and writes.
    #[serde(default)]
    pub layout: LayoutCaps,
}

impl Device {
    /// A device with default (unconstrained) placement and layout.
    pub fn new(name: impl Into<String>, class: DeviceClass) -> Device {
        Device {
            name: name.into(),
            class,
            bus: Bus::Platform,
            description: String::new(),
            placement: Placement::default(),
            layout: LayoutCaps::default(),
        }
    }

    /// "display `dss`".
    pub fn label(&self) -> String {
        format!("{} `{}`", self.class.word(), self.name)
    }
}
