//! Algebraic laws, soundness and completeness of the solver, checked with proptest.
//!
//! # Seeds and case counts
//!
//! Every property runs from a fixed, committed seed ([`SEED`], mixed with the property's
//! name), so CI gives the same answer every time, and prints the seed and case count when
//! it fails. Two environment variables change that, for exploration (`scripts/soak.sh`):
//!
//! - `PROPTEST_CASES=<n>`: cases per property (default 10,000);
//! - `PROPTEST_RNG_SEED=<u64>` replays a seed; `PROPTEST_RNG_SEED=random` draws a fresh one
//!   (printed on stderr, and in the failure message).
//!
//! A failing case's seed is also appended to `laws.proptest-regressions` (committed), and
//! every run replays those first.
//!
//! # The laws, precisely
//!
//! - The merge of requirements is commutative, associative and idempotent.
//! - The answer does not depend on the order of the requests: the same plan, or the same
//!   conflict (devices, kind, message).
//! - Adding a device never loosens a requirement. A subset of a satisfiable set of
//!   requests is satisfiable **when it can use the same memory**: it asks for protected
//!   memory exactly when the whole set does, and it names every carveout the whole set
//!   names. (Naming a carveout in `regions`, or asking for protection, makes memory usable
//!   that is not usable otherwise: a device that names a carveout can make a set solvable
//!   that is not without it. That is policy, see `docs/PLATFORMS.md`, not a loosening.)
//! - Soundness: every plan has a backing, built from the platform's free memory, that
//!   every device accepts (`verify`), that the plan admits, and that follows the memory
//!   model (one source per run, page-allocator blocks, alignment, stacked segment limits,
//!   IOVA space). The backing is `Plan::witness`; the checks here are independent of it.
//! - Completeness: on small platforms, a brute-force search over every layout the
//!   devices accept and every placement of at most `max_segments` segments finds a backing
//!   exactly when `solve` returns a plan.
//! - A conflict names a minimal unsatisfiable set, in platform order.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use dmaplace_core::layout::{self, LayoutAlign, MOD_I915_X_TILED, MOD_I915_Y_TILED, MOD_LINEAR};
use dmaplace_core::platform::{Carveout, HintRule, MemoryMap, Region};
use dmaplace_core::*;
use drm_fourcc::DrmFourcc;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestRunner};

// ---------------------------------------------------------------------------------------
// Seeds.

/// The committed seed every property starts from (mixed with its name).
const SEED: u64 = 0x00d3_a91a_ce5e_ed12;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 10_000;

/// The seed and case count of property `name`, from the environment or the defaults.
fn seed_and_cases(name: &str) -> (u64, u32) {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    let seed = match std::env::var("PROPTEST_RNG_SEED").ok().as_deref().filter(|v| !v.is_empty()) {
        Some("random") => {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            u64::try_from(t.as_nanos() % u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id())
        }
        Some(v) => v.parse().unwrap_or_else(|_| panic!("PROPTEST_RNG_SEED={v:?} is neither a u64 nor `random`")),
        None => name.bytes().fold(SEED, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)),
    };
    (seed, cases)
}

/// Runs property `name` over `strategy` from its seed; a failure names the seed.
fn check<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let (seed, cases) = seed_and_cases(name);
    eprintln!("{name}: {cases} cases from seed {seed} (PROPTEST_RNG_SEED, PROPTEST_CASES)");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        source_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/laws.rs")),
        ..Config::default()
    };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{name} fails with PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// The `lawful` platform: GiBs of memory, random devices.

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
            prop::option::of(prop::sample::select(vec![
                Size::kib(64),
                Size::mib(1),
                Size::mib(4),
                Size::mib(64),
                Size::new(0xffff_ffff),
            ])),
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

fn rule(device: &str, hints: Usage) -> HintRule {
    HintRule {
        device: device.into(),
        hints,
        reason: "test rule".into(),
        contiguous: false,
        max_segments: None,
        dma_bits: None,
        regions: vec![],
        cache_modes: None,
        alignment: None,
        bypass_iommu: false,
        protected: false,
    }
}

/// The `lawful` platform's hint rules: SCANOUT makes d0 contiguous, 32-bit and bypasses
/// its IOMMU; VIDEO_ENCODE limits anyone to 4 segments aligned to 64 KiB.
fn lawful_rules() -> Vec<HintRule> {
    vec![
        HintRule {
            contiguous: true,
            dma_bits: Some(DmaMask::BITS_32),
            bypass_iommu: true,
            ..rule("d0", Usage::SCANOUT)
        },
        HintRule {
            max_segments: NonZeroU32::new(4),
            cache_modes: Some(CacheModes::WRITE_COMBINED | CacheModes::CACHED),
            alignment: Some(PageSize::SZ_64K),
            ..rule("*", Usage::VIDEO_ENCODE)
        },
    ]
}

