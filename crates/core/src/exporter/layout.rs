//! The layout is committed at the first allocation: importers learn the modifier, pitches
//! and offsets then, and from then on they are theirs. A move changes where the pages are,
//! never the layout, so a late attacher whose layout needs the committed layout does not
//! meet is refused with [`ExportError::LayoutConflict`], naming the device, the layout
//! field and both values. Only an explicit re-layout (`Exporter::attach_relayout`, LINEAR
//! only) may change it, and it tells every importer.

use std::fmt;

use serde::Serialize;

use super::error::Result;
use super::*;
use crate::layout::{self, Layout, LayoutError, MOD_LINEAR};
use crate::solver::{LayoutPlan, Request, SolveError, solve};
use crate::units::{self, UnitError};

/// The layout field a late attacher needs and the committed layout does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutField {
    /// The modifier (the device's `layout.formats`, or the LINEAR hint).
    Modifier,
    /// A plane's pitch (`layout.pitch_align`).
    PitchAlign,
    /// A plane's offset (`layout.offset_align`).
    OffsetAlign,
    /// A plane's padded rows (`layout.height_align`).
    HeightAlign,
    /// The total size (`layout.size_align`).
    SizeAlign,
    /// A plane's pitch (`layout.max_pitch`).
    MaxPitch,
}

impl LayoutField {
    /// The platform file's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            LayoutField::Modifier => "modifier",
            LayoutField::PitchAlign => "pitch_align",
            LayoutField::OffsetAlign => "offset_align",
            LayoutField::HeightAlign => "height_align",
            LayoutField::SizeAlign => "size_align",
            LayoutField::MaxPitch => "max_pitch",
        }
    }
}

/// A device's layout need that the committed layout does not meet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutMisfit {
    /// The device.
    pub device: String,
    /// The field.
    pub field: LayoutField,
    /// What the device needs, starting with its parameter
    /// (`height_align = 16: 1088 rows in plane 0 (height 1080 padded to a multiple of 16)`).
    pub needed: String,
    /// What the committed layout has (`1080 rows in plane 0`).
    pub committed: String,
}

