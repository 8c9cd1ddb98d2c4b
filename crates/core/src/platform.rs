//! Platform descriptions: the memory map, the devices, and what each usage hint means
//! for each device ("policy as data"). Parsed from TOML; see `docs/PLATFORMS.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::Usage;
use crate::layout::{self, ModifierInfo};
use crate::model::{CacheMode, CacheModes, Device};
use crate::units::{DmaMask, PageSize, PhysAddr, PhysRange, Size};
use crate::window::Window;

/// A named range of memory: a DRAM bank or a CMA area.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Unique name (`dram0`, `cma`).
    pub name: String,
    /// First physical address.
    pub start: PhysAddr,
    /// Length.
    pub size: Size,
}

impl Region {
    /// The physical range, checked when the platform is loaded.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_start_size(self.start, self.size).expect("validated when the platform was loaded")
    }
}

/// A static pool of memory outside the page allocator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carveout {
    /// Unique name.
    pub name: String,
    /// First physical address.
    pub start: PhysAddr,
    /// Length.
    pub size: Size,
    /// Whether it is protected (secure) memory.
    #[serde(default)]
    pub protected: bool,
}

impl Carveout {
    /// The physical range.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_start_size(self.start, self.size).expect("validated when the platform was loaded")
    }
}

/// The platform's physical memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryMap {
    /// DRAM banks.
    #[serde(rename = "bank")]
    pub banks: Vec<Region>,
    /// CMA areas: lent to movable allocations, reclaimed for contiguous ones.
    #[serde(default, rename = "cma")]
    pub cma: Vec<Region>,
    /// Carveouts: reserved pools, used only by devices or buffers that ask for them.
    #[serde(default, rename = "carveout")]
    pub carveouts: Vec<Carveout>,
    /// The largest block the page allocator hands out (`MAX_ORDER`); larger contiguous
    /// buffers must come from CMA or a carveout.
    #[serde(default = "default_max_block")]
    pub max_buddy_block: PageSize,
    /// Where `ZONE_DMA` ends, as arm64 sizes it from the narrowest `dma-ranges`
    /// (`zone_dma_bits`); none: no ZONE_DMA below ZONE_DMA32.
    #[serde(default)]
    pub zone_dma_bits: Option<DmaMask>,
}

fn default_max_block() -> PageSize {
    PageSize::SZ_4M
}

impl MemoryMap {
    /// All DRAM.
    pub fn ram(&self) -> Window {
        Window::from_ranges(self.banks.iter().map(Region::range))
    }
    /// DRAM minus carveouts: what general allocations come from (CMA included).
    pub fn general(&self) -> Window {
        self.ram().subtract(&Window::from_ranges(self.carveouts.iter().map(Carveout::range)))
    }
    /// All CMA areas.
    pub fn cma_window(&self) -> Window {
        Window::from_ranges(self.cma.iter().map(Region::range))
    }
    /// All protected carveouts.
    pub fn protected(&self) -> Window {
        Window::from_ranges(self.carveouts.iter().filter(|c| c.protected).map(Carveout::range))
    }
    /// Memory that can hold one contiguous allocation larger than the page allocator's
    /// largest block: CMA areas and carveouts.
    pub fn large_contiguous(&self) -> Window {
        Window::from_ranges(self.cma.iter().map(Region::range).chain(self.carveouts.iter().map(Carveout::range)))
    }
    /// The range of a named bank, CMA area or carveout.
    pub fn region(&self, name: &str) -> Option<RegionRef> {
        let bank =
            self.banks.iter().find(|r| r.name == name).map(|r| RegionRef { kind: RegionKind::Bank, range: r.range() });
        let cma =
            self.cma.iter().find(|r| r.name == name).map(|r| RegionRef { kind: RegionKind::Cma, range: r.range() });
        let carve = self.carveouts.iter().find(|c| c.name == name).map(|c| RegionRef {
            kind: if c.protected { RegionKind::ProtectedCarveout } else { RegionKind::Carveout },
            range: c.range(),
        });
        bank.or(cma).or(carve)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.banks
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.cma.iter().map(|r| r.name.as_str()))
            .chain(self.carveouts.iter().map(|c| c.name.as_str()))
    }
}

