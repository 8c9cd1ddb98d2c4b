//! Algebraic laws and soundness of the solver, checked with proptest (10,000 cases each
//! unless `PROPTEST_CASES` says otherwise).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};

use dmaplace_core::layout::{MOD_I915_X_TILED, MOD_I915_Y_TILED, MOD_LINEAR};
use dmaplace_core::platform::HintRule;
use dmaplace_core::*;
use drm_fourcc::DrmFourcc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const PLATFORM: &str = r#"
[platform]
name = "lawful"
description = "synthetic platform for property tests"
[memory]
[[memory.bank]]
name = "low"
start = 0
size = "2GiB"
[[memory.bank]]
name = "high"
start = 0x1_0000_0000
size = "4GiB"
[[memory.cma]]
name = "cma-low"
start = 0x3000_0000
size = "64MiB"
[[memory.cma]]
name = "cma"
start = 0x7000_0000
size = "256MiB"
[[memory.carveout]]
name = "carve"
start = 0x1_2000_0000
size = "128MiB"
[[memory.carveout]]
name = "secure"
start = 0x1_8000_0000
size = "64MiB"
protected = true
"#;

fn base_platform() -> Platform {
    Platform::from_toml("lawful", PLATFORM).unwrap()
}

const REGIONS: [&str; 5] = ["low", "high", "cma", "carve", "secure"];

fn pgsizes() -> impl Strategy<Value = PageSizes> {
    prop_oneof![
        Just(PageSizes::SZ_4K_ONLY),
        Just(PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_2M, PageSize::SZ_1G])),
        Just(PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_64K, PageSize::SZ_1M, PageSize::SZ_16M])),
        Just(PageSizes::from_sizes([PageSize::SZ_64K, PageSize::new(512 << 20).unwrap()])),
        Just(PageSizes::from_sizes([PageSize::SZ_16K, PageSize::new(32 << 20).unwrap()])),
    ]
}

fn iommu() -> impl Strategy<Value = Option<Iommu>> {
    prop_oneof![
        2 => Just(None),
        1 => (pgsizes(), 28u32..=48, prop::option::of(30u32..=40)).prop_map(|(p, iova, phys)| Some(Iommu {
            name: "mmu".into(),
            pgsize_bitmap: p,
            iova_bits: DmaMask::new(iova).unwrap(),
            phys_bits: phys.map(|b| DmaMask::new(b).unwrap()),
        })),
    ]
}

fn cache_modes() -> impl Strategy<Value = CacheModes> {
    (1u8..8).prop_map(CacheModes::from_bits_truncate)
}

fn placement() -> impl Strategy<Value = Placement> {
    (
        (
            28u32..=64,
            prop::option::of(0x2000_0000u64..0x2_0000_0000),
            prop::sample::subsequence(REGIONS.to_vec(), 0..=2),
            iommu(),
        ),
        (
            prop::option::of(1u32..=8),
            prop::option::of(prop::sample::select(vec![Size::kib(64), Size::mib(1), Size::mib(4), Size::mib(64)])),
            prop::sample::select(vec![
                BoundaryMask::NONE,
                BoundaryMask::new(0xffff).unwrap(),
                BoundaryMask::new(0xff_ffff).unwrap(),
            ]),
            prop::sample::select(vec![PageSize::SZ_4K, PageSize::SZ_64K, PageSize::SZ_1M, PageSize::SZ_2M]),
        ),
        (cache_modes(), any::<bool>(), prop::bool::weighted(0.05), prop::bool::weighted(0.9)),
    )
        .prop_map(
            |(
                (mask, limit, regions, iommu),
                (segs, seg_size, boundary, align),
                (cache, coherent, protected, access),
            )| Placement {
                dma_mask: DmaMask::new(mask).unwrap(),
                bus_dma_limit: limit,
                regions: regions.into_iter().map(String::from).collect(),
                iommu,
                max_segments: segs.and_then(NonZeroU32::new),
                max_segment_size: seg_size,
                segment_boundary_mask: boundary,
                alignment: align,
                cache_modes: cache,
                coherent,
                protected,
                protected_access: access,
            },
        )
}

