//! In-guest benchmark (`vm/test-linux.sh` runs it after the tests, same kernel, same
//! boot): what dmaplace's allocation of an 8 MiB plan costs against a raw
//! `DMA_HEAP_IOCTL_ALLOC` of 8 MiB from the same heap (solve excluded; choice, allocation
//! and naming included), on the system heap and, where the kernel has one, the CMA heap;
//! the opt-in CMA bitmap record; and the system heap against the CMA heap.
//!
//! A report, not a timed test: it prints the p50 and p99 of every contender and the
//! ratios of p50s from the same run (lines starting with `bench:`; measured numbers are
//! in `docs/PERFORMANCE.md`), and fails only on real errors: an allocation that fails, a source
//! other than the expected heap, or a buffer whose observed placement does not pass
//! `verify` for the plan. Under TCG the absolute times are indicative only.
//!
//! Method: each group's contenders take one sample each per round, in an order shuffled
//! from a fixed seed (`DMAPLACE_BENCH_SEED` overrides it), so drift and whatever the
//! previous sample left behind hit every contender alike. Every sample allocates and
//! frees 8 MiB; only the allocation is timed. Next to the two main contenders each group
//! has, in the same rounds: the raw ioctl a second time (the run's noise floor), and the
//! raw ioctl with each of dmaplace's own steps added (`choose()` before it,
//! `DMA_BUF_SET_NAME` after it), which shows where dmaplace's extra time goes in the same
//! conditions, caches included. `#[ignore]`d on the host; the rig runs it with
//! `--include-ignored`.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use dmaplace_core::backend::Backend;
use dmaplace_core::{BufferDesc, Plan, Request, Size, Usage, solve};
use dmaplace_linux::sys::ioctl::{dma_buf_set_name, dma_heap_alloc};
use dmaplace_linux::{HeapKind, LinuxBackend, Source};
use rustix::fs::{Mode, OFlags};

const SIZE: Size = Size::mib(8);
const WARMUP: usize = 10;
const SAMPLES: usize = 401;
const SEED: u64 = 0x0d3a_b0b5;

fn plan(platform: &str, device: &str, hints: Usage) -> Plan {
    let p = dmaplace_core::builtin::load(platform).unwrap().unwrap();
    solve(&p, &BufferDesc::Size(SIZE), &[Request { device: p.device(device).unwrap(), hints }]).unwrap()
}

/// How one sample allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// `DMA_HEAP_IOCTL_ALLOC` alone.
    Raw,
    /// `choose()`, then the raw ioctl.
    ChooseThenRaw,
    /// The raw ioctl, then `DMA_BUF_SET_NAME`.
    RawThenName,
    /// `LinuxBackend::allocate`.
    Allocate,
    /// `LinuxBackend::allocate` with the CMA bitmap record (`track_cma`).
    AllocateRecorded,
}

struct Contender {
    label: String,
    heap: String,
    way: Way,
    times: Vec<Duration>,
}

impl Contender {
    fn new(label: impl Into<String>, heap: &str, way: Way) -> Contender {
        Contender { label: label.into(), heap: heap.to_owned(), way, times: Vec::with_capacity(SAMPLES) }
    }
}

/// What the samples use: the backends, the heaps opened once, the plan of the group.
struct Rig {
    be: LinuxBackend,
    tracked: LinuxBackend,
    system: OwnedFd,
    cma: Option<(String, OwnedFd)>,
    name: CString,
}

impl Rig {
    fn heap(&self, heap: &str) -> &OwnedFd {
        match &self.cma {
            Some((name, fd)) if name == heap => fd,
            _ => &self.system,
        }
    }

    /// One timed allocation; the buffer is freed after the clock stops.
    fn sample(&mut self, c: &Contender, plan: &Plan) -> Result<Duration, String> {
        let raw = |rig: &Rig| {
            dma_heap_alloc(rig.heap(&c.heap).as_fd(), SIZE.bytes())
                .map_err(|e| format!("{}: DMA_HEAP_IOCTL_ALLOC of {SIZE} from `{}`: {e}", c.label, c.heap))
        };
        let t = Instant::now();
        match c.way {
            Way::Raw => {
                let fd = raw(self)?;
                let d = t.elapsed();
                drop(fd);
                Ok(d)
            }
            Way::ChooseThenRaw => {
                std::hint::black_box(self.be.choose(plan).map_err(|e| format!("{}: {e}", c.label))?);
                let fd = raw(self)?;
                let d = t.elapsed();
                drop(fd);
                Ok(d)
            }
            Way::RawThenName => {
                let fd = raw(self)?;
                dma_buf_set_name(fd.as_fd(), &self.name).map_err(|e| format!("{}: DMA_BUF_SET_NAME: {e}", c.label))?;
                let d = t.elapsed();
                drop(fd);
                Ok(d)
            }
            Way::Allocate | Way::AllocateRecorded => {
                let be = if c.way == Way::Allocate { &mut self.be } else { &mut self.tracked };
                let buf = be.allocate(plan, "bench").map_err(|e| format!("{}: {e}", c.label))?;
                let d = t.elapsed();
                be.free(buf);
                Ok(d)
            }
        }
    }
}

/// splitmix64: the shuffle's generator.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `contenders` in shuffled rounds (warm-up rounds untimed).
fn rounds(rig: &mut Rig, plan: &Plan, contenders: &mut [Contender], seed: &mut u64) -> Result<(), String> {
    let mut order: Vec<usize> = (0..contenders.len()).collect();
    for round in 0..WARMUP + SAMPLES {
        // Fisher-Yates.
        for i in (1..order.len()).rev() {
            let j = usize::try_from(next(seed) % (i as u64 + 1)).expect("at most i");
            order.swap(i, j);
        }
        for &i in &order {
            let d = rig.sample(&contenders[i], plan)?;
            if round >= WARMUP {
                contenders[i].times.push(d);
            }
        }
    }
    Ok(())
}

