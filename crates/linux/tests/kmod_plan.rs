//! The kernel module's merge (`kernel/plan.rs`, compiled here from the same
//! source) against `dmaplace-core`: on thousands of random device sets the
//! module's requirements, causes, preferred chunk sizes and minimum chunk must
//! equal the core's, its conflicts the core's (kind and values, on the core's
//! minimal set), its `serves` must agree with `dmaplace_core::verify`, and its
//! `sg_entries` with the core's. The core devices are built by
//! `dmaplace_linux::kmod::AttachInfo::to_device`, the function the guest test
//! uses. Runs on the host; no kernel needed; the device sets come from a fixed
//! seed.

#[path = "../../../kernel/plan.rs"]
#[allow(dead_code, clippy::all, clippy::cast_possible_truncation)]
mod plan;

use std::num::NonZeroU32;

use dmaplace_core::effective::Effective as CoreEffective;
use dmaplace_core::model::Device;
use dmaplace_core::platform::Region;
use dmaplace_core::requirements::Requirements;
use dmaplace_core::solver::Conflict;
use dmaplace_core::{
    Backing, BoundaryMask, BufferDesc, CacheMode, ConflictKind, PhysAddr, PhysRange, Platform, Request, Size,
    SolveError, Usage, Window, solve, verify,
};
use dmaplace_linux::kmod::AttachInfo;
use plan::DeviceConstraints;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[usize::try_from(self.next() % xs.len() as u64).expect("below a slice length")]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A PC-like guest: RAM below 3 GiB and from 4 to 8 GiB, 64 MiB of CMA at 4 GiB.
fn platform() -> Platform {
    let region = |name: &str, start: u64, size: u64| Region {
        name: name.into(),
        start: PhysAddr::new(start),
        size: Size::new(size),
    };
    dmaplace_linux::kmod::platform_from_regions(
        "test",
        &[region("low", 0, 3 * GIB), region("high", 4 * GIB, 4 * GIB)],
        &[region("cma", 4 * GIB, 64 * MIB)],
    )
    .expect("platform")
}

const RAM_END: u64 = 8 * GIB;

fn mask(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1 << bits) - 1 }
}

fn random_device(r: &mut Rng) -> DeviceConstraints {
    let iommu = r.below(3) == 0;
    let pgsizes = [
        0x4020_1000u64,            // VT-d: 4K | 2M | 1G
        0x2021_1000,               // SMMU 4K granule: 4K | 64K | 2M | 512M
        !0xfffu64 & !(2 << 38),    // AMD: every size from 4K
        0x1000,                    // 4K only
        0x0001_0000 | 0x2000_0000, // 64K granule
    ];
    DeviceConstraints {
        dma_mask: mask(r.pick(&[24, 30, 31, 32, 33, 34, 36, 39, 40, 44, 48, 64])),
        bus_dma_limit: if r.below(5) == 0 {
            r.pick(&[0xffff_ffff, 0x7fff_ffff, 0x1_ffff_ffff, 0xff_ffff_ffff])
        } else {
            0
        },
        max_segment_size: r.pick(&[0x1_0000, 0x10_0000, 0x40_0000, u64::from(u32::MAX)]),
        segment_boundary_mask: r.pick(&[u64::MAX, 0xffff_ffff, 0x3f_ffff, 0xffff]),
        iommu_pgsize_bitmap: if iommu { r.pick(&pgsizes) } else { 0 },
        iommu_aperture_end: if iommu { mask(r.pick(&[32, 39, 48])) } else { 0 },
        declared_max_segments: r.pick(&[0, 0, 1, 2, 4, 16, 1000]),
        declared_alignment: r.pick(&[0, 0, 4096, 64 << 10, MIB]),
    }
}

/// The attachment the module would report for `d` (its debugfs line, parsed).
fn attach_info(i: usize, d: &DeviceConstraints) -> AttachInfo {
    AttachInfo {
        idx: i,
        dev: format!("dev{i}"),
        dynamic: false,
        pins: 0,
        maps: 0,
        served: None,
        dma_mask: d.dma_mask,
        bus_dma_limit: d.bus_dma_limit,
        max_segment_size: d.max_segment_size,
        segment_boundary_mask: d.segment_boundary_mask,
        iommu: d.has_iommu(),
        pgsize_bitmap: d.iommu_pgsize_bitmap,
        aperture_end: d.iommu_aperture_end,
        declared_max_segments: d.declared_max_segments,
        declared_alignment: d.declared_alignment,
    }
}

/// The core device the module's constraints describe: exactly what
/// `dmaplace_linux::kmod::AttachInfo::to_device` (which the guest test uses) builds.
fn core_device(i: usize, d: &DeviceConstraints) -> Device {
    attach_info(i, d).to_device().unwrap_or_else(|e| panic!("dev{i} {d:#x?}: {e}"))
}