fn layout_caps() -> impl Strategy<Value = LayoutCaps> {
    let fmt = prop::sample::select(vec![DrmFourcc::Xrgb8888, DrmFourcc::Nv12, DrmFourcc::Rgb565]);
    let mods = prop::sample::subsequence(vec![MOD_LINEAR, MOD_I915_X_TILED, MOD_I915_Y_TILED], 1..=3);
    let formats =
        prop::collection::vec((fmt, mods).prop_map(|(fourcc, modifiers)| FormatCaps { fourcc, modifiers }), 0..3);
    let align = prop::sample::select(vec![1u32, 16, 64, 256]);
    (formats, align.clone(), align.clone(), prop::sample::select(vec![1u32, 2, 16]), prop::option::of(1024u32..8192))
        .prop_map(|(formats, pitch_align, offset_align, height_align, max_width)| LayoutCaps {
            formats,
            pitch_align,
            offset_align,
            height_align,
            size_align: 1,
            max_width,
            max_height: None,
            max_pitch: None,
        })
}

fn device(i: usize) -> impl Strategy<Value = Device> {
    (placement(), layout_caps()).prop_map(move |(placement, layout)| Device {
        placement,
        layout,
        ..Device::new(format!("d{i}"), DeviceClass::Other)
    })
}

/// A platform with `n` random devices and a few hint rules.
fn platform(max_devices: usize) -> impl Strategy<Value = Platform> {
    (1..=max_devices).prop_flat_map(|n| (0..n).map(device).collect::<Vec<_>>()).prop_map(|devices| {
        let mut p = base_platform();
        p.rules = vec![
            HintRule {
                device: "d0".into(),
                hints: Usage::SCANOUT,
                reason: "test rule".into(),
                contiguous: true,
                max_segments: None,
                dma_bits: Some(DmaMask::BITS_32),
                regions: vec![],
                cache_modes: None,
                alignment: None,
                bypass_iommu: true,
                protected: false,
            },
            HintRule {
                device: "*".into(),
                hints: Usage::VIDEO_ENCODE,
                reason: "test rule".into(),
                contiguous: false,
                max_segments: NonZeroU32::new(4),
                dma_bits: None,
                regions: vec![],
                cache_modes: Some(CacheModes::WRITE_COMBINED | CacheModes::CACHED),
                alignment: Some(PageSize::SZ_64K),
                bypass_iommu: false,
                protected: false,
            },
        ];
        p.devices = devices;
        p
    })
}

fn hints() -> impl Strategy<Value = Usage> {
    prop::sample::select(vec![
        Usage::empty(),
        Usage::SCANOUT,
        Usage::VIDEO_ENCODE,
        Usage::RENDERING,
        Usage::LINEAR,
        Usage::PROTECTED,
    ])
}

fn desc() -> impl Strategy<Value = BufferDesc> {
    prop_oneof![
        (1u64..=(64 << 20)).prop_map(|b| BufferDesc::Size(Size::new(b))),
        (1u32..=4096, 1u32..=2160, prop::sample::select(vec![DrmFourcc::Xrgb8888, DrmFourcc::Nv12, DrmFourcc::Rgb565]))
            .prop_map(|(width, height, format)| BufferDesc::Image(ImageDesc {
                width,
                height,
                format,
                modifiers: vec![]
            })),
    ]
}

/// A case: platform, buffer, and the requests (indices into devices with hints).
fn case(max_devices: usize) -> impl Strategy<Value = (Platform, BufferDesc, Vec<(usize, Usage)>)> {
    (platform(max_devices), desc()).prop_flat_map(|(p, d)| {
        let n = p.devices.len();
        (Just(p), Just(d), prop::collection::vec((0..n, hints()), 1..=n.min(5)))
    })
}

fn requests<'a>(p: &'a Platform, picks: &[(usize, Usage)]) -> Vec<Request<'a>> {
    picks.iter().map(|&(i, hints)| Request { device: &p.devices[i], hints }).collect()
}

