//! DRM layout math: bytes per pixel, subsampling, per-plane pitch and offset, total size.
//!
//! The rules follow minigbm's `drv_size_from_format` and the DRM framebuffer ABI
//! (`drm_mode_fb_cmd2`: up to four planes, each with a `u32` pitch and offset, one
//! `u64` modifier). All arithmetic is checked and an overflow names its operands.

use std::borrow::Cow;
use std::fmt;

use drm_fourcc::DrmFourcc;
use serde::{Deserialize, Serialize};

use crate::units::{self, UnitError};

/// `DRM_FORMAT_MOD_LINEAR`.
pub const MOD_LINEAR: u64 = 0;
/// `DRM_FORMAT_MOD_INVALID`.
pub const MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// One plane of a format: bytes per pixel and chroma subsampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneInfo {
    /// Bytes per pixel (per sample pair for packed 4:2:2).
    pub cpp: u32,
    /// Horizontal subsampling.
    pub hsub: u32,
    /// Vertical subsampling.
    pub vsub: u32,
}

/// A format's planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatInfo {
    /// The fourcc.
    pub fourcc: DrmFourcc,
    /// Its planes, in memory order.
    pub planes: &'static [PlaneInfo],
}

const fn plane(cpp: u32, hsub: u32, vsub: u32) -> PlaneInfo {
    PlaneInfo { cpp, hsub, vsub }
}

const P1: &[PlaneInfo] = &[plane(1, 1, 1)];
const P2: &[PlaneInfo] = &[plane(2, 1, 1)];
const P3: &[PlaneInfo] = &[plane(3, 1, 1)];
const P4: &[PlaneInfo] = &[plane(4, 1, 1)];
const P8: &[PlaneInfo] = &[plane(8, 1, 1)];
const PACKED_422: &[PlaneInfo] = &[plane(4, 2, 1)];
const SEMI_420: &[PlaneInfo] = &[plane(1, 1, 1), plane(2, 2, 2)];
const SEMI_422: &[PlaneInfo] = &[plane(1, 1, 1), plane(2, 2, 1)];
const SEMI_444: &[PlaneInfo] = &[plane(1, 1, 1), plane(2, 1, 1)];
const PLANAR_420: &[PlaneInfo] = &[plane(1, 1, 1), plane(1, 2, 2), plane(1, 2, 2)];
const PLANAR_422: &[PlaneInfo] = &[plane(1, 1, 1), plane(1, 2, 1), plane(1, 2, 1)];
const SEMI_420_16: &[PlaneInfo] = &[plane(2, 1, 1), plane(4, 2, 2)];

/// The formats whose layout dmaplace computes.
pub const FORMATS: &[FormatInfo] = &[
    FormatInfo { fourcc: DrmFourcc::Xrgb8888, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Argb8888, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Xbgr8888, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Abgr8888, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Xrgb2101010, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Argb2101010, planes: P4 },
    FormatInfo { fourcc: DrmFourcc::Rgb888, planes: P3 },
    FormatInfo { fourcc: DrmFourcc::Bgr888, planes: P3 },
    FormatInfo { fourcc: DrmFourcc::Rgb565, planes: P2 },
    FormatInfo { fourcc: DrmFourcc::R8, planes: P1 },
    FormatInfo { fourcc: DrmFourcc::R16, planes: P2 },
    FormatInfo { fourcc: DrmFourcc::Gr88, planes: P2 },
    FormatInfo { fourcc: DrmFourcc::Abgr16161616f, planes: P8 },
    FormatInfo { fourcc: DrmFourcc::Yuyv, planes: PACKED_422 },
    FormatInfo { fourcc: DrmFourcc::Uyvy, planes: PACKED_422 },
    FormatInfo { fourcc: DrmFourcc::Nv12, planes: SEMI_420 },
    FormatInfo { fourcc: DrmFourcc::Nv21, planes: SEMI_420 },
    FormatInfo { fourcc: DrmFourcc::Nv16, planes: SEMI_422 },
    FormatInfo { fourcc: DrmFourcc::Nv61, planes: SEMI_422 },
    FormatInfo { fourcc: DrmFourcc::Nv24, planes: SEMI_444 },
    FormatInfo { fourcc: DrmFourcc::Yuv420, planes: PLANAR_420 },
    FormatInfo { fourcc: DrmFourcc::Yvu420, planes: PLANAR_420 },
    FormatInfo { fourcc: DrmFourcc::Yuv422, planes: PLANAR_422 },
    FormatInfo { fourcc: DrmFourcc::P010, planes: SEMI_420_16 },
    FormatInfo { fourcc: DrmFourcc::P016, planes: SEMI_420_16 },
];