/// A platform with `n` random devices and a few hint rules.
fn platform(max_devices: usize) -> impl Strategy<Value = Platform> {
    (1..=max_devices).prop_flat_map(|n| (0..n).map(device).collect::<Vec<_>>()).prop_map(|devices| {
        let mut p = base_platform();
        p.rules = lawful_rules();
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
        Usage::CAMERA_WRITE,
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

type Case = (Platform, BufferDesc, Vec<(usize, Usage)>);

/// A case: platform, buffer, and the requests (indices into devices with hints).
fn case(max_devices: usize) -> impl Strategy<Value = Case> {
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

// ---------------------------------------------------------------------------------------
// The shipped platforms, with random devices, hints and buffers.

fn builtins() -> &'static [Platform] {
    static ALL: OnceLock<Vec<Platform>> = OnceLock::new();
    ALL.get_or_init(|| builtin::names().map(|n| builtin::load(n).unwrap().unwrap()).collect())
}

/// `(platform index, buffer, requests)` on a shipped platform.
fn builtin_case() -> impl Strategy<Value = (usize, BufferDesc, Vec<(usize, Usage)>)> {
    (0..builtins().len(), desc()).prop_flat_map(|(i, d)| {
        let n = builtins()[i].devices.len();
        (Just(i), Just(d), prop::collection::vec((0..n, hints()), 1..=n.min(4)))
    })
}

// ---------------------------------------------------------------------------------------
// Small platforms: at most 64 granules of memory, so a brute force can try every placement.

const K4: u64 = 4096;

/// A bank of 8..=32 pages cut into four pieces, each general memory, a CMA area or a
/// (protected) carveout. Adjacent CMA areas and carveouts stay separate regions.
fn small_memory() -> impl Strategy<Value = MemoryMap> {
    let bank = (0u64..4, 2u64..=8).prop_map(|(start, quarter)| (start * K4, quarter * K4));
    let kinds = prop::collection::vec(0u8..5, 8);
    (bank.clone(), bank, kinds, prop::sample::select(vec![2u64, 4, 8, 16]), prop::bool::ANY).prop_map(
        |((s0, q0), (s1, q1), kinds, block_pages, two)| {
            let mut m = MemoryMap {
                banks: vec![Region { name: "b0".into(), start: PhysAddr::new(s0), size: Size::new(4 * q0) }],
                cma: vec![],
                carveouts: vec![],
                max_buddy_block: PageSize::new(block_pages * K4).unwrap(),
                zone_dma_bits: None,
            };
            let mut pieces = vec![(s0, q0)];
            if two {
                let start = 0x4_0000 + s1;
                m.banks.push(Region { name: "b1".into(), start: PhysAddr::new(start), size: Size::new(4 * q1) });
                pieces.push((start, q1));
            }
            for (b, &(start, q)) in pieces.iter().enumerate() {
                for j in 0..4u64 {
                    let (at, size) = (PhysAddr::new(start + j * q), Size::new(q));
                    let name = format!("r{b}{j}");
                    match kinds[b * 4 + usize::try_from(j).unwrap()] {
                        1 => m.cma.push(Region { name, start: at, size }),
                        2 => m.carveouts.push(Carveout { name, start: at, size, protected: false }),
                        3 => m.carveouts.push(Carveout { name, start: at, size, protected: true }),
                        _ => {}
                    }
                }
            }
            m
        },
    )
}

fn small_iommu() -> impl Strategy<Value = Option<Iommu>> {
    let pg = prop::sample::select(vec![
        PageSizes::SZ_4K_ONLY,
        PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_16K]),
        PageSizes::from_sizes([PageSize::new(8192).unwrap()]),
        PageSizes::from_sizes([PageSize::SZ_16K, PageSize::SZ_64K]),
    ]);
    prop_oneof![
        2 => Just(None),
        1 => (pg, 14u32..=20, prop::option::of(18u32..=20)).prop_map(|(p, iova, phys)| Some(Iommu {
            name: "mmu".into(),
            pgsize_bitmap: p,
            iova_bits: DmaMask::new(iova).unwrap(),
            phys_bits: phys.map(|b| DmaMask::new(b).unwrap()),
        })),
    ]
}

fn small_placement(regions: Vec<String>) -> impl Strategy<Value = Placement> {
    let most = regions.len().min(2);
    (
        (
            prop::sample::select(vec![17u32, 18, 19, 64]),
            prop::option::of(prop::sample::select(vec![0x1_7fffu64, 0x2_ffff, 0x4_0fff, 0x4_2345])),
            prop_oneof![2 => Just(vec![]), 1 => prop::sample::subsequence(regions, 0..=most)],
            small_iommu(),
        ),
        (
            prop::option::of(1u32..=4),
            prop::option::of(prop::sample::select(vec![4096u64, 6000, 8192, 12288, 16384, 32768])),
            prop::sample::select(vec![
                BoundaryMask::NONE,
                BoundaryMask::new(0x1fff).unwrap(),
                BoundaryMask::new(0x7fff).unwrap(),
            ]),
            prop::sample::select(vec![
                PageSize::SZ_4K,
                PageSize::new(8192).unwrap(),
                PageSize::SZ_16K,
                PageSize::new(32768).unwrap(),
            ]),
        ),
        (
            prop_oneof![3 => Just(CacheModes::all()), 1 => cache_modes()],
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.9),
        ),
    )
        .prop_map(
            |((mask, limit, regions, iommu), (segs, seg_size, boundary, align), (cache, protected, access))| {
                Placement {
                    dma_mask: DmaMask::new(mask).unwrap(),
                    bus_dma_limit: limit,
                    regions,
                    iommu,
                    max_segments: segs.and_then(NonZeroU32::new),
                    max_segment_size: seg_size.map(Size::new),
                    segment_boundary_mask: boundary,
                    alignment: align,
                    cache_modes: cache,
                    coherent: false,
                    protected,
                    protected_access: access,
                }
            },
        )
}

