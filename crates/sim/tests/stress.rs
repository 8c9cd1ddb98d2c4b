//! Seeded and property-based stress: random plans on every built-in platform (and
//! synthetic ones), random allocate/map/copy/free sequences, the invariant checker after
//! every operation, `verify` on every backing.
//!
//! Every run is deterministic: `DMAPLACE_SEED` (default 1) seeds the fixed runs, and the
//! property test draws its cases from proptest's RNG seeded by `PROPTEST_RNG_SEED` (a
//! fixed default), `DMAPLACE_STRESS_CASES` cases (default 24). `scripts/soak.sh` runs
//! them with fresh seeds.

mod common;

use dmaplace_core::backend::{Backend, CpuAccess};
use dmaplace_core::units::Size;
use dmaplace_core::{BufferDesc, Plan, Platform, Request, Usage, builtin, solve, verify};
use dmaplace_sim::{BackgroundLoad, Machine, SimBacking, SimConfig, SimError, SyntheticPlatform};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

fn platforms() -> Vec<Platform> {
    let mut v: Vec<Platform> = builtin::names().map(|n| builtin::load(n).unwrap().unwrap()).collect();
    v.push(
        SyntheticPlatform::new(Size::mib(256))
            .with_carveout("isp", Size::mib(16), false)
            .with_carveout("tz", Size::mib(16), true)
            .build(),
    );
    v.push(SyntheticPlatform::new(Size::gib(6)).build());
    v
}

const HINTS: [Usage; 8] = [
    Usage::SCANOUT,
    Usage::RENDERING,
    Usage::TEXTURING,
    Usage::CAMERA_WRITE,
    Usage::VIDEO_DECODE,
    Usage::VIDEO_ENCODE,
    Usage::CPU_READ_OFTEN,
    Usage::PROTECTED,
];

/// A light background load for big machines (large blocks keep the record count low).
const LIGHT: BackgroundLoad = BackgroundLoad { fill: 0.3, prefill: 0.6, movable: 0.7, cma_share: 0.5, max_order: 9 };

fn random_plan(p: &Platform, rng: &mut Xoshiro256PlusPlus) -> Option<Plan> {
    let n = rng.random_range(1..=3usize.min(p.devices.len()));
    let mut reqs = Vec::new();
    for _ in 0..n {
        let d = &p.devices[rng.random_range(0..p.devices.len())];
        if reqs.iter().any(|r: &Request<'_>| r.device.name == d.name) {
            continue;
        }
        let mut hints = HINTS[rng.random_range(0..HINTS.len() - 1)];
        if rng.random_bool(0.08) {
            hints |= Usage::PROTECTED;
        }
        reqs.push(Request { device: d, hints });
    }
    // Log-uniform 4 KiB .. 64 MiB, not always page-aligned.
    let shift = rng.random_range(12..=26u32);
    let size = (1u64 << shift) + rng.random_range(0..(1u64 << shift));
    solve(p, &BufferDesc::Size(Size::new(size.min(64 << 20))), &reqs).ok()
}

struct Live {
    b: SimBacking,
    plan: Plan,
    sum: Option<u64>,
}