/// The format's plane table, if dmaplace knows it.
pub fn format_info(fourcc: DrmFourcc) -> Option<&'static FormatInfo> {
    FORMATS.iter().find(|f| f.fourcc == fourcc)
}

/// The fourcc as text without padding: `XR24`, `R8`.
pub fn fourcc_name(fourcc: DrmFourcc) -> String {
    fourcc.to_string().trim_end().to_owned()
}

/// Parses `XR24`, `R8`, `NV12` (padded with spaces to four characters).
pub fn parse_fourcc(text: &str) -> Result<DrmFourcc, String> {
    let t = text.trim();
    if t.is_empty() || t.len() > 4 || !t.is_ascii() {
        return Err(format!("{text:?} is not a fourcc: expected 1 to 4 ASCII characters such as XR24 or NV12"));
    }
    let mut bytes = [b' '; 4];
    bytes[..t.len()].copy_from_slice(t.as_bytes());
    let code = u32::from_le_bytes(bytes);
    DrmFourcc::try_from(code).map_err(|_| format!("{t:?} is not a DRM fourcc known to drm-fourcc"))
}

/// Serde as a fourcc string.
pub(crate) mod fourcc_serde {
    use drm_fourcc::DrmFourcc;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &DrmFourcc, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fourcc_name(*f))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DrmFourcc, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_fourcc(&text).map_err(serde::de::Error::custom)
    }
}

/// How a modifier tiles memory: the unit the pitch must cover and the rows per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TileWidth {
    /// A tile is this many bytes wide (Intel X/Y tiles).
    Bytes(u32),
    /// A tile is this many pixels wide (Arm 16x16 blocks).
    Pixels(u32),
}

/// A modifier with a name and the tile geometry needed to lay it out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifierInfo {
    /// The `DRM_FORMAT_MOD_*` name without the prefix.
    pub name: Cow<'static, str>,
    /// The 64-bit value.
    pub value: u64,
    /// Tile width.
    pub tile_width: TileWidth,
    /// Tile height in rows.
    pub tile_height: u32,
}

const fn vendor_mod(vendor: u64, code: u64) -> u64 {
    (vendor << 56) | code
}

/// `I915_FORMAT_MOD_X_TILED`.
pub const MOD_I915_X_TILED: u64 = vendor_mod(0x01, 1);
/// `I915_FORMAT_MOD_Y_TILED`.
pub const MOD_I915_Y_TILED: u64 = vendor_mod(0x01, 2);
/// `I915_FORMAT_MOD_4_TILED`.
pub const MOD_I915_4_TILED: u64 = vendor_mod(0x01, 9);
/// `DRM_FORMAT_MOD_BROADCOM_VC4_T_TILED`.
pub const MOD_BROADCOM_VC4_T_TILED: u64 = vendor_mod(0x07, 1);
/// `DRM_FORMAT_MOD_ARM_16X16_BLOCK_U_INTERLEAVED`.
pub const MOD_ARM_16X16_BLOCK_U_INTERLEAVED: u64 = vendor_mod(0x08, (2 << 52) | 1);

const fn builtin(name: &'static str, value: u64, tile_width: TileWidth, tile_height: u32) -> ModifierInfo {
    ModifierInfo { name: Cow::Borrowed(name), value, tile_width, tile_height }
}

/// Modifiers whose tile geometry is built in. Platforms may describe more.
pub const BUILTIN_MODIFIERS: &[ModifierInfo] = &[
    builtin("LINEAR", MOD_LINEAR, TileWidth::Bytes(1), 1),
    // Intel PRM: an X tile is 512 B x 8 rows; Y and Tile-4 tiles are 128 B x 32 rows.
    builtin("I915_X_TILED", MOD_I915_X_TILED, TileWidth::Bytes(512), 8),
    builtin("I915_Y_TILED", MOD_I915_Y_TILED, TileWidth::Bytes(128), 32),
    builtin("I915_4_TILED", MOD_I915_4_TILED, TileWidth::Bytes(128), 32),
    // vc4: T-format tiles are 4 KiB, 128 B x 32 rows at 32 bpp.
    builtin("BROADCOM_VC4_T_TILED", MOD_BROADCOM_VC4_T_TILED, TileWidth::Bytes(128), 32),
    // panfrost: 16x16 pixel blocks.
    builtin("ARM_16X16_BLOCK_U_INTERLEAVED", MOD_ARM_16X16_BLOCK_U_INTERLEAVED, TileWidth::Pixels(16), 16),
];

