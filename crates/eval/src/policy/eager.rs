//! `eager-system`, `eager-contiguous` and `hint-heap`: allocate when the buffer is
//! created, from a heap, knowing nothing of the devices; judge each import against the
//! importing device alone.
//!
//! A heap is a pseudo-device solved on the platform, so the simulated machine places its
//! buffers with the same allocator as dmaplace's:
//! - **system**: chunks of at most 1 MiB (the system heap's largest order, 8), anywhere in
//!   general memory, cached;
//! - **CMA**: one contiguous run from the platform's default CMA area (the one named `cma`,
//!   else the largest), cached, aligned to the buffer's size order capped at 1 MiB (the
//!   CMA heap's `get_order(size)` capped by `CONFIG_CMA_ALIGNMENT` = 8); on a platform
//!   without CMA, one run from the page allocator (at most its largest block);
//! - **secure**: the first protected carveout.
//!
//! Eager policies get the buffer's final size (the largest layout any attacher, or all
//! of them together, needs), as gralloc computes strides from usage: they are judged on
//! placement only, never on layout.

use std::collections::HashMap;
use std::num::NonZeroU32;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::layout::Layout;
use dmaplace_core::{
    BufferDesc, CacheMode, CacheModes, Device, DeviceClass, Effective, PageSize, Plan, Platform, Request, Size,
    SolveError, Usage, solve, verify,
};
use dmaplace_sim::{Machine, SimBacking, SimMapping};

use super::{Creation, Engine, Fail, Mapped, Policy, Step, internal, pitch, sim_failure};
use crate::metrics::{Failure, Meter, Reason};
use crate::trace::{AttId, BufId, FenceId, MapId};

/// A heap a buffer can come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heap {
    /// The system heap.
    System,
    /// The CMA heap.
    Cma,
    /// A secure heap over a protected carveout.
    Secure,
}

/// The hint-to-heap table of `hint-heap`, as a gralloc or ION client would have it: it
/// sees the usage declared at allocation and nothing of the devices.
///
/// | declared usage | heap |
/// |---|---|
/// | PROTECTED | secure |
/// | SCANOUT, CURSOR, CAMERA_WRITE, CAMERA_READ, VIDEO_DECODE or VIDEO_ENCODE | CMA |
/// | anything else (RENDERING, TEXTURING, CPU use, nothing) | system |
///
/// Contiguous memory for the display, camera and codec usages is what tables do for the
/// many SoCs whose display, camera and codec blocks have no IOMMU.
pub(crate) fn hint_table(usage: Usage) -> Heap {
    let contiguous = Usage::SCANOUT
        | Usage::CURSOR
        | Usage::CAMERA_WRITE
        | Usage::CAMERA_READ
        | Usage::VIDEO_DECODE
        | Usage::VIDEO_ENCODE;
    if usage.contains(Usage::PROTECTED) {
        Heap::Secure
    } else if usage.intersects(contiguous) {
        Heap::Cma
    } else {
        Heap::System
    }
}

/// The platform's default CMA area: the one named `cma`, else the largest.
fn default_cma(p: &Platform) -> Option<&str> {
    let cma = &p.memory.cma;
    cma.iter().find(|c| c.name == "cma").or_else(|| cma.iter().max_by_key(|c| c.size.bytes())).map(|c| c.name.as_str())
}

/// The heap as a pseudo-device for a buffer of `size`.
fn heap_device(p: &Platform, heap: Heap, size: Size) -> Option<Device> {
    let mut d = Device::new(
        match heap {
            Heap::System => "system-heap",
            Heap::Cma => "cma-heap",
            Heap::Secure => "secure-heap",
        },
        DeviceClass::Other,
    );
    d.placement.cache_modes = CacheModes::CACHED;
    match heap {
        Heap::System => {
            // The core stacks a device's `max_segment_size` into the plan (so the machine
            // allocates chunks no longer than it) only when the device also limits the
            // segment count; a count no table reaches keeps the 1 MiB chunks.
            d.placement.max_segment_size = Some(Size::mib(1));
            d.placement.max_segments = Some(NonZeroU32::MAX);
        }
        Heap::Cma => {
            d.placement.max_segments = NonZeroU32::new(1);
            let order_align = size.bytes().next_power_of_two().clamp(PageSize::SZ_4K.get(), PageSize::SZ_1M.get());
            d.placement.alignment = PageSize::new(order_align).unwrap_or(PageSize::SZ_4K);
            d.placement.regions = default_cma(p).map(str::to_owned).into_iter().collect();
        }
        Heap::Secure => {
            let carveout = p.memory.carveouts.iter().find(|c| c.protected)?;
            d.placement.regions = vec![carveout.name.clone()];
            d.placement.protected = true;
        }
    }
    Some(d)
}