/// Runs `ops` random operations; returns (successful allocations, failed allocations).
fn run(p: &Platform, seed: u64, ops: usize, load: BackgroundLoad, churn: bool) -> (u64, u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed);
    let mut m = Machine::new(p, SimConfig::seeded(seed).with_background(load)).unwrap();
    m.check().unwrap_or_else(|v| panic!("{}: after construction: {v}", p.name));
    let start = m.free_report();
    let mut live: Vec<Live> = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    for op in 0..ops {
        let what = rng.random_range(0..10u32);
        let ctx = format!("{} seed {seed} op {op}", p.name);
        match what {
            0..=4 => {
                let Some(plan) = random_plan(p, &mut rng) else {
                    continue;
                };
                match m.allocate(&plan, &format!("buf{op}")) {
                    Ok(b) => {
                        let backing = m.describe(&b).unwrap();
                        verify(&plan, &plan.devices, &backing).unwrap_or_else(|v| panic!("{ctx}: {v}"));
                        assert!(plan.admits(&backing), "{ctx}: plan does not admit {backing:?}");
                        // Every device in the plan can map it.
                        for e in &plan.devices {
                            let (map, sg) =
                                m.map(e, &b).unwrap_or_else(|err| panic!("{ctx}: map for {}: {err}", e.device));
                            assert_eq!(sg.len(), backing.len(), "{ctx}");
                            m.unmap(e, map);
                        }
                        ok += 1;
                        live.push(Live { b, plan, sum: None });
                    }
                    Err(SimError::OutOfMemory { .. }) => failed += 1,
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            5 | 6 if !live.is_empty() => {
                let l = live.swap_remove(rng.random_range(0..live.len()));
                if let Some(sum) = l.sum {
                    assert_eq!(m.checksum(&l.b).unwrap(), sum, "{ctx}: content changed");
                }
                m.free(l.b);
            }
            7 if !live.is_empty() => {
                // Migrate: a new backing for the same plan, copy, check, swap.
                let i = rng.random_range(0..live.len());
                m.fill(&live[i].b, op as u64).unwrap();
                let sum = m.checksum(&live[i].b).unwrap();
                if let Ok(nb) = m.allocate(&live[i].plan, "migrated") {
                    m.copy(&live[i].b, &nb, live[i].plan.size).unwrap();
                    assert_eq!(m.checksum(&nb).unwrap(), sum, "{ctx}: copy lost content");
                    let old = std::mem::replace(&mut live[i].b, nb);
                    m.free(old);
                }
                live[i].sum = Some(sum);
            }
            8 if !live.is_empty() => {
                let l = &live[rng.random_range(0..live.len())];
                let devs: Vec<_> = l.plan.devices.iter().collect();
                m.cpu_sync(&l.b, &devs, CpuAccess::ReadWrite, true).unwrap();
                m.cpu_sync(&l.b, &devs, CpuAccess::ReadWrite, false).unwrap();
            }
            _ if churn => {
                m.background_step(8);
            }
            _ => {}
        }
        m.check().unwrap_or_else(|v| panic!("{ctx}: {v}"));
    }
    for l in live.drain(..) {
        m.free(l.b);
    }
    m.check().unwrap_or_else(|v| panic!("{}: after release: {v}", p.name));
    eprintln!("{} seed {seed}: {ok} ok, {failed} failed, {:?}", p.name, m.counters());
    assert_eq!(m.live_mappings(), 0);
    if !churn {
        let end = m.free_report();
        assert_eq!(end.free(), start.free(), "{}: free memory did not return\n{end}\nvs\n{start}", p.name);
        if m.counters().cma_migrations_to_zones == 0 {
            assert!(end.same_free(&start), "{}: per-pool free memory did not return\n{end}\nvs\n{start}", p.name);
        }
    }
    (ok, failed)
}

#[test]
fn seeded_runs_on_every_platform() {
    let seed = common::stress_seed("stress", "seeded_runs_on_every_platform");
    for p in platforms() {
        let big = p.memory.ram().total() > Size::gib(2);
        let load = if big { LIGHT } else { BackgroundLoad::FRAGMENTING };
        let (ok, _) = run(&p, seed, 60, BackgroundLoad::NONE, false);
        assert!(ok > 0, "{}: nothing was allocated", p.name);
        run(&p, seed.wrapping_add(1), 60, load, false);
        run(&p, seed.wrapping_add(2), 40, load, true);
    }
}

/// One drawn case: a platform, a machine seed, a background load and churn.
fn case() -> impl Strategy<Value = (usize, u64, bool, bool)> {
    (0usize..9, any::<u64>(), any::<bool>(), any::<bool>())
}

#[test]
fn random_sequences_keep_invariants() {
    let cases = common::env_u64("DMAPLACE_STRESS_CASES").map_or(24, |c| u32::try_from(c).unwrap_or(u32::MAX));
    let config = common::proptest_config("random_sequences_keep_invariants", file!(), cases);
    common::say(&format!("random_sequences_keep_invariants: {cases} cases (DMAPLACE_STRESS_CASES)"));
    let all = platforms();
    let result = TestRunner::new(config).run(&case(), |(platform, seed, loaded, churn)| {
        let p = &all[platform % all.len()];
        let big = p.memory.ram().total() > Size::gib(2);
        let load = match (loaded, big) {
            (false, _) => BackgroundLoad::NONE,
            (true, true) => LIGHT,
            (true, false) => BackgroundLoad::FRAGMENTING,
        };
        run(p, seed, 30, load, churn && loaded);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The fixed case behind issue 8: a random run drew `rga` on rk3399 with a buffer the size
/// of its whole 32 MiB IOVA space. Whatever the solver says must hold on the machine: a
/// Plan it returns is allocated and mapped by every device in it, or it is a conflict.
#[test]
fn rk3399_rga_buffer_as_large_as_its_iova_space() {
    let p = builtin::load("rk3399").unwrap().unwrap();
    let rga = p.device("rga").unwrap();
    for size in [Size::new((32 << 20) - 4096), Size::mib(32)] {
        let Ok(plan) = solve(&p, &BufferDesc::Size(size), &[Request { device: rga, hints: Usage::empty() }]) else {
            continue;
        };
        let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
        let b = m.allocate(&plan, "rga").unwrap_or_else(|e| panic!("{size}: the Plan cannot be allocated: {e}"));
        for e in &plan.devices {
            let (map, _) = m.map(e, &b).unwrap_or_else(|err| panic!("{size}: a Plan `{}` cannot map: {err}", e.device));
            m.unmap(e, map);
        }
        m.free(b);
    }
}