/// What kind of memory a named region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// A DRAM bank.
    Bank,
    /// A CMA area.
    Cma,
    /// A carveout.
    Carveout,
    /// A protected carveout.
    ProtectedCarveout,
}

impl RegionKind {
    /// The word used in explanations.
    pub const fn word(self) -> &'static str {
        match self {
            RegionKind::Bank => "bank",
            RegionKind::Cma => "CMA area",
            RegionKind::Carveout => "carveout",
            RegionKind::ProtectedCarveout => "protected carveout",
        }
    }
}

/// A resolved region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionRef {
    /// Its kind.
    pub kind: RegionKind,
    /// Its range.
    pub range: PhysRange,
}

/// What a usage hint means for a device on this platform: placement it tightens.
///
/// The seed's example: on omap3 SCANOUT on the DSS means contiguous; on omap4 the
/// platform has no such rule, because DMM/TILER remaps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintRule {
    /// The device the rule is for, or `"*"` for every device.
    pub device: String,
    /// The rule applies when the request carries any of these hints.
    #[serde(with = "usage_list_serde")]
    pub hints: Usage,
    /// Why: the fact and its source. Shown as the cause of the requirement.
    pub reason: std::sync::Arc<str>,
    /// Physically contiguous (max one segment).
    #[serde(default)]
    pub contiguous: bool,
    /// At most this many segments.
    #[serde(default)]
    pub max_segments: Option<NonZeroU32>,
    /// A narrower physical address limit.
    #[serde(default)]
    pub dma_bits: Option<DmaMask>,
    /// Only these memory regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Only these cache modes.
    #[serde(default)]
    pub cache_modes: Option<CacheModes>,
    /// A larger start alignment.
    #[serde(default)]
    pub alignment: Option<PageSize>,
    /// The hint routes the device around its IOMMU (its physical limits apply).
    #[serde(default)]
    pub bypass_iommu: bool,
    /// Protected memory.
    #[serde(default)]
    pub protected: bool,
}

impl HintRule {
    /// Whether the rule applies to `device` requested with `hints`.
    pub fn applies(&self, device: &str, hints: Usage) -> bool {
        (self.device == "*" || self.device == device) && self.hints.intersects(hints)
    }
}

pub(crate) mod usage_list_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Usage;

    pub fn serialize<S: Serializer>(u: &Usage, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(u.iter_names().map(|(n, _)| n))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        if names.is_empty() {
            return Err(serde::de::Error::custom("hints must name at least one usage hint"));
        }
        Usage::parse_list(&names.join(",")).map_err(serde::de::Error::custom)
    }
}

/// A platform: memory map, devices, policy, and preferences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Short name (`omap3`).
    pub name: String,
    /// One line of description.
    pub description: String,
    /// Physical memory.
    pub memory: MemoryMap,
    /// Devices.
    pub devices: Vec<Device>,
    /// What hints mean on this platform.
    pub rules: Vec<HintRule>,
    /// Modifiers, most preferred first; modifiers not listed rank after, LINEAR last.
    pub modifier_preference: Vec<u64>,
    /// Cache modes, most preferred first.
    pub cache_preference: Vec<CacheMode>,
    /// Extra modifiers with their tile geometry.
    pub modifiers: Vec<ModifierInfo>,
}

impl Platform {
    /// The device called `name`.
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The device called `name`, or an error listing the platform's devices.
    pub fn require_device(&self, name: &str) -> Result<&Device, UnknownDevice> {
        self.device(name).ok_or_else(|| UnknownDevice {
            platform: self.name.clone(),
            device: name.to_owned(),
            known: self.devices.iter().map(|d| d.name.clone()).collect(),
        })
    }

    /// The tile geometry of a modifier: this platform's own descriptions, then the built-ins.
    pub fn modifier_info(&self, value: u64) -> Option<&ModifierInfo> {
        layout::modifier_info(value, &self.modifiers)
    }

    /// A modifier's name, or its value in hex.
    pub fn modifier_name(&self, value: u64) -> String {
        layout::modifier_name(value, &self.modifiers)
    }