#[derive(Debug)]
struct Buf {
    backing: SimBacking,
    key: u64,
    /// The heap's plan (its size is what imports are checked against).
    plan: Plan,
    /// The layout the attachers agree on, for access patterns.
    layout: Option<Layout>,
}

#[derive(Debug)]
struct Att {
    buf: BufId,
    effective: Effective,
}

/// An eager policy.
pub(crate) struct Eager {
    machine: Machine,
    platform: Platform,
    policy: Policy,
    bufs: HashMap<BufId, Buf>,
    atts: HashMap<AttId, Att>,
    maps: HashMap<MapId, (AttId, SimMapping)>,
    next_key: u64,
}

impl Eager {
    pub(crate) fn new(platform: Platform, machine: Machine, policy: Policy) -> Eager {
        Eager {
            machine,
            platform,
            policy,
            bufs: HashMap::new(),
            atts: HashMap::new(),
            maps: HashMap::new(),
            next_key: 0,
        }
    }

    fn heap_for(&self, usage: Usage) -> Heap {
        match self.policy {
            Policy::EagerContiguous => Heap::Cma,
            Policy::HintHeap => hint_table(usage),
            _ => Heap::System,
        }
    }

    /// The size gralloc would allocate: the largest of the attachers' layouts (each alone
    /// and all together), at least the packed image; and the layout they agree on.
    fn sizing(&self, c: &Creation<'_>) -> (Size, Option<Layout>) {
        let devices: Vec<(&Device, Usage)> =
            c.attachers.iter().filter_map(|(d, h)| self.platform.device(d).map(|d| (d, *h))).collect();
        let cpu = Device::new("cpu", DeviceClass::Other);
        let plan = |reqs: &[(&Device, Usage)]| -> Option<Plan> {
            let r: Vec<Request<'_>> = reqs.iter().map(|(d, h)| Request { device: d, hints: *h }).collect();
            solve(&self.platform, c.desc, &r).ok()
        };
        let joint = if devices.is_empty() { None } else { plan(&devices) };
        let mut size = joint.as_ref().map_or(Size::ZERO, |p| p.size);
        for d in devices.iter().copied().chain([(&cpu, Usage::empty())]) {
            if let Some(p) = plan(&[d]) {
                size = size.max(p.size);
            }
        }
        let layout = joint.and_then(|p| p.layout).map(|l| l.layout);
        (size, layout)
    }
}

impl Engine for Eager {
    fn create(&mut self, meter: &mut Meter, c: &Creation<'_>) -> Step {
        let heap = self.heap_for(c.usage);
        let (size, layout) = self.sizing(c);
        let Some(dev) = heap_device(&self.platform, heap, size) else {
            let what = format!("the platform has no protected carveout for a secure heap ({})", c.name);
            return Err(Failure::new(Reason::NoHeap, false, what).into());
        };
        let contiguous = heap == Heap::Cma;
        let plan =
            match solve(&self.platform, &BufferDesc::Size(size), &[Request { device: &dev, hints: Usage::empty() }]) {
                Ok(p) => p,
                // The heap cannot hold the buffer at all (larger than the CMA area).
                Err(SolveError::Conflict(conflict)) => {
                    return Err(Failure::new(Reason::OutOfMemory, contiguous, conflict.message).into());
                }
                Err(e) => return Err(Fail::Internal(e.to_string())),
            };
        let backing = self.machine.allocate_plan(&plan, c.name).map_err(|e| sim_failure(&e))?;
        let segments = self.machine.backing(&backing).map_err(|e| Fail::Internal(e.to_string()))?.segments;
        let key = self.next_key;
        self.next_key += 1;
        meter.allocated(key, segments, contiguous);
        self.bufs.insert(c.buf, Buf { backing, key, plan, layout });
        Ok(())
    }

    fn attach(&mut self, _meter: &mut Meter, att: AttId, buf: BufId, device: &str, hints: Usage) -> Step {
        let dev = self.platform.require_device(device).map_err(|e| Fail::Internal(e.to_string()))?;
        let effective = Effective::new(&self.platform, dev, hints);
        self.atts.insert(att, Att { buf, effective });
        Ok(())
    }