/// The tile geometry of `value`: `extra` (a platform's own) first, then the built-ins.
pub fn modifier_info(value: u64, extra: &[ModifierInfo]) -> Option<&ModifierInfo> {
    extra.iter().chain(BUILTIN_MODIFIERS).find(|m| m.value == value)
}

/// Parses a modifier: a built-in name (`LINEAR`, `I915_Y_TILED`, with or without the
/// `DRM_FORMAT_MOD_` / `I915_FORMAT_MOD_` prefix) or a number (`0x0100000000000002`).
pub fn parse_modifier(text: &str, extra: &[ModifierInfo]) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let name = match upper.strip_prefix("I915_FORMAT_MOD_") {
        Some(rest) => format!("I915_{rest}"),
        None => upper.trim_start_matches("DRM_FORMAT_MOD_").to_owned(),
    };
    if let Some(m) = extra.iter().chain(BUILTIN_MODIFIERS).find(|m| m.name.eq_ignore_ascii_case(&name)) {
        return Ok(m.value);
    }
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.parse::<u64>(),
    };
    parsed.map_err(|_| format!("unknown modifier {t:?}: use a name such as LINEAR or I915_Y_TILED, or a 64-bit number"))
}

/// The name of a modifier if known, else its hex value.
pub fn modifier_name(value: u64, extra: &[ModifierInfo]) -> String {
    modifier_info(value, extra).map_or_else(|| format!("{value:#018x}"), |m| m.name.to_string())
}

/// Serde for a list of modifiers given as names or numbers.
pub(crate) mod modifier_list_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Value(u64),
        Name(String),
    }

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(|r| match r {
                Repr::Value(v) => Ok(v),
                Repr::Name(n) => super::parse_modifier(&n, &[]).map_err(serde::de::Error::custom),
            })
            .collect()
    }
}

/// Alignments a layout must honour, merged over every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutAlign {
    /// Pitch multiple, in bytes.
    pub pitch: u32,
    /// Plane offset multiple, in bytes.
    pub offset: u32,
    /// Luma height multiple, in rows.
    pub height: u32,
    /// Total size multiple, in bytes.
    pub size: u32,
}

impl LayoutAlign {
    /// No alignment ("packed").
    pub const PACKED: LayoutAlign = LayoutAlign { pitch: 1, offset: 1, height: 1, size: 1 };
}

/// One plane's place in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneLayout {
    /// Byte offset of the plane (`drm_mode_fb_cmd2.offsets[i]`).
    pub offset: u32,
    /// Bytes per row (`drm_mode_fb_cmd2.pitches[i]`).
    pub pitch: u32,
    /// Rows, including padding.
    pub rows: u32,
}

/// A concrete image layout: format, modifier, planes and total size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The format.
    #[serde(with = "fourcc_serde")]
    pub format: DrmFourcc,
    /// The modifier.
    pub modifier: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Up to four planes.
    pub planes: Vec<PlaneLayout>,
    /// Total bytes.
    pub size: u64,
}