/// The nearest-rank percentile `p` (0 to 100) of sorted `v`.
fn percentile(v: &[Duration], p: usize) -> Duration {
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints a group: each contender's p50 and p99, and its p50 over the first's.
fn report(group: &str, contenders: &mut [Contender]) {
    for c in contenders.iter_mut() {
        c.times.sort();
    }
    let base = percentile(&contenders[0].times, 50);
    println!("bench: {group}");
    for c in contenders.iter() {
        let (p50, p99) = (percentile(&c.times, 50), percentile(&c.times, 99));
        let ratio = p50.as_secs_f64() / base.as_secs_f64();
        println!("bench:   {:<46} {:>9.0}us {:>9.0}us {:>8.3}", c.label, us(p50), us(p99), ratio);
    }
}

/// One dmaplace allocation of `plan` from `be`, its placement observed and verified.
fn verify_placement(be: &mut LinuxBackend, plan: &Plan, what: &str) {
    let buf = be.allocate(plan, "bench-verify").unwrap_or_else(|e| panic!("{what}: {e}"));
    let (runs, method) = be.placement(&buf).unwrap_or_else(|e| panic!("{what}: placement: {e}"));
    be.verify(plan, &buf).unwrap_or_else(|e| panic!("{what}: placement {runs:?} ({method}) fails the plan: {e}"));
    println!("bench: {what}: placement verified ({} run(s), by {method})", runs.len());
    be.free(buf);
}

#[test]
#[ignore = "benchmarks real dma-heaps: vm/test-linux.sh runs it in qemu"]
fn bench_heap_allocation_overhead() {
    assert!(
        dmaplace_linux::in_guest(),
        "guest_bench runs only in the qemu guest (DMAPLACE_IN_GUEST is unset; this host has no dma-heaps): run vm/test-linux.sh"
    );
    let kernel = std::env::var("DMAPLACE_KERNEL").unwrap_or_default();
    let seed = std::env::var("DMAPLACE_BENCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED);
    let be = LinuxBackend::new();
    let inv = be.inventory().clone();
    let open = |heap: &str| {
        rustix::fs::open(format!("/dev/dma_heap/{heap}"), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .unwrap_or_else(|e| panic!("open /dev/dma_heap/{heap}: {e}"))
    };
    let cma = inv.heaps.iter().find(|h| matches!(h.kind, HeapKind::Cma(_))).map(|h| h.name.clone());
    let mut rig = Rig {
        tracked: LinuxBackend::with_inventory(inv.clone()).track_cma(true),
        be,
        system: open("system"),
        cma: cma.as_ref().map(|c| (c.clone(), open(c))),
        name: CString::new("bench").unwrap(),
    };
    println!(
        "bench: kernel {kernel} ({}), {SAMPLES} samples of {SIZE} per contender after {WARMUP} warm-up rounds, order shuffled per round (DMAPLACE_BENCH_SEED={seed})",
        inv.release
    );
    println!("bench: {:<48} {:>11} {:>11} {:>8}", "contender", "p50", "p99", "p50 / first");
    let mut state = seed;

    let plain = plan("x86-desktop", "dgpu", Usage::RENDERING);
    assert_eq!(rig.be.choose(&plain).unwrap().source, Source::Heap("system".into()), "the system heap for the dGPU");
    let mut system = [
        Contender::new("raw ioctl", "system", Way::Raw),
        Contender::new("dmaplace allocate", "system", Way::Allocate),
        Contender::new("raw ioctl again (noise floor)", "system", Way::Raw),
        Contender::new("choose() + raw ioctl", "system", Way::ChooseThenRaw),
        Contender::new("raw ioctl + DMA_BUF_SET_NAME", "system", Way::RawThenName),
    ];
    rounds(&mut rig, &plain, &mut system, &mut state).unwrap();
    report("system heap, 8 MiB for x86-desktop's dgpu", &mut system);
    verify_placement(&mut rig.be, &plain, "system heap");

    let Some(cma) = cma else {
        println!("bench: no CMA heap on this kernel: the CMA heap is not measured");
        return;
    };
    let contiguous = plan("rpi4", "unicam", Usage::CAMERA_WRITE);
    let source = Source::Heap(cma.clone());
    assert_eq!(rig.be.choose(&contiguous).unwrap().source, source, "the CMA heap for a contiguous camera buffer");
    let mut cma_group = [
        Contender::new("raw ioctl", &cma, Way::Raw),
        Contender::new("dmaplace allocate", &cma, Way::Allocate),
        Contender::new("raw ioctl again (noise floor)", &cma, Way::Raw),
        Contender::new("choose() + raw ioctl", &cma, Way::ChooseThenRaw),
        Contender::new("raw ioctl + DMA_BUF_SET_NAME", &cma, Way::RawThenName),
        Contender::new("dmaplace allocate + CMA bitmap record", &cma, Way::AllocateRecorded),
        Contender::new("system heap raw ioctl", "system", Way::Raw),
    ];
    rounds(&mut rig, &contiguous, &mut cma_group, &mut state).unwrap();
    report(&format!("{cma} (CMA) heap, 8 MiB contiguous for rpi4's unicam"), &mut cma_group);
    verify_placement(&mut rig.tracked, &contiguous, "CMA heap");
}