    /// `dma_buf_map_attachment` of a buffer placed without this device in mind: it works
    /// when the pages meet the device's own constraints.
    fn map(&mut self, meter: &mut Meter, map: MapId, att: AttId) -> Step<Mapped> {
        let a = self.atts.get(&att).ok_or_else(|| internal("map"))?;
        let b = self.bufs.get(&a.buf).ok_or_else(|| internal("map"))?;
        let mut described = self.machine.backing(&b.backing).map_err(|e| Fail::Internal(e.to_string()))?;
        let modes = a.effective.cache_modes.value;
        if !modes.has(described.cache_mode) {
            // Works, with cache maintenance a matching mode would not need: counted apart.
            meter.count(|m| m.cache_mode_mismatches += 1);
            described.cache_mode = modes.modes().next().unwrap_or(CacheMode::Cached);
        }
        if let Err(v) = verify(&b.plan, std::slice::from_ref(&a.effective), &described) {
            // Counted as a contiguity failure when the device needs one run and the pages
            // are not one, whichever constraint verify names first.
            let one_run = a.effective.max_segments.value.is_some_and(|n| n.get() == 1);
            let contiguous = one_run && described.runs().len() > 1;
            return Err(Failure::new(Reason::of_constraint(&v.constraint), contiguous, v.to_string()).into());
        }
        let (m, _) = self.machine.map_for(&a.effective, &b.backing).map_err(|e| sim_failure(&e))?;
        meter.mapped(&self.platform, &self.machine, &m, pitch(b.layout.as_ref()));
        self.maps.insert(map, (att, m));
        Ok(Mapped::Live)
    }

    fn fence(&mut self, _meter: &mut Meter, _fence: FenceId, map: MapId) -> Step {
        self.maps.contains_key(&map).then_some(()).ok_or_else(|| internal("fence"))
    }

    fn signal(&mut self, _meter: &mut Meter, _fence: FenceId) -> Step {
        Ok(())
    }

    fn cpu_begin(&mut self, _meter: &mut Meter, buf: BufId, _access: CpuAccess) -> Step {
        self.bufs.contains_key(&buf).then_some(()).ok_or_else(|| internal("cpu-begin"))
    }

    fn cpu_end(&mut self, _meter: &mut Meter, buf: BufId) -> Step {
        self.bufs.contains_key(&buf).then_some(()).ok_or_else(|| internal("cpu-end"))
    }

    fn unmap(&mut self, _meter: &mut Meter, map: MapId) -> Step {
        let (att, m) = self.maps.remove(&map).ok_or_else(|| internal("unmap"))?;
        let a = self.atts.get(&att).ok_or_else(|| internal("unmap"))?;
        self.machine.unmap_for(&a.effective, m).map_err(|e| Fail::Internal(e.to_string()))
    }

    fn detach(&mut self, _meter: &mut Meter, att: AttId) -> Step {
        self.atts.remove(&att).map(|_| ()).ok_or_else(|| internal("detach"))
    }

    fn release(&mut self, meter: &mut Meter, buf: BufId) -> Step {
        let b = self.bufs.remove(&buf).ok_or_else(|| internal("release"))?;
        self.machine.release(b.backing).map_err(|e| Fail::Internal(e.to_string()))?;
        meter.freed(b.key);
        Ok(())
    }

    fn cancel_wait(&mut self, _map: MapId) {}

    fn settled(&mut self) -> Vec<(MapId, Result<(), Failure>)> {
        Vec::new()
    }

    fn machine(&self) -> &Machine {
        &self.machine
    }

    fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }
}

#[cfg(test)]
mod tests {
    use dmaplace_core::builtin;
    use dmaplace_sim::SimConfig;

    use super::*;

    /// The segments the heap's plan gets on an empty machine of `platform`, in bytes.
    fn segments(platform: &str, heap: Heap, size: Size) -> Vec<u64> {
        let p = builtin::load(platform).unwrap().unwrap();
        let dev = heap_device(&p, heap, size).unwrap();
        let plan = solve(&p, &BufferDesc::Size(size), &[Request { device: &dev, hints: Usage::empty() }]).unwrap();
        let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
        let b = m.allocate_plan(&plan, "heap").unwrap();
        m.backing(&b).unwrap().segments.iter().map(|s| s.len().bytes()).collect()
    }

    /// The system heap allocates orders 8 and below: 8 MiB is eight 1 MiB chunks even
    /// where 4 MiB blocks are free (an empty machine), never one 4 MiB block.
    #[test]
    fn the_system_heap_hands_out_chunks_of_at_most_1_mib() {
        for platform in ["x86-desktop", "refsoc", "rpi4"] {
            assert_eq!(segments(platform, Heap::System, Size::mib(8)), [1 << 20; 8], "{platform}");
            // 1 MiB + 68 KiB: one 1 MiB chunk, then smaller ones.
            let odd = segments(platform, Heap::System, Size::kib(1024 + 68));
            assert_eq!((odd[0], odd.iter().sum::<u64>()), (1 << 20, (1024 + 68) << 10), "{platform}");
        }
    }

    /// The CMA heap: one run.
    #[test]
    fn the_cma_heap_hands_out_one_run() {
        assert_eq!(segments("refsoc", Heap::Cma, Size::mib(8)), [8 << 20]);
    }
}