    /// Parses a platform description. `file` names the source in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Platform, PlatformError> {
        let raw: RawPlatform = parse_with_path(file, text)?;
        let spans: SpanFile = parse_with_path(file, text)?;
        raw.validate(file, text, &spans)
    }

    /// Parses the platform file `path` (`platforms/omap3.toml`): [`Platform::from_toml`],
    /// and its `name` must be the file's name without `.toml`, so that `-p omap3` and
    /// `-p platforms/omap3.toml` always mean the same platform.
    pub fn from_file(path: &str, text: &str) -> Result<Platform, PlatformError> {
        let p = Platform::from_toml(path, text)?;
        let file_name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        let stem = file_name.strip_suffix(".toml").unwrap_or(file_name);
        if p.name != stem {
            let spans: SpanFile = parse_with_path(path, text)?;
            let span = spans.platform.name.map_or(0..0, |n| n.span());
            let c = Checker { file: path, text };
            return Err(c.err(
                span,
                "platform.name".into(),
                format!("the platform is named {:?} but its file is {file_name:?}: rename one so they agree", p.name),
            ));
        }
        Ok(p)
    }
}

/// A device name that the platform does not describe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform `{platform}` has no device `{device}`; its devices are: {}", known.join(", "))]
pub struct UnknownDevice {
    /// The platform.
    pub platform: String,
    /// The name asked for.
    pub device: String,
    /// The names it has.
    pub known: Vec<String>,
}

/// A malformed platform file: names the file, the line and column, and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlatformError {
    /// The file.
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The field, as a path (`device[2].placement.dma_mask`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

fn parse_with_path<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, PlatformError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_error(file, text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        toml_error(file, text, &field, e.inner())
    })
}

fn toml_error(file: &str, text: &str, field: &str, e: &toml::de::Error) -> PlatformError {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
    let value = e.span().and_then(|s| text.get(s)).map(str::trim);
    PlatformError {
        file: file.to_owned(),
        line,
        column,
        field: field.to_owned(),
        message: in_toml_words(e.message().trim(), value),
    }
}