/// Why a layout could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// dmaplace has no plane table for the format.
    #[error("no layout rule for format {0}; known formats: {1}")]
    UnknownFormat(String, String),
    /// A width or height of zero.
    #[error("image {width}x{height} has a zero dimension")]
    ZeroDimension {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// An alignment of zero.
    #[error("{0} alignment must be at least 1")]
    ZeroAlignment(&'static str),
    /// Checked arithmetic overflowed.
    #[error(transparent)]
    Overflow(#[from] UnitError),
    /// A value does not fit the DRM ABI's `u32`.
    #[error("{what} of plane {plane} is {value} bytes, which does not fit the u32 of drm_mode_fb_cmd2")]
    TooLarge {
        /// `pitch` or `offset`.
        what: &'static str,
        /// The plane index.
        plane: usize,
        /// The value.
        value: u64,
    },
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Least common multiple of two alignments, naming them on overflow.
pub fn lcm(a_name: &'static str, a: u64, b_name: &'static str, b: u64) -> Result<u64, UnitError> {
    if a == 0 || b == 0 {
        return Ok(a.max(b));
    }
    units::mul(a_name, a / gcd(a, b), b_name, b)
}

fn to_u32(what: &'static str, plane: usize, value: u64) -> Result<u32, LayoutError> {
    u32::try_from(value).map_err(|_| LayoutError::TooLarge { what, plane, value })
}

/// Lays out `width` x `height` of `format` with `tile` geometry and the merged alignments.
///
/// Each plane's pitch is `ceil(width / hsub) * cpp`, rounded up to the pitch alignment (and
/// to whole tiles); its rows are `ceil(aligned_height / vsub)`, rounded up to whole tiles;
/// planes follow each other at offsets rounded up to the offset alignment, and the total is
/// rounded up to the size alignment.
pub fn compute(
    format: DrmFourcc,
    modifier: &ModifierInfo,
    width: u32,
    height: u32,
    align: LayoutAlign,
) -> Result<Layout, LayoutError> {
    let info = format_info(format).ok_or_else(|| {
        let known: Vec<String> = FORMATS.iter().map(|f| fourcc_name(f.fourcc)).collect();
        LayoutError::UnknownFormat(fourcc_name(format), known.join(" "))
    })?;
    if width == 0 || height == 0 {
        return Err(LayoutError::ZeroDimension { width, height });
    }
    for (name, v) in [("pitch", align.pitch), ("offset", align.offset), ("height", align.height), ("size", align.size)]
    {
        if v == 0 {
            return Err(LayoutError::ZeroAlignment(name));
        }
    }
    let luma_rows = units::align_up("height", height.into(), "height_align", align.height.into())?;
    let mut planes = Vec::with_capacity(info.planes.len());
    let mut end = 0u64;
    for (i, p) in info.planes.iter().enumerate() {
        let tile_bytes = match modifier.tile_width {
            TileWidth::Bytes(b) => u64::from(b),
            TileWidth::Pixels(px) => units::mul("tile_width", px.into(), "cpp", p.cpp.into())?,
        };
        let pitch_align = lcm("pitch_align", align.pitch.into(), "tile_width", tile_bytes)?;
        let plane_width = u64::from(width).div_ceil(p.hsub.into());
        let pitch = units::mul("plane_width", plane_width, "cpp", p.cpp.into())?;
        let pitch = units::align_up("pitch", pitch, "pitch_align", pitch_align)?;
        let rows = luma_rows.div_ceil(p.vsub.into());
        let rows = units::align_up("rows", rows, "tile_height", modifier.tile_height.into())?;
        let offset = units::align_up("offset", end, "offset_align", align.offset.into())?;
        end = units::add("offset", offset, "plane_size", units::mul("pitch", pitch, "rows", rows)?)?;
        planes.push(PlaneLayout {
            offset: to_u32("offset", i, offset)?,
            pitch: to_u32("pitch", i, pitch)?,
            rows: to_u32("rows", i, rows)?,
        });
    }
    let size = units::align_up("size", end, "size_align", align.size.into())?;
    Ok(Layout { format, modifier: modifier.value, width, height, planes, size })
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} modifier {}",
            fourcc_name(self.format),
            self.width,
            self.height,
            modifier_name(self.modifier, &[])
        )?;
        for (i, p) in self.planes.iter().enumerate() {
            write!(f, "; plane {i}: offset {} pitch {} rows {}", p.offset, p.pitch, p.rows)?;
        }
        write!(f, "; size {}", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear() -> ModifierInfo {
        modifier_info(MOD_LINEAR, &[]).unwrap().clone()
    }

    fn lay(fmt: &str, w: u32, h: u32, align: LayoutAlign) -> (Vec<(u32, u32)>, u64) {
        let l = compute(parse_fourcc(fmt).unwrap(), &linear(), w, h, align).unwrap();
        (l.planes.iter().map(|p| (p.offset, p.pitch)).collect(), l.size)
    }

    /// Exact numbers for every required format, packed (no alignment), 10x10.
    #[test]
    fn packed_10x10_table() {
        type Case<'a> = (&'a str, &'a [(u32, u32)], u64);
        let cases: &[Case<'_>] = &[
            ("XR24", &[(0, 40)], 400),
            ("AR24", &[(0, 40)], 400),
            ("XB24", &[(0, 40)], 400),
            ("AB24", &[(0, 40)], 400),
            ("RG16", &[(0, 20)], 200),
            ("R8", &[(0, 10)], 100),
            ("GR88", &[(0, 20)], 200),
            ("NV12", &[(0, 10), (100, 10)], 150),
            ("NV21", &[(0, 10), (100, 10)], 150),
            ("NV16", &[(0, 10), (100, 10)], 200),
            ("YU12", &[(0, 10), (100, 5), (125, 5)], 150),
            ("YV12", &[(0, 10), (100, 5), (125, 5)], 150),
            ("P010", &[(0, 20), (200, 20)], 300),
        ];
        for (fmt, planes, size) in cases {
            assert_eq!(lay(fmt, 10, 10, LayoutAlign::PACKED), (planes.to_vec(), *size), "{fmt}");
        }
    }

    /// Odd sizes round chroma up: NV12 11x11 has 6x6 chroma samples of 2 bytes.
    #[test]
    fn odd_dimensions_round_chroma_up() {
        assert_eq!(lay("NV12", 11, 11, LayoutAlign::PACKED), (vec![(0, 11), (121, 12)], 121 + 72));
        assert_eq!(lay("YU12", 11, 11, LayoutAlign::PACKED), (vec![(0, 11), (121, 6), (157, 6)], 193));
    }

    /// 1920x1080 NV12 for a Qualcomm Venus-like device: 128 B pitch, 16-row height, 4 KiB planes.
    #[test]
    fn aligned_nv12_1080p() {
        let align = LayoutAlign { pitch: 128, offset: 4096, height: 16, size: 4096 };
        // 1080 -> 1088 rows; pitch 1920 is already a multiple of 128.
        // plane 0: 1920 * 1088 = 2_088_960 (= 510 pages exactly); plane 1 rows 544.
        assert_eq!(lay("NV12", 1920, 1080, align), (vec![(0, 1920), (2_088_960, 1920)], 3_133_440));
    }

    /// The x86 iGPU (64 B) and dGPU (256 B) together give a 256 B pitch.
    #[test]
    fn xr24_1366_wide_pitch_256() {
        let align = LayoutAlign { pitch: lcm("a", 64, "b", 256).unwrap() as u32, ..LayoutAlign::PACKED };
        assert_eq!(lay("XR24", 1366, 768, align), (vec![(0, 5632)], 5632 * 768));
    }

    #[test]
    fn tiled_layouts_pad_to_whole_tiles() {
        let y = modifier_info(MOD_I915_Y_TILED, &[]).unwrap();
        let l = compute(DrmFourcc::Xrgb8888, y, 100, 100, LayoutAlign::PACKED).unwrap();
        // 400 B -> 512 B (4 tiles of 128 B); 100 rows -> 128 (4 tiles of 32).
        assert_eq!((l.planes[0].pitch, l.planes[0].rows, l.size), (512, 128, 65536));
        let u = modifier_info(MOD_ARM_16X16_BLOCK_U_INTERLEAVED, &[]).unwrap();
        let l = compute(DrmFourcc::Rgb565, u, 20, 20, LayoutAlign::PACKED).unwrap();
        // 16 px * 2 B = 32 B tiles: 40 B -> 64 B; 20 rows -> 32.
        assert_eq!((l.planes[0].pitch, l.planes[0].rows), (64, 32));
    }

    #[test]
    fn overflow_is_named() {
        let err = compute(DrmFourcc::Abgr16161616f, &linear(), u32::MAX, 2, LayoutAlign::PACKED).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pitch of plane 0 is 34359738360 bytes, which does not fit the u32 of drm_mode_fb_cmd2"
        );
        let err = compute(DrmFourcc::Xrgb8888, &linear(), 16, 16, LayoutAlign { pitch: 0, ..LayoutAlign::PACKED })
            .unwrap_err();
        assert_eq!(err, LayoutError::ZeroAlignment("pitch"));
    }

    #[test]
    fn fourcc_and_modifier_names_round_trip() {
        assert_eq!(parse_fourcc("R8").unwrap(), DrmFourcc::R8);
        assert_eq!(fourcc_name(DrmFourcc::R8), "R8");
        assert!(parse_fourcc("ZZZZ").is_err());
        assert!(parse_fourcc("TOOLONG").is_err());
        assert_eq!(parse_modifier("I915_FORMAT_MOD_Y_TILED", &[]).unwrap(), MOD_I915_Y_TILED);
        assert_eq!(parse_modifier("linear", &[]).unwrap(), 0);
        assert_eq!(parse_modifier("0x0100000000000001", &[]).unwrap(), MOD_I915_X_TILED);
        assert_eq!(modifier_name(0x0300_0000_0000_0010, &[]), "0x0300000000000010");
    }
}