fn causes(s: dmaplace_core::DeviceSet) -> u32 {
    s.iter().fold(0u32, |acc, i| acc | (1 << i))
}

fn core_requirements(p: &Platform, devices: &[Device]) -> Requirements {
    let ram = p.memory.ram();
    let mut req: Option<Requirements> = None;
    for (i, d) in devices.iter().enumerate() {
        let e = CoreEffective::new(p, d, Usage::empty());
        let r = Requirements::of(&e, i, &ram);
        req = Some(match req {
            None => r,
            Some(acc) => acc.merge(&r),
        });
    }
    req.expect("at least one device")
}

fn check_requirements(m: &plan::Plan, r: &Requirements, ctx: &str) {
    assert_eq!(r.window.value, Window::below(m.window_end.value), "window {ctx}");
    assert_eq!(causes(r.window.causes), m.window_end.causes, "window causes {ctx}");
    assert_eq!(r.max_segments.value.map(NonZeroU32::get), m.max_segments.value, "max_segments {ctx}");
    assert_eq!(causes(r.max_segments.causes), m.max_segments.causes, "max_segments causes {ctx}");
    assert_eq!(r.max_segment_size.value.map(Size::bytes), m.max_segment_size.value, "max_segment_size {ctx}");
    assert_eq!(causes(r.max_segment_size.causes), m.max_segment_size.causes, "max_segment_size causes {ctx}");
    assert_eq!(r.segment_boundary.value.get(), m.segment_boundary.value, "boundary {ctx}");
    assert_eq!(causes(r.segment_boundary.causes), m.segment_boundary.causes, "boundary causes {ctx}");
    assert_eq!(r.alignment.value.get(), m.alignment.value, "alignment {ctx}");
    assert_eq!(causes(r.alignment.causes), m.alignment.causes, "alignment causes {ctx}");
    assert_eq!(r.granule.value.get(), m.granule.value, "granule {ctx}");
    assert_eq!(causes(r.granule.causes), m.granule.causes, "granule causes {ctx}");
    assert_eq!(r.contiguous(), m.contiguous(), "contiguous {ctx}");
}

/// The committed seed of the random device sets; `DMAPLACE_KMOD_PLAN_SEED=<u64>` replays
/// another (the failure message names the seed in use).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

#[test]
fn merge_equals_core_on_random_device_sets() {
    let p = platform();
    let seed = match std::env::var("DMAPLACE_KMOD_PLAN_SEED") {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| panic!("DMAPLACE_KMOD_PLAN_SEED={v:?} is not a u64")),
        _ => SEED,
    };
    eprintln!("merge_equals_core_on_random_device_sets: seed {seed} (DMAPLACE_KMOD_PLAN_SEED)");
    let mut r = Rng(seed.max(1));
    let (mut solved, mut conflicts, mut segment_conflicts) = (0, 0, 0);
    for iter in 0..4000 {
        let n = 1 + usize::try_from(r.below(6)).expect("small");
        let devs: Vec<DeviceConstraints> = (0..n).map(|_| random_device(&mut r)).collect();
        let pages = if r.below(4) == 0 { 65536 } else { 4096 };
        let size = (1 + r.below(pages)) * 4096;
        let m = plan::merge(&devs, size, RAM_END);
        let devices: Vec<Device> = devs.iter().enumerate().map(|(i, d)| core_device(i, d)).collect();
        let ctx = format!("(seed {seed}, iteration {iter}, size {size:#x}, devices {devs:#x?})");
        check_requirements(&m, &core_requirements(&p, &devices), &ctx);
        let requests: Vec<Request<'_>> = devices.iter().map(|d| Request { device: d, hints: Usage::empty() }).collect();
        match solve(&p, &BufferDesc::Size(Size::new(size)), &requests) {
            Ok(core) => {
                solved += 1;
                assert_eq!(m.conflict, None, "the module sees a conflict the core does not {ctx}");
                assert_eq!(core.size.bytes(), m.size, "size {ctx}");
                let prefs: Vec<(u64, u32)> =
                    core.preferences.chunk_sizes.iter().map(|c| (c.size.get(), causes(c.devices))).collect();
                let mine: Vec<(u64, u32)> = m.chunk_sizes().iter().map(|c| (c.size, c.devices)).collect();
                assert_eq!(prefs, mine, "chunk sizes {ctx}");
                assert_eq!(core.preferences.min_chunk.map(Size::bytes), m.min_chunk, "min_chunk {ctx}");
                check_serves(&mut r, &core, &devs, m.size, &ctx);
            }
            Err(SolveError::Conflict(c)) => {
                conflicts += 1;
                segment_conflicts += usize::from(same_conflict(&c, &devs, size, &ctx));
            }
            Err(e) => panic!("invalid request {e} {ctx}"),
        }
        let s = plan::strategy(&m);
        assert!(s.contiguous || s.n_orders >= 1, "{ctx}");
        assert!(s.orders[..s.n_orders].windows(2).all(|w| w[0] > w[1]), "orders descend {ctx}");
        assert!(s.orders[..s.n_orders].iter().all(|o| *o <= plan::MAX_ORDER), "orders within MAX_ORDER {ctx}");
    }
    assert!(
        solved > 1000 && conflicts > 10 && segment_conflicts > 10,
        "the generator covers both outcomes: {solved} solved, {conflicts} conflicts ({segment_conflicts} segment limits)"
    );
}