/// Rewrites serde's wording (Rust types, untagged enum names) into what a platform file's
/// author wrote and should write instead, naming the value found.
fn in_toml_words(message: &str, value: Option<&str>) -> String {
    let got = value.filter(|v| !v.is_empty() && v.len() <= 80).map_or(String::new(), |v| format!(", got `{v}`"));
    if let Some(what) = message.strip_prefix("data did not match any variant of untagged enum ") {
        let expected = match what.trim() {
            "SizeRepr" => "a size: a number of bytes, or a string such as \"64MiB\"",
            "ModifierRef" | "Repr" => "a modifier: a name such as \"LINEAR\", or its 64-bit value",
            _ => "a value of another type",
        };
        return format!("expected {expected}{got}");
    }
    let mut m = message.to_owned();
    for (rust, toml) in [
        ("expected a nonzero u32", "expected a whole number from 1 to 4294967295"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number from 0 to 2^64-1"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
    ] {
        m = m.replace(rust, toml);
    }
    if let Some(i) = m.find("expected struct ") {
        m.replace_range(i.., "expected a table");
    }
    m
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    platform: Header,
    memory: MemoryMap,
    #[serde(default, rename = "device")]
    devices: Vec<Device>,
    #[serde(default, rename = "rule")]
    rules: Vec<HintRule>,
    #[serde(default, rename = "modifier")]
    modifiers: Vec<ModifierInfo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    description: String,
    #[serde(default)]
    modifier_preference: Vec<ModifierRef>,
    #[serde(default)]
    cache_preference: Vec<CacheMode>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ModifierRef {
    Value(u64),
    Name(String),
}

/// The spans of the values that semantic checks may reject, read in a second pass.
#[derive(Deserialize)]
struct SpanFile {
    platform: SpanHeader,
    memory: SpanMemory,
    #[serde(default)]
    device: Vec<SpanDevice>,
    #[serde(default)]
    rule: Vec<SpanRule>,
    #[serde(default)]
    modifier: Vec<SpanModifier>,
}

#[derive(Deserialize)]
struct SpanHeader {
    #[serde(default)]
    name: Option<toml::Spanned<String>>,
    #[serde(default)]
    modifier_preference: Option<toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct SpanModifier {
    name: toml::Spanned<String>,
    value: toml::Spanned<toml::Value>,
    #[serde(default)]
    tile_width: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    tile_height: Option<toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct SpanMemory {
    #[serde(default)]
    bank: Vec<SpanRegion>,
    #[serde(default)]
    cma: Vec<SpanRegion>,
    #[serde(default)]
    carveout: Vec<SpanRegion>,
}

#[derive(Deserialize)]
struct SpanRegion {
    name: toml::Spanned<String>,
    size: toml::Spanned<toml::Value>,
}

#[derive(Deserialize)]
struct SpanDevice {
    name: toml::Spanned<String>,
    #[serde(default)]
    placement: Option<SpanPlacement>,
    #[serde(default)]
    layout: Option<toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct SpanPlacement {
    #[serde(default)]
    regions: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    max_segment_size: Option<toml::Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct SpanRule {
    device: toml::Spanned<String>,
    #[serde(default)]
    regions: Option<toml::Spanned<toml::Value>>,
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: std::ops::Range<usize>, field: String, message: String) -> PlatformError {
        let (line, column) = line_col(self.text, span.start);
        PlatformError { file: self.file.to_owned(), line, column, field, message }
    }
}

/// The largest layout alignment a platform may ask for; keeps layout arithmetic far from
/// overflow.
pub const MAX_LAYOUT_ALIGN: u32 = 1 << 20;

const INVALID_MODIFIER: &str =
    "DRM_FORMAT_MOD_INVALID (0x00ffffffffffffff) means \"no modifier known\", not a layout: name a real modifier";

impl RawPlatform {
    fn validate(self, file: &str, text: &str, spans: &SpanFile) -> Result<Platform, PlatformError> {
        let c = Checker { file, text };
        self.check_memory(&c, spans)?;
        self.check_modifiers(&c, spans)?;
        self.check_devices(&c, spans)?;
        self.check_rules(&c, spans)?;
        let preference_span = || spans.platform.modifier_preference.as_ref().map_or(0..0, |s| s.span());
        let modifier_preference = self
            .platform
            .modifier_preference
            .iter()
            .map(|m| {
                let value = match m {
                    ModifierRef::Value(v) => *v,
                    ModifierRef::Name(n) => layout::parse_modifier(n, &self.modifiers)
                        .map_err(|e| c.err(preference_span(), "platform.modifier_preference".into(), e))?,
                };
                if value == layout::MOD_INVALID {
                    return Err(c.err(
                        preference_span(),
                        "platform.modifier_preference".into(),
                        INVALID_MODIFIER.into(),
                    ));
                }
                Ok(value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cache_preference = if self.platform.cache_preference.is_empty() {
            CacheMode::ALL.to_vec()
        } else {
            self.platform.cache_preference
        };
        Ok(Platform {
            name: self.platform.name,
            description: self.platform.description,
            memory: self.memory,
            devices: self.devices,
            rules: self.rules,
            modifier_preference,
            cache_preference,
            modifiers: self.modifiers,
        })
    }

    fn check_memory(&self, c: &Checker<'_>, spans: &SpanFile) -> Result<(), PlatformError> {
        let m = &self.memory;
        if m.banks.is_empty() {
            return Err(c.err(0..0, "memory.bank".into(), "a platform needs at least one [[memory.bank]]".into()));
        }
        let all = m
            .banks
            .iter()
            .zip(&spans.memory.bank)
            .map(|(r, s)| ("bank", r.name.as_str(), r.start, r.size, s))
            .chain(m.cma.iter().zip(&spans.memory.cma).map(|(r, s)| ("cma", r.name.as_str(), r.start, r.size, s)))
            .chain(
                m.carveouts
                    .iter()
                    .zip(&spans.memory.carveout)
                    .map(|(r, s)| ("carveout", r.name.as_str(), r.start, r.size, s)),
            );
        let mut names = BTreeSet::new();
        let mut bank_ranges: Vec<PhysRange> = Vec::new();
        // CMA areas and carveouts placed so far: no two may share a byte, of either kind.
        let mut reserved: Vec<(String, PhysRange)> = Vec::new();
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for (kind, name, start, size, span) in all {
            let index = counts.entry(kind).or_default();
            let field = format!("memory.{kind}[{index}]");
            *index += 1;
            if !names.insert(name) {
                return Err(c.err(span.name.span(), field, format!("region name `{name}` is used twice")));
            }
            let range = PhysRange::from_start_size(start, size)
                .map_err(|e| c.err(span.size.span(), format!("{field}.size"), e.to_string()))?;
            if !range.start().is_aligned(PageSize::SZ_4K) || !size.is_aligned(PageSize::SZ_4K) {
                return Err(c.err(span.size.span(), field, format!("{range} is not 4 KiB aligned")));
            }
            if kind == "bank" {
                if let Some(other) = bank_ranges.iter().find(|b| b.intersect(range).is_some()) {
                    return Err(c.err(span.name.span(), field, format!("bank {range} overlaps bank {other}")));
                }
                bank_ranges.push(range);
            } else if !m.ram().contains_range(range) {
                return Err(c.err(
                    span.name.span(),
                    field,
                    format!("{kind} {range} does not lie inside one DRAM bank"),
                ));
            } else if let Some((other, at)) = reserved.iter().find(|(_, r)| r.intersect(range).is_some()) {
                return Err(c.err(
                    span.name.span(),
                    field,
                    format!("{kind} `{name}` at {range} overlaps {other} at {at}: a page can belong to only one"),
                ));
            } else {
                reserved.push((format!("{kind} `{name}`"), range));
            }
        }
        Ok(())
    }

    /// The platform's own modifiers: a name and value of their own (never a built-in's,
    /// never `DRM_FORMAT_MOD_INVALID`), and tiles of at least one byte and one row.
    fn check_modifiers(&self, c: &Checker<'_>, spans: &SpanFile) -> Result<(), PlatformError> {
        for (i, (m, s)) in self.modifiers.iter().zip(&spans.modifier).enumerate() {
            let field = |f: &str| format!("modifier[{i}].{f}");
            let name = m.name.as_ref();
            if name.is_empty() {
                return Err(c.err(s.name.span(), field("name"), "a modifier needs a name".into()));
            }
            if m.value == layout::MOD_INVALID {
                return Err(c.err(s.value.span(), field("value"), INVALID_MODIFIER.into()));
            }
            if let Some(b) = layout::BUILTIN_MODIFIERS.iter().find(|b| b.value == m.value) {
                return Err(c.err(
                    s.value.span(),
                    field("value"),
                    format!("{:#018x} is the built-in {}; a platform may not redefine it", m.value, b.name),
                ));
            }
            if let Some(b) = layout::BUILTIN_MODIFIERS.iter().find(|b| b.name.eq_ignore_ascii_case(name)) {
                return Err(c.err(
                    s.name.span(),
                    field("name"),
                    format!("`{name}` is the name of the built-in {} ({:#018x})", b.name, b.value),
                ));
            }
            if let Some((j, _)) = self.modifiers[..i].iter().enumerate().find(|(_, o)| o.value == m.value) {
                return Err(c.err(
                    s.value.span(),
                    field("value"),
                    format!("{:#018x} is already modifier[{j}]", m.value),
                ));
            }
            if let Some((j, _)) =
                self.modifiers[..i].iter().enumerate().find(|(_, o)| o.name.eq_ignore_ascii_case(name))
            {
                return Err(c.err(s.name.span(), field("name"), format!("`{name}` is already modifier[{j}]")));
            }
            let width = match m.tile_width {
                layout::TileWidth::Bytes(b) | layout::TileWidth::Pixels(b) => b,
            };
            let span = |v: &Option<toml::Spanned<toml::Value>>| v.as_ref().map_or(s.name.span(), |v| v.span());
            if width == 0 || width > MAX_LAYOUT_ALIGN {
                return Err(c.err(
                    span(&s.tile_width),
                    field("tile_width"),
                    format!("tile_width must be 1..={MAX_LAYOUT_ALIGN}, got {width}"),
                ));
            }
            if m.tile_height == 0 || m.tile_height > MAX_LAYOUT_ALIGN {
                return Err(c.err(
                    span(&s.tile_height),
                    field("tile_height"),
                    format!("tile_height must be 1..={MAX_LAYOUT_ALIGN} rows, got {}", m.tile_height),
                ));
            }
        }
        Ok(())
    }

    fn check_devices(&self, c: &Checker<'_>, spans: &SpanFile) -> Result<(), PlatformError> {
        let mut names = BTreeSet::new();
        for (i, (d, s)) in self.devices.iter().zip(&spans.device).enumerate() {
            let field = format!("device[{i}]");
            if d.name.is_empty() || d.name == "*" || d.name.contains([',', ':', ' ']) {
                return Err(c.err(
                    s.name.span(),
                    format!("{field}.name"),
                    format!("device name {:?} must be non-empty without ',', ':' or spaces", d.name),
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(c.err(
                    s.name.span(),
                    format!("{field}.name"),
                    format!("device `{}` is described twice", d.name),
                ));
            }
            if let Some(max) = d.placement.max_segment_size.filter(|m| m.bytes() < 4096) {
                let span =
                    s.placement.as_ref().and_then(|p| p.max_segment_size.as_ref()).map_or(s.name.span(), |v| v.span());
                return Err(c.err(
                    span,
                    format!("{field}.placement.max_segment_size"),
                    format!("max_segment_size must be at least one 4 KiB page, got {max} (leave it out for no limit)"),
                ));
            }
            let regions_span =
                s.placement.as_ref().and_then(|p| p.regions.as_ref()).map_or(s.name.span(), |r| r.span());
            self.check_region_names(c, &d.placement.regions, regions_span, &format!("{field}.placement.regions"))?;
            let layout_span = s.layout.as_ref().map_or(s.name.span(), |l| l.span());
            let l = &d.layout;
            for (name, v) in [
                ("pitch_align", l.pitch_align),
                ("offset_align", l.offset_align),
                ("height_align", l.height_align),
                ("size_align", l.size_align),
            ] {
                if v == 0 || v > MAX_LAYOUT_ALIGN {
                    return Err(c.err(
                        layout_span.clone(),
                        format!("{field}.layout.{name}"),
                        format!("{name} must be 1..={MAX_LAYOUT_ALIGN}, got {v}"),
                    ));
                }
            }
            if let Some(f) = l.formats.iter().find(|f| f.modifiers.contains(&layout::MOD_INVALID)) {
                return Err(c.err(
                    layout_span,
                    format!("{field}.layout.formats"),
                    format!("{}: {INVALID_MODIFIER}", layout::fourcc_name(f.fourcc)),
                ));
            }
            if let Some(f) = l.formats.iter().find(|f| layout::format_info(f.fourcc).is_none()) {
                let name = layout::fourcc_name(f.fourcc);
                return Err(c.err(
                    layout_span,
                    format!("{field}.layout.formats"),
                    format!("dmaplace has no layout rule for format {name}"),
                ));
            }
        }
        Ok(())
    }

    fn check_rules(&self, c: &Checker<'_>, spans: &SpanFile) -> Result<(), PlatformError> {
        for (i, (r, s)) in self.rules.iter().zip(&spans.rule).enumerate() {
            if r.device != "*" && !self.devices.iter().any(|d| d.name == r.device) {
                let known: Vec<&str> = self.devices.iter().map(|d| d.name.as_str()).collect();
                return Err(c.err(
                    s.device.span(),
                    format!("rule[{i}].device"),
                    format!("no device `{}`; devices are: {}", r.device, known.join(", ")),
                ));
            }
            let span = s.regions.as_ref().map_or(s.device.span(), |r| r.span());
            self.check_region_names(c, &r.regions, span, &format!("rule[{i}].regions"))?;
        }
        Ok(())
    }

    fn check_region_names(
        &self,
        c: &Checker<'_>,
        names: &[String],
        span: std::ops::Range<usize>,
        field: &str,
    ) -> Result<(), PlatformError> {
        match names.iter().find(|n| self.memory.region(n).is_none()) {
            None => Ok(()),
            Some(bad) => {
                let known: Vec<&str> = self.memory.names().collect();
                Err(c.err(
                    span,
                    field.to_owned(),
                    format!("no memory region `{bad}`; regions are: {}", known.join(", ")),
                ))
            }
        }
    }
}
