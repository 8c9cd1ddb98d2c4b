//! The module's plans and placements against `dmaplace-core` (the differential test).

use std::fmt;
use std::num::NonZeroU32;

use dmaplace_core::effective::Effective as CoreEffective;
use dmaplace_core::model::{Device, DeviceClass, Iommu, LayoutCaps, Placement};
use dmaplace_core::platform::Region;
use dmaplace_core::requirements::Requirements;
use dmaplace_core::{
    BoundaryMask, BufferDesc, CacheMode, ConflictKind, DmaMask, PageSize, PageSizes, PhysAddr, PhysRange, Plan,
    Platform, Request, Size, SolveError, Usage, Window, solve,
};

use super::{AttachInfo, BufferInfo};

fn mask_bits(mask: u64) -> u32 {
    (64 - mask.leading_zeros()).max(1)
}

impl AttachInfo {
    /// The core [`Device`] with the constraints the module read for this
    /// attachment (the kernel's `struct device` plus the declaration).
    pub fn to_device(&self) -> Result<Device, String> {
        let iommu = if self.iommu {
            let pg = PageSizes::from_bitmap(self.pgsize_bitmap & !0xfff);
            Some(Iommu {
                name: "iommu".into(),
                pgsize_bitmap: pg,
                iova_bits: DmaMask::new(mask_bits(self.aperture_end)).map_err(|e| e.to_string())?,
                phys_bits: None,
            })
        } else {
            None
        };
        let placement = Placement {
            dma_mask: DmaMask::new(mask_bits(self.dma_mask)).map_err(|e| e.to_string())?,
            bus_dma_limit: (self.bus_dma_limit != 0).then_some(self.bus_dma_limit),
            iommu,
            max_segments: NonZeroU32::new(self.declared_max_segments),
            max_segment_size: Some(Size::new(self.max_segment_size)),
            segment_boundary_mask: BoundaryMask::new(self.segment_boundary_mask).map_err(|e| e.to_string())?,
            alignment: PageSize::new(self.declared_alignment.max(4096)).map_err(|e| e.to_string())?,
            ..Placement::default()
        };
        Ok(Device {
            name: self.dev.clone(),
            class: DeviceClass::Other,
            bus: Default::default(),
            description: String::new(),
            placement,
            layout: LayoutCaps::default(),
        })
    }
}

/// This guest as a core [`Platform`]: RAM from `/proc/iomem`, the CMA area from
/// debugfs, the page allocator's 4 MiB blocks; no devices or rules (the devices
/// come from what the module reports).
pub fn guest_platform() -> Result<Platform, String> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    let banks: Vec<Region> = crate::parse::iomem(&iomem)
        .system_ram()
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            // Whole pages only (the page allocator manages nothing smaller).
            let start = r.start().get().next_multiple_of(4096);
            let end = r.end().get() & !0xfff;
            (end > start).then(|| Region {
                name: format!("ram{i}"),
                start: PhysAddr::new(start),
                size: Size::new(end - start),
            })
        })
        .collect();
    if banks.is_empty() {
        return Err("/proc/iomem lists no System RAM (not root?)".into());
    }
    let mut cma = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/kernel/debug/cma") {
        for e in dir.flatten() {
            let rd =
                |f: &str| std::fs::read_to_string(e.path().join(f)).ok().and_then(|t| t.trim().parse::<u64>().ok());
            if let (Some(base), Some(count)) = (rd("base_pfn"), rd("count")) {
                cma.push(Region {
                    name: e.file_name().to_string_lossy().into_owned(),
                    start: PhysAddr::new(base * 4096),
                    size: Size::new(count * 4096),
                });
            }
        }
    }
    platform_from_regions("qemu-guest", &banks, &cma)
}

/// A core [`Platform`] with these RAM banks and CMA areas and nothing else
/// (built through its TOML form, so that fields added later keep their defaults).
pub fn platform_from_regions(name: &str, banks: &[Region], cma: &[Region]) -> Result<Platform, String> {
    use std::fmt::Write as _;
    let mut t = format!(
        "[platform]\nname = \"{name}\"\ndescription = \"RAM and CMA as the kernel reports them\"\n\n[memory]\n"
    );
    for (kind, regions) in [("bank", banks), ("cma", cma)] {
        for r in regions {
            let _ = write!(
                t,
                "[[memory.{kind}]]\nname = \"{}\"\nstart = {}\nsize = {}\n",
                r.name,
                r.start.get(),
                r.size.bytes()
            );
        }
    }
    Platform::from_toml(name, &t).map_err(|e| e.to_string())
}

/// A difference between the module's plan and the core solver's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMismatch(pub Vec<String>);

impl fmt::Display for PlanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl BufferInfo {
    /// The backing as a core [`dmaplace_core::Backing`] (cached CPU mapping, unprotected).
    pub fn backing(&self) -> dmaplace_core::Backing {
        let segments = self
            .segments
            .iter()
            .filter_map(|s| PhysRange::from_start_size(PhysAddr::new(s.phys), Size::new(s.len)).ok())
            .collect();
        dmaplace_core::Backing { segments, cache_mode: CacheMode::Cached, protected: false }
    }