impl fmt::Display for LayoutMisfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` needs {}, but the committed layout has {}", self.device, self.needed, self.committed)
    }
}

/// What `eff` (the device `device` as requested) needs of `committed` and does not get.
pub(super) fn misfit(
    platform: &Platform,
    committed: &Layout,
    device: &Device,
    eff: &Effective,
) -> Option<LayoutMisfit> {
    let out = |field, needed: String, committed: String| {
        Some(LayoutMisfit { device: device.name.clone(), field, needed, committed })
    };
    let accepted: &[u64] =
        if eff.linear_only { &[MOD_LINEAR] } else { device.layout.modifiers_for(committed.format).unwrap_or_default() };
    if !accepted.contains(&committed.modifier) {
        let names: Vec<String> = accepted.iter().map(|m| platform.modifier_name(*m)).collect();
        let why = if eff.linear_only { "the LINEAR hint" } else { "layout.formats" };
        let format = layout::fourcc_name(committed.format);
        return out(
            LayoutField::Modifier,
            format!("a modifier in [{}] for {format} ({why})", names.join(", ")),
            format!("modifier {}", platform.modifier_name(committed.modifier)),
        );
    }
    let l = &eff.layout;
    let planes = || committed.planes.iter().enumerate();
    if let Some((i, p)) = planes().find(|(_, p)| !p.pitch.is_multiple_of(l.pitch_align.max(1))) {
        let align = l.pitch_align;
        return out(
            LayoutField::PitchAlign,
            format!("pitch_align = {align}: pitches that are multiples of {align} B"),
            format!("a {} B pitch in plane {i}", p.pitch),
        );
    }
    if let Some(max) = l.max_pitch
        && let Some((i, p)) = planes().find(|(_, p)| p.pitch > max)
    {
        return out(
            LayoutField::MaxPitch,
            format!("max_pitch = {max}: pitches of at most {max} B"),
            format!("a {} B pitch in plane {i}", p.pitch),
        );
    }
    if let Some((i, p)) = planes().find(|(_, p)| !p.offset.is_multiple_of(l.offset_align.max(1))) {
        let align = l.offset_align;
        return out(
            LayoutField::OffsetAlign,
            format!("offset_align = {align}: plane offsets that are multiples of {align} B"),
            format!("plane {i} at offset {} B", p.offset),
        );
    }
    let short = |(i, p): &(usize, &layout::PlaneLayout)| {
        let rows = rows_needed(committed, *i, l.height_align).unwrap_or(u64::MAX);
        (u64::from(p.rows) < rows).then_some((*i, p.rows, rows))
    };
    if let Some((i, have, rows)) = planes().find_map(|ip| short(&ip)) {
        let align = l.height_align;
        return out(
            LayoutField::HeightAlign,
            format!(
                "height_align = {align}: {rows} rows in plane {i} (height {} padded to a multiple of {align})",
                committed.height
            ),
            format!("{have} rows in plane {i}"),
        );
    }
    let align = l.size_align;
    if !committed.size.is_multiple_of(u64::from(align.max(1))) {
        return out(
            LayoutField::SizeAlign,
            format!("size_align = {align}: a size that is a multiple of {align} B"),
            format!("{} B", committed.size),
        );
    }
    None
}

/// Rows plane `plane` needs when the luma height is padded to `height_align`.
fn rows_needed(l: &Layout, plane: usize, height_align: u32) -> Result<u64, UnitError> {
    let vsub = layout::format_info(l.format).and_then(|f| f.planes.get(plane)).map_or(1, |p| p.vsub);
    let luma = units::align_up("height", l.height.into(), "height_align", height_align.max(1).into())?;
    Ok(luma.div_ceil(vsub.into()))
}

/// One plane's part of a re-layout: the image rows copied and their digest, equal in the
/// old and the new layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlaneCopy {
    /// Plane index.
    pub plane: usize,
    /// Image rows copied (padding rows are not image).
    pub rows: u32,
    /// Image bytes per row.
    pub row_bytes: u32,
    /// The plane's offset and pitch before.
    pub from: (u32, u32),
    /// The plane's offset and pitch after.
    pub to: (u32, u32),
    /// Digest of the plane's image rows, the same before and after.
    pub digest: u64,
}

/// The image rows of each plane of a LINEAR layout: `(rows, bytes per row)`.
pub(super) fn image_rows(l: &Layout) -> Result<Vec<(u32, u32)>, LayoutError> {
    let info = layout::format_info(l.format)
        .ok_or_else(|| LayoutError::UnknownFormat(layout::fourcc_name(l.format), String::new()))?;
    info.planes
        .iter()
        .map(|p| {
            let rows = l.height.div_ceil(p.vsub);
            let bytes = units::mul("plane_width", l.width.div_ceil(p.hsub).into(), "cpp", p.cpp.into())?;
            let bytes =
                u32::try_from(bytes).map_err(|_| LayoutError::TooLarge { what: "row", plane: 0, value: bytes })?;
            Ok((rows, bytes))
        })
        .collect()
}

impl<B: Backend> Exporter<B> {
    /// What `device` with `hints` needs of `buffer`'s committed layout and does not get,
    /// asked without attaching: the layout check [`Exporter::attach`] makes (and refuses
    /// with [`ExportError::LayoutConflict`]) once the devices can be placed together.
    /// `None` when the layout suits the device, or nothing is committed yet (no
    /// allocation, or not an image).
    pub fn layout_misfit(&self, buffer: BufferId, device: &str, hints: Usage) -> Result<Option<LayoutMisfit>> {
        let dev = self.platform.require_device(device)?;
        let Some(committed) = self.buffer(buffer)?.layout.as_ref() else {
            return Ok(None);
        };
        Ok(misfit(&self.platform, committed, dev, &Effective::new(&self.platform, dev, hints)))
    }

    /// The plan for `devices` on `buffer`, true to its committed layout once it has one:
    /// every device must accept the committed layout (else [`ExportError::LayoutConflict`]),
    /// and the plan keeps that layout even when the devices would now be served by a
    /// smaller or different one.
    pub(super) fn solve_committed(&self, buffer: BufferId, devices: &[(Device, Usage)]) -> Result<Plan> {
        let plan = self.solve_for(buffer, devices)?;
        let Some(committed) = self.buffer(buffer)?.layout.as_ref().filter(|_| !devices.is_empty()) else {
            return Ok(plan);
        };
        for (device, hints) in devices {
            let eff = Effective::new(&self.platform, device, *hints);
            if let Some(misfit) = misfit(&self.platform, committed, device, &eff) {
                return Err(ExportError::LayoutConflict { buffer, device: device.name.clone(), misfit });
            }
        }
        let Some(planned) = plan.layout.clone() else {
            return Ok(plan);
        };
        if planned.layout == *committed {
            return Ok(plan);
        }
        // The devices' own layout would differ (one that padded more has detached): keep
        // the committed one, and place memory for its size.
        let requests: Vec<Request<'_>> =
            devices.iter().map(|(device, hints)| Request { device, hints: *hints }).collect();
        let desc = BufferDesc::Size(Size::new(committed.size));
        let mut pinned = solve(&self.platform, &desc, &requests).map_err(|e| match e {
            SolveError::Conflict(conflict) => {
                ExportError::Conflict { buffer, device: conflict.devices.join("+"), conflict }
            }
            SolveError::Invalid(i) => ExportError::Invalid(i),
        })?;
        pinned.layout = Some(LayoutPlan { layout: committed.clone(), ..planned });
        Ok(pinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{LayoutAlign, MOD_ARM_16X16_BLOCK_U_INTERLEAVED, compute, modifier_info, parse_fourcc};

    const PLATFORM: &str = r#"
[platform]
name = "fields"
description = "one device with every layout parameter"
[memory]
[[memory.bank]]
name = "dram"
start = 0x8000_0000
size = "256MiB"

[[device]]
name = "cam"
class = "camera"
[device.layout]
pitch_align = 256
offset_align = 4096
height_align = 32
size_align = 65536
max_pitch = 4096
formats = [{ fourcc = "NV12" }]
"#;

    /// The NV12 layout of `width` x 1080 with `modifier` and `align`.
    fn nv12(width: u32, modifier: u64, align: LayoutAlign) -> Layout {
        let info = modifier_info(modifier, &[]).unwrap();
        compute(parse_fourcc("NV12").unwrap(), info, width, 1080, align).unwrap()
    }

    fn check(committed: &Layout, hints: Usage) -> Option<(LayoutField, String)> {
        let p = Platform::from_toml("fields.toml", PLATFORM).unwrap();
        let cam = p.device("cam").unwrap();
        misfit(&p, committed, cam, &Effective::new(&p, cam, hints)).map(|m| (m.field, m.to_string()))
    }

    const PACKED: LayoutAlign = LayoutAlign::PACKED;

    #[test]
    fn each_layout_field_is_named_with_both_values() {
        let pitch = LayoutAlign { pitch: 256, ..PACKED };
        let offset = LayoutAlign { offset: 4096, ..pitch };
        let height = LayoutAlign { height: 32, ..offset };
        let all = LayoutAlign { size: 65536, ..height };
        let cases = [
            (
                nv12(1920, MOD_ARM_16X16_BLOCK_U_INTERLEAVED, PACKED),
                LayoutField::Modifier,
                "`cam` needs a modifier in [LINEAR] for NV12 (layout.formats), but the committed layout has modifier ARM_16X16_BLOCK_U_INTERLEAVED",
            ),
            (
                nv12(1920, MOD_LINEAR, PACKED),
                LayoutField::PitchAlign,
                "`cam` needs pitch_align = 256: pitches that are multiples of 256 B, but the committed layout has a 1920 B pitch in plane 0",
            ),
            (
                nv12(8192, MOD_LINEAR, pitch),
                LayoutField::MaxPitch,
                "`cam` needs max_pitch = 4096: pitches of at most 4096 B, but the committed layout has a 8192 B pitch in plane 0",
            ),
            // 1792 B x 1080 rows = 1935360 B: the chroma plane starts half-way into a page.
            (
                nv12(1792, MOD_LINEAR, pitch),
                LayoutField::OffsetAlign,
                "`cam` needs offset_align = 4096: plane offsets that are multiples of 4096 B, but the committed layout has plane 1 at offset 1935360 B",
            ),
            (
                nv12(1792, MOD_LINEAR, offset),
                LayoutField::HeightAlign,
                "`cam` needs height_align = 32: 1088 rows in plane 0 (height 1080 padded to a multiple of 32), but the committed layout has 1080 rows in plane 0",
            ),
            // 1792 B x 1088 rows = 1949696 B (476 pages), + 1792 x 544 = 2924544 B: not 64 KiB.
            (
                nv12(1792, MOD_LINEAR, height),
                LayoutField::SizeAlign,
                "`cam` needs size_align = 65536: a size that is a multiple of 65536 B, but the committed layout has 2924544 B",
            ),
        ];
        for (layout, field, message) in cases {
            assert_eq!(check(&layout, Usage::empty()), Some((field, message.to_owned())), "{layout}");
        }
        assert_eq!(check(&nv12(1792, MOD_LINEAR, all), Usage::empty()), None, "cam's own layout fits cam");
    }

    #[test]
    fn image_rows_are_the_visible_rows_of_each_plane() {
        let l = nv12(1792, MOD_LINEAR, LayoutAlign { pitch: 256, offset: 4096, height: 32, size: 65536 });
        assert_eq!(l.planes.iter().map(|p| p.rows).collect::<Vec<_>>(), [1088, 544]);
        assert_eq!(image_rows(&l).unwrap(), [(1080, 1792), (540, 1792)]);
    }
}
