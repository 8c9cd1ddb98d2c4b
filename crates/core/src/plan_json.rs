//! The JSON form of a [`Plan`]: causes are written out as `{device, why}` in words.
//! The schema is documented in `docs/JSON.md`.

use serde::{Serialize, Serializer};

use crate::BoundaryMask;
use crate::effective::Effective;
use crate::iommu::PteCounts;
use crate::layout::{Layout, ModifierInfo};
use crate::model::CacheMode;
use crate::platform::Platform;
use crate::requirements::{Field, Req};
use crate::solver::{Cause, Plan};
use crate::units::{PageSize, Size};
use crate::window::Window;

#[derive(Serialize)]
struct ReqJson<'a, T> {
    value: &'a T,
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct RequirementsJson<'a> {
    window: ReqJson<'a, Window>,
    pool: ReqJson<'a, Option<Window>>,
    max_segments: ReqJson<'a, Option<std::num::NonZeroU32>>,
    max_segment_size: ReqJson<'a, Option<Size>>,
    segment_boundary_mask: ReqJson<'a, BoundaryMask>,
    alignment: ReqJson<'a, PageSize>,
    granule: ReqJson<'a, PageSize>,
    cache_modes: ReqJson<'a, crate::CacheModes>,
    protected: ReqJson<'a, bool>,
}

#[derive(Serialize)]
struct ChunkJson<'a> {
    size: PageSize,
    devices: Vec<&'a str>,
}

#[derive(Serialize)]
struct EntriesJson<'a> {
    device: &'a str,
    iommu: &'a str,
    total: u64,
    ptes: &'a PteCounts,
}

#[derive(Serialize)]
struct PreferencesJson<'a> {
    chunk_sizes: Vec<ChunkJson<'a>>,
    alignment: PageSize,
    min_chunk: Option<Size>,
    entries: Vec<EntriesJson<'a>>,
}

#[derive(Serialize)]
struct LayoutJson<'a> {
    #[serde(flatten)]
    layout: &'a Layout,
    modifier_name: String,
    candidates: &'a [u64],
    rejected: &'a [crate::solver::Rejected],
    pitch_align: ReqJson<'a, u32>,
    offset_align: ReqJson<'a, u32>,
    height_align: ReqJson<'a, u32>,
    size_align: ReqJson<'a, u32>,
}

#[derive(Serialize)]
struct PlanJson<'a> {
    platform: &'a str,
    size: Size,
    contiguous: bool,
    placement: &'a Window,
    sources: &'a [crate::memory::Source],
    requirements: RequirementsJson<'a>,
    cache_mode: ReqJson<'a, CacheMode>,
    preferences: PreferencesJson<'a>,
    layout: Option<LayoutJson<'a>>,
    devices: &'a [Effective],
}

impl Plan {
    fn req<'a, T>(&self, r: &'a Req<T>, field: Field) -> ReqJson<'a, T> {
        ReqJson { value: &r.value, causes: self.causes(r.causes, field) }
    }
}

/// A plan serialized with its platform's own modifier names (`modifier_name`), as the
/// text report names them: see [`Plan::on`].
#[derive(Clone, Copy, Debug)]
pub struct PlanOn<'a> {
    plan: &'a Plan,
    modifiers: &'a [ModifierInfo],
}

impl Plan {
    /// The plan, to serialize with the modifier names of `platform` (the one it was solved
    /// on). Serializing a bare [`Plan`] knows only the built-in names.
    pub fn on<'a>(&'a self, platform: &'a Platform) -> PlanOn<'a> {
        PlanOn { plan: self, modifiers: &platform.modifiers }
    }
}

impl<'a> PlanOn<'a> {
    /// The plan.
    pub fn plan(&self) -> &'a Plan {
        self.plan
    }
}

impl Serialize for PlanOn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.plan.serialize_with(self.modifiers, s)
    }
}

impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.serialize_with(&[], s)
    }
}

impl Plan {
    fn serialize_with<S: Serializer>(&self, modifiers: &[ModifierInfo], s: S) -> Result<S::Ok, S::Error> {
        let r = &self.requirements;
        let pr = &self.preferences;
        let name = |i: usize| self.devices.get(i).map_or("", |e| e.device.as_str());
        let doc = PlanJson {
            platform: &self.platform,
            size: self.size,
            contiguous: self.contiguous(),
            placement: &self.placement,
            sources: &self.sources,
            requirements: RequirementsJson {
                window: self.req(&r.window, Field::Window),
                pool: self.req(&r.pool, Field::Pool),
                max_segments: self.req(&r.max_segments, Field::MaxSegments),
                max_segment_size: self.req(&r.max_segment_size, Field::MaxSegmentSize),
                segment_boundary_mask: self.req(&r.segment_boundary, Field::SegmentBoundary),
                alignment: self.req(&r.alignment, Field::Alignment),
                granule: self.req(&r.granule, Field::Granule),
                cache_modes: self.req(&r.cache_modes, Field::CacheModes),
                protected: self.req(&r.protected, Field::Protected),
            },
            cache_mode: self.req(&self.cache_mode, Field::CacheModes),
            preferences: PreferencesJson {
                chunk_sizes: pr
                    .chunk_sizes
                    .iter()
                    .map(|c| ChunkJson { size: c.size, devices: self.names(c.devices) })
                    .collect(),
                alignment: pr.alignment,
                min_chunk: pr.min_chunk,
                entries: pr
                    .entries
                    .iter()
                    .map(|e| EntriesJson {
                        device: name(e.device),
                        iommu: self.devices.get(e.device).and_then(|d| d.iommu.as_ref()).map_or("", |m| &*m.name),
                        total: e.ptes.total(),
                        ptes: &e.ptes,
                    })
                    .collect(),
            },
            layout: self.layout.as_ref().map(|l| LayoutJson {
                layout: &l.layout,
                modifier_name: crate::layout::modifier_name(l.layout.modifier, modifiers),
                candidates: &l.candidates,
                rejected: &l.rejected,
                pitch_align: self.req(&l.pitch_align, Field::PitchAlign),
                offset_align: self.req(&l.offset_align, Field::OffsetAlign),
                height_align: self.req(&l.height_align, Field::HeightAlign),
                size_align: self.req(&l.size_align, Field::SizeAlign),
            }),
            devices: &self.devices,
        };
        doc.serialize(s)
    }
}