/// The module's answer for the core's minimal conflicting set agrees with the core's kind:
/// the same segment limit (values included), no conflict where the core ran out of memory
/// after the segment checks passed, and anything where the module cannot see why (the
/// memory window, the IOVA space). Returns whether it compared a segment limit.
fn same_conflict(c: &Conflict, devs: &[DeviceConstraints], size: u64, ctx: &str) -> bool {
    let minimal: Vec<DeviceConstraints> = c
        .devices
        .iter()
        .map(|n| devs[n.strip_prefix("dev").and_then(|i| i.parse::<usize>().ok()).expect("devN")])
        .collect();
    let m = plan::merge(&minimal, size, RAM_END).conflict;
    let segments = matches!(c.kind, ConflictKind::SegmentLimit { .. } | ConflictKind::SegmentSize { .. });
    match c.kind {
        ConflictKind::SegmentLimit { max_segments, segment_cap, .. } => assert_eq!(
            m,
            Some(plan::Conflict::SegmentLimit { max_segments, segment_cap: segment_cap.bytes() }),
            "{:?} {ctx}",
            c.devices
        ),
        ConflictKind::SegmentSize { .. } => assert!(
            matches!(m, Some(plan::Conflict::SegmentLimit { segment_cap: 0, .. })),
            "{m:?} for {:?} {ctx}",
            c.devices
        ),
        ConflictKind::NoRoom { .. } | ConflictKind::NoContiguousPool { .. } => {
            assert_eq!(m, None, "the core's segment checks passed for {:?} {ctx}", c.devices);
        }
        ConflictKind::NoCommonMemory | ConflictKind::IovaSpace { .. } => {}
        ref other => panic!("core conflict {other:?} cannot arise from kernel devices {ctx}"),
    }
    segments
}

/// Random backings: the module's `serves` agrees with `dmaplace_core::verify`
/// device by device, and `sg_entries` with the core's count.
fn check_serves(r: &mut Rng, core: &dmaplace_core::Plan, devs: &[DeviceConstraints], size: u64, ctx: &str) {
    for _ in 0..4 {
        let mut segs = Vec::new();
        let mut left = size;
        let mut at = r.pick(&[0, 3 * GIB - 64 * MIB, 4 * GIB, 6 * GIB]) + r.below(64) * 0x1000;
        while left > 0 {
            let len = (r.pick(&[0x1000u64, 0x1_0000, 0x20_0000, 0x40_0000, 0x100_0000])).min(left);
            segs.push((at, len));
            left -= len;
            at += len + if r.below(3) == 0 { 0 } else { r.below(16) * 0x1000 + 0x1000 };
        }
        let backing = Backing {
            segments: segs
                .iter()
                .map(|&(s, l)| PhysRange::from_start_size(PhysAddr::new(s), Size::new(l)).unwrap())
                .collect(),
            cache_mode: CacheMode::Cached,
            protected: false,
        };
        for (i, d) in devs.iter().enumerate() {
            let mine = plan::serves(&plan::Effective::of(d), size, segs.iter().copied()).is_ok();
            let theirs = verify(core, std::slice::from_ref(&core.devices[i]), &backing).is_ok();
            assert_eq!(mine, theirs, "serves vs verify for dev{i} on {segs:#x?} {ctx}");
            let e = plan::Effective::of(d);
            let a = plan::sg_entries(segs.iter().copied(), e.max_segment_size, e.segment_boundary);
            let b = dmaplace_core::verify::sg_entries(
                &backing,
                e.max_segment_size.map(Size::new),
                BoundaryMask::new(e.segment_boundary).unwrap(),
            );
            assert_eq!(a, b, "sg_entries {ctx}");
        }
    }
}