    /// The core devices for the current attachments, in order.
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        self.attachments.iter().map(AttachInfo::to_device).collect()
    }

    /// `dmaplace_core::solve` for the same devices and size.
    pub fn core_plan(&self, platform: &Platform) -> Result<Plan, String> {
        let devices = self.devices()?;
        let requests: Vec<Request<'_>> = devices.iter().map(|d| Request { device: d, hints: Usage::empty() }).collect();
        solve(platform, &BufferDesc::Size(Size::new(self.size)), &requests).map_err(|e| format!("core solver: {e}"))
    }

    /// The differential test: the module's merged plan must equal the core's for
    /// the same devices: every requirement's value and causes (always), and, when
    /// the core solver finds a plan, its size, preferred chunk sizes with their
    /// devices and minimum chunk. The module does not model memory, so a core
    /// conflict about memory (no room, no CMA in the window) is an answer, not a
    /// mismatch: it comes back as [`CoreVerdict::conflict`].
    pub fn check_against_core(&self, platform: &Platform) -> Result<CoreVerdict, PlanMismatch> {
        let devices = self.devices().map_err(|e| PlanMismatch(vec![e]))?;
        let mut diffs = Vec::new();
        let causes = |s: dmaplace_core::DeviceSet| s.iter().collect::<Vec<usize>>();
        let mut check = |what: &str, module: String, core: String| {
            if module != core {
                diffs.push(format!("{what}: module {module}, core {core}"));
            }
        };
        let m = &self.plan;
        let ram = platform.memory.ram();
        let mut r: Option<Requirements> = None;
        for (i, d) in devices.iter().enumerate() {
            let one = Requirements::of(&CoreEffective::new(platform, d, Usage::empty()), i, &ram);
            r = Some(match r {
                None => one,
                Some(acc) => acc.merge(&one),
            });
        }
        let Some(r) = r else {
            return if m.conflict == "no_devices" {
                Ok(CoreVerdict { plan: None, conflict: Some("no devices".into()) })
            } else {
                Err(PlanMismatch(vec!["no devices but the module has a plan".into()]))
            };
        };
        check("window", format!("{:?}", Window::below(m.window_end.0)), format!("{:?}", r.window.value));
        check("window causes", format!("{:?}", m.window_end.1), format!("{:?}", causes(r.window.causes)));
        check(
            "max_segments",
            format!("{:?}", m.max_segments.0),
            format!("{:?}", r.max_segments.value.map(|n| u64::from(n.get()))),
        );
        check("max_segments causes", format!("{:?}", m.max_segments.1), format!("{:?}", causes(r.max_segments.causes)));
        check(
            "max_segment_size",
            format!("{:?}", m.max_segment_size.0),
            format!("{:?}", r.max_segment_size.value.map(Size::bytes)),
        );
        check(
            "max_segment_size causes",
            format!("{:?}", m.max_segment_size.1),
            format!("{:?}", causes(r.max_segment_size.causes)),
        );
        check(
            "segment_boundary",
            format!("{:#x}", m.segment_boundary.0),
            format!("{:#x}", r.segment_boundary.value.get()),
        );
        check(
            "segment_boundary causes",
            format!("{:?}", m.segment_boundary.1),
            format!("{:?}", causes(r.segment_boundary.causes)),
        );
        check("alignment", format!("{:#x}", m.alignment.0), format!("{:#x}", r.alignment.value.get()));
        check("alignment causes", format!("{:?}", m.alignment.1), format!("{:?}", causes(r.alignment.causes)));
        check("granule", format!("{:#x}", m.granule.0), format!("{:#x}", r.granule.value.get()));
        check("granule causes", format!("{:?}", m.granule.1), format!("{:?}", causes(r.granule.causes)));
        check("contiguous", format!("{}", m.contiguous), format!("{}", r.contiguous()));
        let requests: Vec<Request<'_>> = devices.iter().map(|d| Request { device: d, hints: Usage::empty() }).collect();
        let verdict = match solve(platform, &BufferDesc::Size(Size::new(self.size)), &requests) {
            Ok(plan) => {
                check("size", format!("{:#x}", m.size), format!("{:#x}", plan.size.bytes()));
                check("conflict", m.conflict.clone(), "none".into());
                let core_prefs: Vec<(u64, Vec<usize>)> =
                    plan.preferences.chunk_sizes.iter().map(|c| (c.size.get(), causes(c.devices))).collect();
                check("chunk sizes", format!("{:?}", m.chunk_prefs), format!("{core_prefs:?}"));
                check(
                    "min_chunk",
                    format!("{:?}", m.min_chunk),
                    format!("{:?}", plan.preferences.min_chunk.map(Size::bytes)),
                );
                CoreVerdict { plan: Some(plan), conflict: None }
            }
            Err(SolveError::Conflict(c)) => {
                let memory = matches!(
                    c.kind,
                    ConflictKind::NoRoom { .. }
                        | ConflictKind::NoContiguousPool { .. }
                        | ConflictKind::NoCommonMemory
                        | ConflictKind::IovaSpace { .. }
                );
                let segments = matches!(c.kind, ConflictKind::SegmentLimit { .. });
                if !(memory || segments && m.conflict == "segment_limit") {
                    check("conflict", m.conflict.clone(), format!("{:?}", c.kind));
                }
                CoreVerdict { plan: None, conflict: Some(c.message.clone()) }
            }
            Err(e) => {
                check("solve", "a plan".into(), e.to_string());
                CoreVerdict { plan: None, conflict: Some(e.to_string()) }
            }
        };
        if diffs.is_empty() { Ok(verdict) } else { Err(PlanMismatch(diffs)) }
    }
}

/// The core solver's answer for a buffer's devices.
#[derive(Clone, Debug)]
pub struct CoreVerdict {
    /// The plan, when one exists.
    pub plan: Option<Plan>,
    /// Why there is none (the core's explanation).
    pub conflict: Option<String>,
}