fn small_layout() -> impl Strategy<Value = LayoutCaps> {
    let fmt = prop::sample::select(vec![DrmFourcc::Xrgb8888, DrmFourcc::Nv12, DrmFourcc::Rgb565]);
    let mods = prop::sample::subsequence(vec![MOD_LINEAR, MOD_I915_X_TILED, MOD_I915_Y_TILED], 1..=3);
    let fmt = prop_oneof![1 => fmt, 1 => prop::sample::select(vec![DrmFourcc::Nv12])];
    let formats = prop_oneof![
        1 => Just(vec![]),
        1 => prop::collection::vec((fmt, mods).prop_map(|(fourcc, modifiers)| FormatCaps { fourcc, modifiers }), 1..4),
    ];
    (
        formats,
        prop::sample::select(vec![1u32, 64, 256]),
        prop::sample::select(vec![1u32, 2, 16]),
        prop::option::weighted(0.2, 16u32..128),
        prop::option::weighted(0.2, prop::sample::select(vec![256u32, 512, 1024])),
    )
        .prop_map(|(formats, pitch_align, height_align, max_width, max_pitch)| LayoutCaps {
            formats,
            pitch_align,
            offset_align: 1,
            height_align,
            size_align: 1,
            max_width,
            max_height: None,
            max_pitch,
        })
}

fn small_desc() -> impl Strategy<Value = BufferDesc> {
    prop_oneof![
        (1u64..=(96 << 10)).prop_map(|b| BufferDesc::Size(Size::new(b))),
        (
            1u32..=96,
            1u32..=48,
            prop::sample::select(vec![DrmFourcc::Xrgb8888, DrmFourcc::Nv12, DrmFourcc::Nv12, DrmFourcc::Rgb565])
        )
            .prop_map(|(width, height, format)| BufferDesc::Image(ImageDesc {
                width,
                height,
                format,
                modifiers: vec![]
            })),
    ]
}

/// A small platform with 1..=3 devices, its rules, a buffer and the requests.
fn small_case() -> impl Strategy<Value = Case> {
    small_memory()
        .prop_flat_map(|m| {
            let names: Vec<String> =
                m.cma.iter().map(|r| r.name.clone()).chain(m.carveouts.iter().map(|c| c.name.clone())).collect();
            let carve: Vec<String> = m.carveouts.iter().filter(|c| !c.protected).map(|c| c.name.clone()).collect();
            let n = 1..=3usize;
            (Just(m), n, Just(names), Just(carve))
        })
        .prop_flat_map(|(m, n, names, carve)| {
            let devices: Vec<_> = (0..n)
                .map(|i| {
                    (small_placement(names.clone()), small_layout()).prop_map(move |(placement, layout)| Device {
                        placement,
                        layout,
                        ..Device::new(format!("d{i}"), DeviceClass::Other)
                    })
                })
                .collect();
            (Just(m), devices, Just(carve), small_desc())
        })
        .prop_flat_map(|(memory, devices, carve, d)| {
            let mut p = base_platform();
            p.name = "small".into();
            p.memory = memory;
            p.rules = lawful_rules();
            p.rules[1].alignment = Some(PageSize::new(8192).unwrap());
            p.rules[1].max_segments = NonZeroU32::new(2);
            if let Some(c) = carve.first() {
                p.rules.push(HintRule { regions: vec![c.clone()], ..rule("d1", Usage::CAMERA_WRITE) });
            }
            p.devices = devices;
            let n = p.devices.len();
            (Just(p), Just(d), prop::collection::vec((0..n, hints()), 1..=n))
        })
}