#[test]
fn the_seed_scenarios_merge_as_expected() {
    let display = DeviceConstraints {
        dma_mask: mask(32),
        bus_dma_limit: 0,
        max_segment_size: 4 * MIB,
        segment_boundary_mask: u64::MAX,
        iommu_pgsize_bitmap: 0,
        iommu_aperture_end: 0,
        declared_max_segments: 1,
        declared_alignment: 0,
    };
    let gpu = DeviceConstraints {
        dma_mask: u64::MAX,
        iommu_pgsize_bitmap: 0x4020_1000,
        iommu_aperture_end: mask(39),
        declared_max_segments: 4,
        ..display
    };
    let m = plan::merge(&[display, gpu], 8 * MIB, RAM_END);
    // The display (index 0) makes it contiguous and below 4 GiB; the GPU's declared
    // segment limit does not count behind its IOMMU.
    assert!(m.contiguous());
    assert_eq!((m.window_end.value, m.window_end.causes), (4 * GIB, 0b01));
    assert_eq!(m.max_segments.causes, 0b01);
    assert!(plan::strategy(&m).contiguous);
    // The GPU alone: chunks of 2 MiB then 4 KiB, the VT-d page sizes.
    let g = plan::merge(&[gpu], 8 * MIB + 4096, RAM_END);
    let s = plan::strategy(&g);
    assert_eq!(&s.orders[..s.n_orders], &[9, 0]);
    assert_eq!(g.chunk_sizes().iter().map(|c| c.size).collect::<Vec<_>>(), vec![2 * MIB, 4096]);
    // Four segments without an IOMMU: 8 MiB needs chunks of at least 2 MiB.
    let isp = DeviceConstraints { declared_max_segments: 4, dma_mask: u64::MAX, ..display };
    let i = plan::merge(&[isp], 8 * MIB, RAM_END);
    assert_eq!(i.min_chunk, Some(2 * MIB));
    let s = plan::strategy(&i);
    assert_eq!(&s.orders[..s.n_orders], &[10, 9]);
    // Nothing to please: the largest blocks first, as the system heap does.
    let any = plan::merge(&[DeviceConstraints { declared_max_segments: 0, ..isp }], MIB, RAM_END);
    let s = plan::strategy(&any);
    assert_eq!(&s.orders[..s.n_orders], &[10, 9, 8, 4, 0]);
    // 64 KiB segments cannot make 8 MiB in 4 pieces.
    let tiny = DeviceConstraints { max_segment_size: 0x1_0000, ..isp };
    assert!(matches!(plan::merge(&[tiny], 8 * MIB, RAM_END).conflict, Some(plan::Conflict::SegmentLimit { .. })));
    // max_segment_size is used in whole pages, as lib/scatterlist.c does: 0x1_0fff is
    // 64 KiB, so 4 segments hold 256 KiB, not 4 x 68 KiB.
    let odd = DeviceConstraints { max_segment_size: 0x1_0fff, ..isp };
    assert_eq!(plan::Effective::of(&odd).max_segment_size, Some(0x1_0000));
    assert_eq!(
        plan::merge(&[odd], 272 * 1024, RAM_END).conflict,
        Some(plan::Conflict::SegmentLimit { max_segments: 4, segment_cap: 0x1_0000 })
    );
    assert_eq!(plan::merge(&[odd], 256 * 1024, RAM_END).conflict, None);
    // A device that takes any number of entries does not stack its (default 64 KiB)
    // max_segment_size onto the contiguous display: 8 MiB scanout is fine.
    let wide = DeviceConstraints { max_segment_size: u64::from(u32::MAX), ..display };
    let plain = DeviceConstraints { max_segment_size: 0x1_0000, declared_max_segments: 0, ..display };
    let both = plan::merge(&[wide, plain], 8 * MIB, RAM_END);
    assert_eq!((both.conflict, both.max_segment_size.value), (None, Some(0xffff_f000)));
    assert_eq!(both.max_segment_size.causes, 0b01);
    // Below one page nothing can be mapped: the core's segment_size conflict.
    let below = DeviceConstraints { max_segment_size: 2048, declared_max_segments: 0, ..display };
    let m = plan::merge(&[below], 8 * MIB, RAM_END);
    assert_eq!(m.conflict, Some(plan::Conflict::SegmentLimit { max_segments: u32::MAX, segment_cap: 0 }));
    let p = platform();
    let d = [core_device(0, &below)];
    match solve(&p, &BufferDesc::Size(Size::mib(8)), &[Request { device: &d[0], hints: Usage::empty() }]) {
        Err(SolveError::Conflict(c)) => {
            assert_eq!(c.kind, ConflictKind::SegmentSize { max_segment_size: Size::ZERO });
            assert!(same_conflict(&c, &[below], 8 * MIB, "below one page"));
        }
        other => panic!("{other:?}"),
    }
}
