//! The kernel module's merge (`kernel/plan.rs`, compiled here from the same
//! source) against `dmaplace-core`: on thousands of random device sets the
//! module's requirements, causes, preferred chunk sizes and minimum chunk must
//! equal the core's, its `serves` must agree with `dmaplace_core::verify`, and
//! its `sg_entries` with the core's. Runs on the host; no kernel needed.

#[path = "../../../kernel/plan.rs"]
#[allow(dead_code, clippy::all, clippy::cast_possible_truncation)]
mod plan;

use std::num::NonZeroU32;

use dmaplace_core::effective::Effective as CoreEffective;
use dmaplace_core::model::{Device, DeviceClass, Iommu, LayoutCaps, Placement};
use dmaplace_core::platform::Region;
use dmaplace_core::requirements::Requirements;
use dmaplace_core::{
    Backing, BoundaryMask, BufferDesc, CacheMode, ConflictKind, DmaMask, PageSize, PageSizes, PhysAddr, PhysRange,
    Platform, Request, Size, SolveError, Usage, Window, solve, verify,
};
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

fn mask_bits(m: u64) -> u32 {
    (64 - m.leading_zeros()).max(1)
}

/// The core device the module's constraints describe (as `kmod::AttachInfo::to_device`).
fn core_device(i: usize, d: &DeviceConstraints) -> Device {
    let iommu = (d.iommu_pgsize_bitmap != 0).then(|| Iommu {
        name: "iommu".into(),
        pgsize_bitmap: PageSizes::from_bitmap(d.iommu_pgsize_bitmap & !0xfff),
        iova_bits: DmaMask::new(mask_bits(d.iommu_aperture_end)).unwrap(),
        phys_bits: None,
    });
    Device {
        name: format!("dev{i}"),
        class: DeviceClass::Other,
        bus: Default::default(),
        description: String::new(),
        placement: Placement {
            dma_mask: DmaMask::new(mask_bits(d.dma_mask)).unwrap(),
            bus_dma_limit: (d.bus_dma_limit != 0).then_some(d.bus_dma_limit),
            iommu,
            max_segments: NonZeroU32::new(d.declared_max_segments),
            max_segment_size: Some(Size::new(d.max_segment_size)),
            segment_boundary_mask: BoundaryMask::new(d.segment_boundary_mask).unwrap(),
            alignment: PageSize::new(d.declared_alignment.max(4096)).unwrap(),
            ..Placement::default()
        },
        layout: LayoutCaps::default(),
    }
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

#[test]
fn merge_equals_core_on_random_device_sets() {
    let p = platform();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut solved, mut conflicts) = (0, 0);
    for iter in 0..4000 {
        let n = 1 + usize::try_from(r.below(6)).expect("small");
        let devs: Vec<DeviceConstraints> = (0..n).map(|_| random_device(&mut r)).collect();
        let pages = if r.below(4) == 0 { 65536 } else { 4096 };
        let size = (1 + r.below(pages)) * 4096;
        let m = plan::merge(&devs, size, RAM_END);
        let devices: Vec<Device> = devs.iter().enumerate().map(|(i, d)| core_device(i, d)).collect();
        let ctx = format!("(iteration {iter}, size {size:#x}, devices {devs:#x?})");
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
                if m.conflict.is_none() {
                    // The module does not model memory: only the core's memory checks may fail.
                    assert!(
                        matches!(
                            c.kind,
                            ConflictKind::NoRoom { .. }
                                | ConflictKind::NoContiguousPool { .. }
                                | ConflictKind::NoCommonMemory
                                | ConflictKind::IovaSpace { .. }
                        ),
                        "core conflict {:?} the module misses {ctx}",
                        c.kind
                    );
                }
            }
            Err(e) => panic!("invalid request {e} {ctx}"),
        }
        let s = plan::strategy(&m);
        assert!(s.contiguous || s.n_orders >= 1, "{ctx}");
        assert!(s.orders[..s.n_orders].windows(2).all(|w| w[0] > w[1]), "orders descend {ctx}");
        assert!(s.orders[..s.n_orders].iter().all(|o| *o <= plan::MAX_ORDER), "orders within MAX_ORDER {ctx}");
    }
    assert!(
        solved > 1000 && conflicts > 10,
        "the generator covers both outcomes: {solved} solved, {conflicts} conflicts"
    );
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
}