fn reqs_of(p: &Platform, r: &[Request<'_>]) -> Requirements {
    let ram = p.memory.ram();
    r.iter()
        .enumerate()
        .map(|(i, q)| Requirements::of(&Effective::new(p, q.device, q.hints), i, &ram))
        .reduce(|a, b| a.merge(&b))
        .unwrap()
}

/// The requirements with causes as sorted device names (indices depend on request order).
fn by_name(plan: &Plan) -> Vec<(String, Vec<String>)> {
    let r = &plan.requirements;
    let names = |set: DeviceSet| {
        let mut v: Vec<String> = plan.names(set).into_iter().map(String::from).collect();
        v.sort();
        v
    };
    vec![
        (format!("{:?}", r.window.value), names(r.window.causes)),
        (format!("{:?}", r.pool.value), names(r.pool.causes)),
        (format!("{:?}", r.max_segments.value), names(r.max_segments.causes)),
        (format!("{:?}", r.max_segment_size.value), names(r.max_segment_size.causes)),
        (format!("{:?}", r.segment_boundary.value), names(r.segment_boundary.causes)),
        (format!("{:?}", r.alignment.value), names(r.alignment.causes)),
        (format!("{:?}", r.granule.value), names(r.granule.causes)),
        (format!("{:?}", r.cache_modes.value), names(r.cache_modes.causes)),
        (format!("{:?}", r.protected.value), names(r.protected.causes)),
    ]
}

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn merge_is_commutative_associative_idempotent() {
    runner()
        .run(&(platform(3), prop::collection::vec(hints(), 3)), |(p, h)| {
            let n = p.devices.len();
            let ram = p.memory.ram();
            let r: Vec<Requirements> =
                (0..3).map(|i| Requirements::of(&Effective::new(&p, &p.devices[i % n], h[i]), i, &ram)).collect();
            prop_assert_eq!(r[0].merge(&r[1]), r[1].merge(&r[0]));
            prop_assert_eq!(r[0].merge(&r[1]).merge(&r[2]), r[0].merge(&r[1].merge(&r[2])));
            prop_assert_eq!(r[0].merge(&r[0]), r[0].clone());
            Ok(())
        })
        .unwrap();
}

#[test]
fn solving_ignores_request_order() {
    runner()
        .run(&case(5), |(p, d, picks)| {
            let fwd = requests(&p, &picks);
            let mut rev = fwd.clone();
            rev.reverse();
            let (a, b) = (solve(&p, &d, &fwd), solve(&p, &d, &rev));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(by_name(&a), by_name(&b));
                    prop_assert_eq!(a.size, b.size);
                    prop_assert_eq!(a.layout.map(|l| l.layout), b.layout.map(|l| l.layout));
                    prop_assert_eq!(a.cache_mode.value, b.cache_mode.value);
                }
                (Err(SolveError::Conflict(_)), Err(SolveError::Conflict(_))) => {}
                (Err(SolveError::Invalid(a)), Err(SolveError::Invalid(b))) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "order changed the outcome: {a:?} vs {b:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn adding_a_device_never_loosens() {
    runner()
        .run(&case(5), |(p, d, picks)| {
            let all = requests(&p, &picks);
            let fewer = &all[..all.len() - 1];
            if fewer.is_empty() {
                return Ok(());
            }
            prop_assert!(reqs_of(&p, &all).at_least_as_tight_as(&reqs_of(&p, fewer)));
            if let Ok(big) = solve(&p, &d, &all) {
                let small = solve(&p, &d, fewer);
                prop_assert!(small.is_ok(), "a subset of a satisfiable set failed: {small:?}");
                let small = small.unwrap();
                // A smaller common modifier set may pick a different (smaller) layout; with
                // the same modifier, more devices only add alignment.
                let same_modifier =
                    big.layout.as_ref().map(|l| l.layout.modifier) == small.layout.as_ref().map(|l| l.layout.modifier);
                prop_assert!(!same_modifier || big.size >= small.size);
                prop_assert!(big.requirements.hard_window().is_subset_of(&small.requirements.hard_window()));
            }
            Ok(())
        })
        .unwrap();
}

static ADMITTED: AtomicUsize = AtomicUsize::new(0);
static SOLVED: AtomicUsize = AtomicUsize::new(0);

/// A backing built from the plan's placement window: `k` pieces of the buffer in random
/// granule-aligned spots (contiguous when the plan says so).
fn backing_for(plan: &Plan, seed: u64, k: usize) -> Option<Backing> {
    let g = plan.requirements.granule.value.get();
    let size = plan.size.bytes();
    let k = if plan.contiguous() { 1 } else { k.max(1) };
    let piece = size.div_ceil(k as u64).div_ceil(g) * g;
    let mut segments = Vec::new();
    let mut left = size;
    let mut x = seed;
    let ranges = plan.placement.ranges();
    for i in 0..k {
        if left == 0 {
            break;
        }
        let len = piece.min(left);
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = ranges[(x >> 33) as usize % ranges.len()];
        let align = if i == 0 { plan.requirements.alignment.value.get().max(g) } else { g };
        let room = r.len().bytes().checked_sub(len)?;
        let start = (r.start().get() + (x % (room + 1))).div_ceil(align) * align;
        let seg = PhysRange::from_start_size(PhysAddr::new(start), Size::new(len)).ok()?;
        if !r.contains_range(seg) {
            return None;
        }
        segments.push(seg);
        left -= len;
    }
    Some(Backing { segments, cache_mode: plan.cache_mode.value, protected: plan.requirements.protected.value })
}

#[test]
fn plan_soundness_admitted_backings_satisfy_every_device() {
    runner()
        .run(&(case(5), any::<u64>(), 1usize..6), |((p, d, picks), seed, k)| {
            let Ok(plan) = solve(&p, &d, &requests(&p, &picks)) else { return Ok(()) };
            SOLVED.fetch_add(1, Ordering::Relaxed);
            let Some(b) = backing_for(&plan, seed, k) else { return Ok(()) };
            if plan.admits(&b) {
                ADMITTED.fetch_add(1, Ordering::Relaxed);
                let v = verify(&plan, &plan.devices, &b);
                prop_assert!(v.is_ok(), "admitted backing {b:?} fails: {v:?}");
            }
            Ok(())
        })
        .unwrap();
    let (solved, admitted) = (SOLVED.load(Ordering::Relaxed), ADMITTED.load(Ordering::Relaxed));
    assert!(
        solved > 0 && admitted * 4 >= solved,
        "the property must not be vacuous: {admitted} admitted of {solved} solved"
    );
}

#[test]
fn conflicts_name_a_minimal_unsatisfiable_set() {
    let conflicts = AtomicUsize::new(0);
    runner()
        .run(&case(6), |(p, d, picks)| {
            let all = requests(&p, &picks);
            let Err(SolveError::Conflict(c)) = solve(&p, &d, &all) else { return Ok(()) };
            conflicts.fetch_add(1, Ordering::Relaxed);
            // Map the named devices back to the requests they came from (first match each).
            let mut used = vec![false; all.len()];
            let named: Vec<Request<'_>> = c
                .devices
                .iter()
                .zip(&c.hints)
                .map(|(n, h)| {
                    let i = (0..all.len())
                        .find(|&i| !used[i] && all[i].device.name == *n && all[i].hints == *h)
                        .expect("named device was requested");
                    used[i] = true;
                    all[i]
                })
                .collect();
            prop_assert!(
                matches!(solve(&p, &d, &named), Err(SolveError::Conflict(_))),
                "named set {:?} is satisfiable",
                c.devices
            );
            for i in 0..named.len() {
                let mut fewer = named.clone();
                fewer.remove(i);
                if fewer.is_empty() {
                    continue;
                }
                let r = solve(&p, &d, &fewer);
                prop_assert!(r.is_ok(), "dropping {} from {:?} still fails: {r:?}", named[i].device.name, c.devices);
            }
            prop_assert!(!c.message.is_empty());
            Ok(())
        })
        .unwrap();
    assert!(conflicts.load(Ordering::Relaxed) > 100, "too few conflicts generated to test minimality");
}