// ---------------------------------------------------------------------------------------
// The memory model, written out independently of `dmaplace_core::memory`.

/// `(is page allocator, range)` of every source a buffer for `reqs` may use.
fn model_sources(p: &Platform, reqs: &[Request<'_>], protected: bool) -> Vec<(bool, PhysRange)> {
    let m = &p.memory;
    let named: BTreeSet<&str> = reqs
        .iter()
        .flat_map(|r| {
            r.device.placement.regions.iter().map(String::as_str).chain(
                p.rules
                    .iter()
                    .filter(|rule| rule.applies(&r.device.name, r.hints))
                    .flat_map(|rule| rule.regions.iter().map(String::as_str)),
            )
        })
        .collect();
    let mut out: Vec<(bool, PhysRange)> = m
        .carveouts
        .iter()
        .filter(|c| if protected { c.protected } else { !c.protected && named.contains(c.name.as_str()) })
        .map(|c| (false, c.range()))
        .collect();
    if !protected {
        out.extend(m.cma.iter().map(|c| (false, c.range())));
        let taken = Window::from_ranges(m.cma.iter().map(Region::range).chain(m.carveouts.iter().map(Carveout::range)));
        for b in &m.banks {
            out.extend(Window::from_ranges([b.range()]).subtract(&taken).ranges().iter().map(|r| (true, *r)));
        }
    }
    out
}

/// The segment rules, from each device's own constraints.
#[derive(Debug)]
struct Rules {
    /// Largest granule (at least 4 KiB).
    granule: u64,
    /// Alignment of the first byte.
    align: u64,
    max_segments: Option<u64>,
    /// Longest segment (with a count limit), rounded as the model says.
    longest: u64,
    /// Boundary window (with a count limit).
    boundary: u64,
    max_block: u64,
    /// A device cannot map any page.
    unmappable: bool,
}

fn rules(p: &Platform, effs: &[Effective]) -> Rules {
    let granule = effs.iter().map(|e| e.granule.value.get()).max().unwrap_or(K4).max(K4);
    let align = effs.iter().map(|e| e.alignment.value.get().max(e.granule.value.get())).max().unwrap_or(K4);
    let counted: Vec<&Effective> = effs.iter().filter(|e| e.max_segments.value.is_some()).collect();
    let max_segments = counted.iter().map(|e| u64::from(e.max_segments.value.unwrap().get())).min();
    let mut longest =
        counted.iter().filter_map(|e| e.max_segment_size.value.map(Size::bytes)).min().unwrap_or(u64::MAX);
    if max_segments.is_some_and(|n| n > 1) && longest != u64::MAX && longest >= align {
        longest -= longest % align;
    }
    let boundary = counted.iter().map(|e| e.segment_boundary.value.get().saturating_add(1)).min().unwrap_or(u64::MAX);
    let unmappable = effs.iter().any(|e| e.max_segment_size.value.is_some_and(|s| s.bytes() < K4));
    Rules {
        granule,
        align,
        max_segments,
        longest,
        boundary: if boundary == 0 { u64::MAX } else { boundary },
        max_block: p.memory.max_buddy_block.get(),
        unmappable,
    }
}

/// Whether every device may use `start..end`.
fn allowed(effs: &[Effective], start: u64, end: u64) -> bool {
    let Ok(r) = PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)) else { return false };
    effs.iter().all(|e| e.reach.value.contains_range(r) && e.pool.value.as_ref().is_none_or(|w| w.contains_range(r)))
}

