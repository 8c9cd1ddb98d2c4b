//! Allocation + free throughput of the simulated machine.
//!
//! Each iteration allocates one buffer of a seeded size between 64 KiB and 32 MiB
//! (log-uniform, page-aligned) through [`Backend::allocate`] (placement policy, buddy
//! allocator, bookkeeping and `verify`) and frees the oldest of 32 live buffers through
//! [`Backend::free`]: two operations. Compare the 4 GiB and 64 GiB machines: the buddy
//! allocator's cost must not grow with memory.

use std::collections::VecDeque;

use divan::Bencher;
use dmaplace_core::backend::Backend;
use dmaplace_core::units::Size;
use dmaplace_core::{BufferDesc, Plan, Platform, Request, Usage, solve};
use dmaplace_sim::{BackgroundLoad, Machine, SimBacking, SimConfig, SyntheticPlatform};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

fn main() {
    divan::main();
}

const LIVE: usize = 32;

fn plans(p: &Platform, device: &str, seed: u64) -> Vec<Plan> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dev = p.device(device).expect("synthetic device");
    (0..512)
        .map(|_| {
            let shift = rng.random_range(16..25u32);
            let bytes = ((1u64 << shift) + rng.random_range(0..(1u64 << shift))).min(32 << 20) & !0xfff;
            solve(p, &BufferDesc::Size(Size::new(bytes)), &[Request { device: dev, hints: Usage::RENDERING }])
                .expect("solvable")
        })
        .collect()
}

fn run(bencher: Bencher, gib: u64, device: &str, load: BackgroundLoad) {
    let p = SyntheticPlatform::new(Size::gib(gib)).with_cma(Size::mib(256)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(1).with_background(load)).expect("machine");
    let plans = plans(&p, device, 7);
    let mut live: VecDeque<SimBacking> = (0..LIVE).map(|i| m.allocate(&plans[i], "warm").expect("fits")).collect();
    let mut i = LIVE;
    bencher.bench_local(|| {
        let b = m.allocate(&plans[i % plans.len()], "bench").expect("fits");
        m.free(live.pop_front().expect("ring is full"));
        live.push_back(b);
        i += 1;
    });
    for b in live {
        m.free(b);
    }
    m.check().expect("invariants hold after the benchmark");
}

/// Mixed 64 KiB - 32 MiB, unconstrained device (chunks up to the 4 MiB buddy block).
#[divan::bench(args = [4, 64], sample_count = 500, sample_size = 200)]
fn alloc_free_mixed(bencher: Bencher, gib: u64) {
    run(bencher, gib, "cpu", BackgroundLoad::NONE);
}

/// The same behind a 4K/2M/1G SMMU.
#[divan::bench(args = [4, 64], sample_count = 500, sample_size = 200)]
fn alloc_free_mixed_iommu(bencher: Bencher, gib: u64) {
    run(bencher, gib, "gpu", BackgroundLoad::NONE);
}

/// The same with a background load holding 30% of memory in scattered blocks.
#[divan::bench(args = [4, 64], sample_count = 500, sample_size = 200)]
fn alloc_free_mixed_loaded(bencher: Bencher, gib: u64) {
    run(bencher, gib, "cpu", BackgroundLoad { fill: 0.3, prefill: 0.6, movable: 0.7, cma_share: 0.5, max_order: 9 });
}
