//! A device's constraints for one buffer: its own placement, tightened by what the
//! platform says its usage hints mean. Every value carries the reason it has.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::model::{CacheModes, Device, DeviceClass, Iommu, LayoutCaps};
use crate::platform::{HintRule, Platform};
use crate::units::{BoundaryMask, DmaMask, PageSize, Size};
use crate::window::Window;
use crate::Usage;

/// A value and the reason it holds for this device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Why, in words: the device parameter or the platform rule it comes from.
    pub why: String,
}

impl<T> Sourced<T> {
    fn new(value: T, why: impl Into<String>) -> Self {
        Sourced { value, why: why.into() }
    }
}

/// One device's constraints on one buffer, all in terms of **physical** placement.
///
/// Behind an IOMMU the device's own `dma_mask` and segment limits apply to IOVAs, so they
/// do not appear here; what remains is what the IOMMU can reach and its granule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Layout capabilities.
    pub layout: LayoutCaps,
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
            e.require_protected(platform, "PROTECTED hint");
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
                let reach = match mmu.phys_bits {
                    Some(bits) => Sourced::new(Window::below(bits.end()), format!("its IOMMU {} reaches {bits} physical addresses", mmu.name)),
                    None => Sourced::new(Window::everything(), format!("behind IOMMU {}", mmu.name)),
                };
                (reach, Some(mmu.iova_bits.min(p.dma_mask)))
            }
            None => (physical_reach(p.dma_mask, p.bus_dma_limit), None),
        };
        let behind_iommu = p.iommu.is_some();
        let regions = region_pool(platform, &p.regions);
        let granule = p.iommu.as_ref().map_or(PageSize::SZ_4K, Iommu::granule);
        Effective {
            device: d.name.clone(),
            class: d.class,
            hints,
            reach,
            pool: match regions {
                Some(w) => Sourced::new(Some(w), format!("regions = [{}]", p.regions.join(", "))),
                None => Sourced::new(None, "any memory"),
            },
            iommu: p.iommu.clone(),
            iova_space,
            max_segments: if behind_iommu {
                Sourced::new(None, "the IOMMU maps any number of pages as one range")
            } else {
                Sourced::new(p.max_segments, param_why("max_segments", p.max_segments.map(|n| n.to_string())))
            },
            max_segment_size: if behind_iommu {
                Sourced::new(None, "the IOMMU maps any number of pages as one range")
            } else {
                Sourced::new(p.max_segment_size, param_why("max_segment_size", p.max_segment_size.map(|s| s.to_string())))
            },
            segment_boundary: if behind_iommu {
                Sourced::new(BoundaryMask::NONE, "behind an IOMMU")
            } else {
                Sourced::new(p.segment_boundary_mask, format!("segment_boundary_mask = {}", p.segment_boundary_mask))
            },
            alignment: if behind_iommu {
                Sourced::new(granule, format!("IOMMU {} granule", p.iommu.as_ref().map_or("", |m| m.name.as_str())))
            } else {
                Sourced::new(p.alignment, format!("alignment = {}", p.alignment))
            },
            granule: match &p.iommu {
                Some(mmu) => Sourced::new(granule, format!("IOMMU {} maps {} pages at the smallest", mmu.name, granule)),
                None => Sourced::new(granule, "4 KiB pages"),
            },
            cache_modes: Sourced::new(p.cache_modes, format!("cache_modes = {}", p.cache_modes)),
            coherent: p.coherent,
            protected: Sourced::new(false, "no protection needed"),
            protected_access: p.protected_access,
            layout: d.layout.clone(),
            linear_only: false,
        }
        .with_device_protection(platform, p.protected)
    }

    fn with_device_protection(mut self, platform: &Platform, needs: bool) -> Effective {
        if needs {
            self.require_protected(platform, "the device only works on protected memory");
        }
        self
    }

    fn require_protected(&mut self, platform: &Platform, why: &str) {
        self.protected = Sourced::new(true, why);
        let protected = platform.memory.protected();
        let pool = match self.pool.value.take() {
            Some(w) => w.intersect(&protected),
            None => protected,
        };
        self.pool = Sourced::new(Some(pool), format!("{why}: protected carveouts only"));
    }

    fn apply(&mut self, platform: &Platform, device: &Device, rule: &HintRule) {
        let why = format!("{} on {}: {}", rule.hints & self.hints, platform.name, rule.reason);
        if rule.bypass_iommu {
            self.iommu = None;
            self.iova_space = None;
            self.reach = physical_reach(device.placement.dma_mask, device.placement.bus_dma_limit);
            self.granule = Sourced::new(PageSize::SZ_4K, why.clone());
            self.alignment = Sourced::new(device.placement.alignment, format!("alignment = {}", device.placement.alignment));
        }
        let segments = if rule.contiguous { NonZeroU32::new(1) } else { rule.max_segments };
        if let Some(n) = segments {
            if self.max_segments.value.is_none_or(|cur| n < cur) {
                self.max_segments = Sourced::new(Some(n), why.clone());
            }
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
        if let Some(a) = rule.alignment {
            if a > self.alignment.value {
                self.alignment = Sourced::new(a, why.clone());
            }
        }
        if rule.protected {
            self.require_protected(platform, &why);
        }
    }
}

fn param_why(name: &str, value: Option<String>) -> String {
    match value {
        Some(v) => format!("{name} = {v}"),
        None => format!("no {name} limit"),
    }
}

fn physical_reach(mask: DmaMask, bus_dma_limit: Option<u64>) -> Sourced<Window> {
    let mask_end = mask.end();
    match bus_dma_limit {
        Some(limit) if limit.saturating_add(1) < mask_end => {
            let end = limit.saturating_add(1);
            Sourced::new(Window::below(end), format!("bus_dma_limit = {:#x}", limit))
        }
        _ => Sourced::new(Window::below(mask_end), format!("dma_mask = {mask}")),
    }
}

fn region_pool(platform: &Platform, names: &[String]) -> Option<Window> {
    if names.is_empty() {
        return None;
    }
    Some(Window::from_ranges(names.iter().filter_map(|n| platform.memory.region(n)).map(|r| r.range)))
}