/// Whether `start..start + len` is a segment the model allows in a source `src`.
fn segment_ok(effs: &[Effective], r: &Rules, buddy: bool, src: PhysRange, start: u64, len: u64) -> bool {
    let end = start + len;
    let inside = start >= src.start().get() && end <= src.end().get();
    let granule = start.is_multiple_of(r.granule) && len.is_multiple_of(r.granule) && len > 0;
    let counted = r.max_segments.is_none()
        || (len <= r.longest && (r.boundary == u64::MAX || start / r.boundary == (end - 1) / r.boundary));
    let kind = if buddy {
        let block = len.next_power_of_two();
        len <= r.max_block
            && start.is_multiple_of(block)
            && start + block <= src.end().get()
            && allowed(effs, start, start + block)
    } else {
        start.is_multiple_of(r.align)
    };
    inside && granule && counted && kind && allowed(effs, start, end)
}

/// Whether every device behind an IOMMU can map `size` bytes into its empty domain: IOVA 0
/// up to the first granule is kept back, a mapping is aligned to its largest page.
fn iova_ok(effs: &[Effective], size: u64) -> bool {
    effs.iter().all(|e| match (&e.iommu, e.iova_space) {
        (Some(m), Some(bits)) => {
            let pg = m.pgsize_bitmap;
            let first = pg.smallest().unwrap().get();
            let align = pg.largest_at_most(size).unwrap_or(pg.smallest().unwrap()).get();
            let end = if bits.bits() >= 64 { u64::MAX } else { 1u64 << bits.bits() };
            first.next_multiple_of(align).checked_add(size).is_some_and(|e| e <= end)
        }
        _ => true,
    })
}

/// Checks a backing for a plan against every rule of the model, independently of the
/// code that built it.
fn check_backing(p: &Platform, reqs: &[Request<'_>], plan: &Plan, b: &Backing) -> Result<(), String> {
    verify(plan, &plan.devices, b).map_err(|v| format!("verify: {v}"))?;
    if !plan.admits(b) {
        return Err("the plan does not admit it".into());
    }
    if b.len() != plan.size {
        return Err(format!("holds {} for a plan of {}", b.len(), plan.size));
    }
    let effs = &plan.devices;
    let r = rules(p, effs);
    let sources = model_sources(p, reqs, plan.requirements.protected.value);
    for (i, s) in b.segments.iter().enumerate() {
        let (start, len) = (s.start().get(), s.len().bytes());
        let ok = sources.iter().any(|&(buddy, src)| segment_ok(effs, &r, buddy, src, start, len));
        if !ok {
            return Err(format!("segment {i} {s} breaks the memory model ({r:?})"));
        }
    }
    if b.segments.first().is_none_or(|s| !s.start().get().is_multiple_of(r.align)) {
        return Err(format!("the first segment does not start on {}", r.align));
    }
    if let Some(n) = r.max_segments
        && b.segments.len() as u64 > n
    {
        return Err(format!("{} segments, over {n}", b.segments.len()));
    }
    let mut sorted = b.segments.clone();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0].end() > w[1].start()) {
        return Err("segments overlap".into());
    }
    if !iova_ok(effs, plan.size.bytes()) {
        return Err("a device cannot map it into its IOVA space".into());
    }
    Ok(())
}

/// Soundness for one case: a plan's witness exists and passes every check.
fn sound(p: &Platform, d: &BufferDesc, reqs: &[Request<'_>]) -> Result<bool, TestCaseError> {
    let Ok(plan) = solve(p, d, reqs) else { return Ok(false) };
    let Some(b) = plan.witness(p) else {
        return Err(TestCaseError::fail(format!("no backing for a plan of {} in {}", plan.size, plan.placement)));
    };
    check_backing(p, reqs, &plan, &b).map_err(|e| TestCaseError::fail(format!("backing {b:?}: {e}")))?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// The brute-force reference.

/// Buffer sizes of every layout all devices accept (the smallest one per modifier: larger
/// pitches or paddings are never easier to place).
fn layout_sizes(p: &Platform, d: &BufferDesc, reqs: &[Request<'_>], effs: &[Effective]) -> Vec<u64> {
    let img = match d {
        BufferDesc::Size(s) => return vec![s.bytes()],
        BufferDesc::Image(img) => img,
    };
    let lists: Option<Vec<&[u64]>> = reqs.iter().map(|r| r.device.layout.modifiers_for(img.format)).collect();
    let Some(lists) = lists else { return vec![] };
    let lcm = |f: &dyn Fn(&Effective) -> u32| {
        effs.iter().fold(1u64, |acc, e| {
            let v = u64::from(f(e));
            let g = (1..=acc.min(v)).rev().find(|g| acc % g == 0 && v % g == 0).unwrap_or(1);
            acc / g * v
        })
    };
    let align = LayoutAlign {
        pitch: u32::try_from(lcm(&|e| e.layout.pitch_align)).unwrap(),
        offset: u32::try_from(lcm(&|e| e.layout.offset_align)).unwrap(),
        height: u32::try_from(lcm(&|e| e.layout.height_align)).unwrap(),
        size: u32::try_from(lcm(&|e| e.layout.size_align)).unwrap(),
    };
    let dims_ok = effs.iter().all(|e| {
        e.layout.max_width.is_none_or(|m| img.width <= m) && e.layout.max_height.is_none_or(|m| img.height <= m)
    });
    let mut out = Vec::new();
    for m in [MOD_LINEAR, MOD_I915_X_TILED, MOD_I915_Y_TILED] {
        let accepted = lists.iter().all(|l| l.contains(&m))
            && reqs.iter().all(|r| !r.hints.contains(Usage::LINEAR) || m == MOD_LINEAR)
            && (img.modifiers.is_empty() || img.modifiers.contains(&m));
        if !accepted || !dims_ok {
            continue;
        }
        let l = layout::compute(img.format, p.modifier_info(m).unwrap(), img.width, img.height, align).unwrap();
        let pitch = l.planes.iter().map(|pl| pl.pitch).max().unwrap();
        if effs.iter().all(|e| e.layout.max_pitch.is_none_or(|mp| pitch <= mp)) {
            out.push(l.size);
        }
    }
    out
}

/// The most bytes `k` segments can hold in one source, for every `k` up to `budget`:
/// `[with no constraint, with one segment starting on the alignment]`, by dynamic
/// programming over every granule of the source.
fn source_best(effs: &[Effective], r: &Rules, buddy: bool, src: PhysRange, budget: usize) -> [Vec<i64>; 2] {
    const NONE: i64 = i64::MIN / 4;
    let g = r.granule;
    let start = src.start().get().next_multiple_of(g);
    let end = src.end().get();
    let n = usize::try_from(end.saturating_sub(start) / g).unwrap();
    // best[f][x][k]: the most bytes from granule x on with k segments; f = 1: one aligned.
    let mut best = [vec![vec![0i64; budget + 1]; n + 1], vec![vec![NONE; budget + 1]; n + 1]];
    let unlimited = r.max_segments.is_none();
    for x in (0..n).rev() {
        let at = start + x as u64 * g;
        for b in best.iter_mut() {
            b[x] = b[x + 1].clone();
        }
        for len_g in 1..=n - x {
            let len = len_g as u64 * g;
            if !segment_ok(effs, r, buddy, src, at, len) {
                continue;
            }
            let aligned = at.is_multiple_of(r.align);
            for k in 1..=budget {
                let before = if unlimited { k } else { k - 1 };
                let gain = i64::try_from(len).unwrap();
                let plain = best[0][x + len_g][before] + gain;
                best[0][x][k] = best[0][x][k].max(plain);
                let need = if aligned { best[0][x + len_g][before] } else { best[1][x + len_g][before] };
                if need > NONE {
                    best[1][x][k] = best[1][x][k].max(need + gain);
                }
            }
        }
    }
    [best[0][0].clone(), best[1][0].clone()]
}

/// Whether some placement of `size` bytes exists for the devices.
fn placement_exists(p: &Platform, reqs: &[Request<'_>], effs: &[Effective], size: u64) -> bool {
    let r = rules(p, effs);
    if r.unmappable {
        return false;
    }
    let protected = effs.iter().any(|e| e.protected.value);
    let budget = r.max_segments.map_or(1, |n| usize::try_from(n).unwrap());
    const NONE: i64 = i64::MIN / 4;
    // Knapsack over sources: acc[f][k] = the most bytes k segments hold so far.
    let mut acc = [vec![0i64; budget + 1], vec![NONE; budget + 1]];
    for (buddy, src) in model_sources(p, reqs, protected) {
        let here = source_best(effs, &r, buddy, src, budget);
        // k segments: j here and the rest before (without a limit, any number on both sides).
        let (acc_ref, here_ref) = (&acc, &here);
        let combine = |k: usize, f: usize| {
            let splits: Vec<(usize, usize)> =
                if r.max_segments.is_none() { vec![(k, k)] } else { (0..=k).map(|j| (k - j, j)).collect() };
            let pairs: &[(usize, usize)] = if f == 0 { &[(0, 0)] } else { &[(1, 0), (0, 1)] };
            splits
                .iter()
                .flat_map(|&(rest, j)| pairs.iter().map(move |&(fa, fb)| (acc_ref[fa][rest], here_ref[fb][j])))
                .filter(|&(a, b)| a > NONE && b > NONE)
                .map(|(a, b)| a + b)
                .max()
                .unwrap_or(NONE)
        };
        let next = [(0..=budget).map(|k| combine(k, 0)).collect(), (0..=budget).map(|k| combine(k, 1)).collect()];
        acc = next;
    }
    acc[1].iter().any(|&v| v >= i64::try_from(size).unwrap())
}

/// Whether any layout and placement every device accepts exists.
fn reference(p: &Platform, d: &BufferDesc, reqs: &[Request<'_>]) -> bool {
    let effs: Vec<Effective> = reqs.iter().map(|r| Effective::new(p, r.device, r.hints)).collect();
    if effs.iter().any(|e| e.protected.value) && effs.iter().any(|e| !e.protected_access) {
        return false;
    }
    if effs.iter().fold(CacheModes::all(), |a, e| a & e.cache_modes.value).is_empty() {
        return false;
    }
    let granule = effs.iter().map(|e| e.granule.value.get()).max().unwrap().max(K4);
    layout_sizes(p, d, reqs, &effs).into_iter().any(|raw| {
        let size = raw.next_multiple_of(granule);
        iova_ok(&effs, size) && placement_exists(p, reqs, &effs, size)
    })
}

// ---------------------------------------------------------------------------------------
// The laws.

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

#[test]
fn merge_is_commutative_associative_idempotent() {
    check("merge_is_commutative_associative_idempotent", (platform(3), prop::collection::vec(hints(), 3)), |(p, h)| {
        let n = p.devices.len();
        let ram = p.memory.ram();
        let r: Vec<Requirements> =
            (0..3).map(|i| Requirements::of(&Effective::new(&p, &p.devices[i % n], h[i]), i, &ram)).collect();
        prop_assert_eq!(r[0].merge(&r[1]), r[1].merge(&r[0]));
        prop_assert_eq!(r[0].merge(&r[1]).merge(&r[2]), r[0].merge(&r[1].merge(&r[2])));
        prop_assert_eq!(r[0].merge(&r[0]), r[0].clone());
        Ok(())
    });
}

#[test]
fn solving_ignores_request_order() {
    check("solving_ignores_request_order", (case(5), any::<prop::sample::Index>()), |((p, d, picks), rot)| {
        let fwd = requests(&p, &picks);
        let mut rev = fwd.clone();
        rev.reverse();
        let by = rot.index(rev.len());
        rev.rotate_left(by);
        match (solve(&p, &d, &fwd), solve(&p, &d, &rev)) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(by_name(&a), by_name(&b));
                prop_assert_eq!(a.size, b.size);
                prop_assert_eq!(&a.placement, &b.placement);
                prop_assert_eq!(a.layout.map(|l| l.layout), b.layout.map(|l| l.layout));
                prop_assert_eq!(a.cache_mode.value, b.cache_mode.value);
            }
            (Err(SolveError::Conflict(a)), Err(SolveError::Conflict(b))) => prop_assert_eq!(a, b),
            (Err(SolveError::Invalid(a)), Err(SolveError::Invalid(b))) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "order changed the outcome: {a:?} vs {b:?}"),
        }
        Ok(())
    });
}

/// The carveouts a request list names (`regions` of the devices and of their rules).
fn named_carveouts(p: &Platform, reqs: &[Request<'_>]) -> BTreeSet<String> {
    let carveouts: BTreeSet<&str> = p.memory.carveouts.iter().map(|c| c.name.as_str()).collect();
    reqs.iter()
        .flat_map(|r| {
            r.device.placement.regions.iter().chain(
                p.rules
                    .iter()
                    .filter(|rule| rule.applies(&r.device.name, r.hints))
                    .flat_map(|rule| rule.regions.iter()),
            )
        })
        .filter(|n| carveouts.contains(n.as_str()))
        .cloned()
        .collect()
}

#[test]
fn adding_a_device_never_loosens() {
    let (subsets, same_memory) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check("adding_a_device_never_loosens", case(5), |(p, d, picks)| {
        let all = requests(&p, &picks);
        let fewer = &all[..all.len() - 1];
        if fewer.is_empty() {
            return Ok(());
        }
        let (big_req, small_req) = (reqs_of(&p, &all), reqs_of(&p, fewer));
        prop_assert!(big_req.at_least_as_tight_as(&small_req));
        let Ok(big) = solve(&p, &d, &all) else { return Ok(()) };
        subsets.fetch_add(1, Ordering::Relaxed);
        if big_req.protected.value != small_req.protected.value
            || named_carveouts(&p, &all) != named_carveouts(&p, fewer)
        {
            return Ok(());
        }
        same_memory.fetch_add(1, Ordering::Relaxed);
        let small = solve(&p, &d, fewer);
        prop_assert!(small.is_ok(), "a subset of a satisfiable set, using the same memory, failed: {small:?}");
        let small = small.unwrap();
        // A smaller common modifier set may pick a different (smaller) layout; with the
        // same modifier, more devices only add alignment.
        let same_modifier =
            big.layout.as_ref().map(|l| l.layout.modifier) == small.layout.as_ref().map(|l| l.layout.modifier);
        prop_assert!(!same_modifier || big.size >= small.size);
        prop_assert!(big.requirements.hard_window().is_subset_of(&small.requirements.hard_window()));
        Ok(())
    });
    let (subsets, same_memory) = (subsets.into_inner(), same_memory.into_inner());
    assert!(same_memory * 4 >= subsets * 3, "the law must cover most cases: {same_memory} of {subsets}");
}

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

/// `Plan::admits` is sound: a backing the plan admits satisfies every device.
#[test]
fn admitted_backings_satisfy_every_device() {
    let (solved, admitted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check("admitted_backings_satisfy_every_device", (case(5), any::<u64>(), 1usize..6), |((p, d, picks), seed, k)| {
        let Ok(plan) = solve(&p, &d, &requests(&p, &picks)) else { return Ok(()) };
        solved.fetch_add(1, Ordering::Relaxed);
        let Some(b) = backing_for(&plan, seed, k) else { return Ok(()) };
        if plan.admits(&b) {
            admitted.fetch_add(1, Ordering::Relaxed);
            let v = verify(&plan, &plan.devices, &b);
            prop_assert!(v.is_ok(), "admitted backing {b:?} fails: {v:?}");
        }
        Ok(())
    });
    let (solved, admitted) = (solved.into_inner(), admitted.into_inner());
    assert!(
        solved > 0 && admitted * 4 >= solved,
        "the property must not be vacuous: {admitted} admitted of {solved} solved"
    );
}

/// Every plan is placeable: its witness is built from free memory and every check passes.
#[test]
fn every_plan_has_a_backing_every_device_accepts() {
    let (cases, solved) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check(
        "every_plan_has_a_backing_every_device_accepts",
        (case(5), builtin_case()),
        |((p, d, picks), (i, bd, bpicks))| {
            cases.fetch_add(2, Ordering::Relaxed);
            let n = usize::from(sound(&p, &d, &requests(&p, &picks))?);
            let b = &builtins()[i];
            let m = usize::from(sound(b, &bd, &requests(b, &bpicks))?);
            solved.fetch_add(n + m, Ordering::Relaxed);
            Ok(())
        },
    );
    let (cases, solved) = (cases.into_inner(), solved.into_inner());
    assert!(solved * 4 >= cases, "the property must not be vacuous: {solved} plans of {cases} cases");
}

/// Conflict means no layout and placement exist; a layout and placement means a plan.
#[test]
fn conflicts_are_complete_on_small_platforms() {
    let (cases, plans) = (AtomicUsize::new(0), AtomicUsize::new(0));
    check("conflicts_are_complete_on_small_platforms", small_case(), |(p, d, picks)| {
        let reqs = requests(&p, &picks);
        let found = reference(&p, &d, &reqs);
        cases.fetch_add(1, Ordering::Relaxed);
        match solve(&p, &d, &reqs) {
            Ok(_) => {
                prop_assert!(found, "solve returned a plan the brute force cannot place");
                prop_assert!(sound(&p, &d, &reqs)?);
                plans.fetch_add(1, Ordering::Relaxed);
            }
            Err(SolveError::Conflict(c)) => {
                prop_assert!(!found, "solve refused ({}) what the brute force places", c.message);
            }
            Err(SolveError::Invalid(e)) => prop_assert!(false, "invalid request: {e}"),
        }
        Ok(())
    });
    let (cases, plans) = (cases.into_inner(), plans.into_inner());
    assert!(plans * 5 >= cases && plans * 5 <= cases * 4, "both outcomes must be common: {plans} plans of {cases}");
}

#[test]
fn conflicts_name_a_minimal_unsatisfiable_set() {
    let conflicts = AtomicUsize::new(0);
    check("conflicts_name_a_minimal_unsatisfiable_set", case(6), |(p, d, picks)| {
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
        // Listed in platform order.
        let rank = |n: &String| p.devices.iter().position(|d| d.name == *n).unwrap();
        prop_assert!(
            c.devices.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "not in platform order: {:?}",
            c.devices
        );
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
    });
    assert!(conflicts.load(Ordering::Relaxed) > 100, "too few conflicts generated to test minimality");
}
