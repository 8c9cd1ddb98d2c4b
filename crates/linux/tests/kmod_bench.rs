//! In-guest benchmark of dmaplace's heap and pool (`kernel/bench.sh` runs it on
//! the custom kernel; results and reading in `docs/PERFORMANCE.md`).
//!
//! One sample = `DMA_HEAP_IOCTL_ALLOC` + PRIME import into vgem (a static
//! importer: the dma-buf core pins and maps at import, which is dmaplace's first
//! map) + close of the handle and the fd (the buffer is freed), timed as a whole,
//! for the system heap, the CMA heap, dmaplace with its pool disabled
//! (`pool_max_mib=0`: "cold") and dmaplace with a warm pool (the pool's worker
//! has zeroed and refilled before each sample; that background work is not in
//! the sample, it is measured apart). Sizes 1, 8 and 32 MiB; [`SAMPLES`] samples
//! per cell after [`WARMUP`]; p50 and p99. Then the pool worker's zeroing
//! throughput against a `memset` of the same guest CPU.
//!
//! Under TCG absolute times are indicative; the ratios are the result. Prints
//! `bench:` lines and a table; exits 0 (it is a measurement, not a test).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use dmaplace_linux::drm::DrmCard;
use dmaplace_linux::kmod::PoolInfo;
use dmaplace_linux::sys::ioctl::dma_heap_alloc;

const MIB: u64 = 1 << 20;
const SIZES: [u64; 3] = [MIB, 8 * MIB, 32 * MIB];
const WARMUP: usize = 5;
const SAMPLES: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    System,
    Cma,
    Cold,
    Warm,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::System => "system heap",
            Contender::Cma => "CMA heap",
            Contender::Cold => "dmaplace, cold pool",
            Contender::Warm => "dmaplace, warm pool",
        }
    }
}

fn param(name: &str, value: &str) {
    let path = format!("/sys/module/dmaplace/parameters/{name}");
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
}

/// Waits until the pool's worker is idle: no dirty block, at least `free` bytes
/// ready, and no worker run for a while (refills done).
fn settle(free: u64) -> PoolInfo {
    let t = Instant::now();
    let mut last = PoolInfo::read().expect("pool debugfs");
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let p = PoolInfo::read().expect("pool debugfs");
        if p.dirty == 0 && p.free_bytes() >= free && p.runs == last.runs && p.bytes == last.bytes {
            return p;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the pool did not settle: {p:#?}");
        last = p;
    }
}

/// `(hits, misses)` over all lists.
fn hits_misses() -> (u64, u64) {
    let p = PoolInfo::read().expect("pool debugfs");
    (p.hits(), p.lists.iter().map(|l| l.misses).sum())
}

fn heap_dev(name: &str) -> OwnedFd {
    OwnedFd::from(std::fs::File::open(format!("/dev/dma_heap/{name}")).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// The CMA heap's node (its name depends on the kernel and the command line).
fn cma_heap() -> String {
    std::fs::read_dir("/dev/dma_heap")
        .expect("/dev/dma_heap")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n != "system" && n != "dmaplace")
        .expect("a CMA heap in /dev/dma_heap")
}

/// The `pct`-th percentile (nearest rank) of sorted samples.
fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    let rank = (sorted.len() * pct).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One sample: allocate, import into vgem (first map), free.
fn sample(heap: &OwnedFd, vgem: &DrmCard, size: u64) -> Duration {
    let t = Instant::now();
    let buf = dma_heap_alloc(heap.as_fd(), size).expect("DMA_HEAP_IOCTL_ALLOC");
    let handle = vgem.import(&buf).expect("vgem PRIME import");
    drop(handle);
    drop(buf);
    t.elapsed()
}

/// Sets `pool_max_mib` and waits for the pool to follow: drained for 0, else
/// settled with at least `free` bytes ready.
fn pool(max_mib: u32, free: u64) {
    param("pool_max_mib", &max_mib.to_string());
    if max_mib == 0 {
        let t = Instant::now();
        while PoolInfo::read().expect("pool").bytes > 0 {
            assert!(t.elapsed() < Duration::from_secs(60), "the pool did not drain");
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        settle(free);
    }
}

/// `SAMPLES` rounds (after `WARMUP`) of one sample per contender, in turn, the
/// order rotating every round so that drift hits all alike; `before` runs before
/// each dmaplace sample. Returns each contender's sorted samples.
fn rounds(cells: &[(&OwnedFd, bool)], vgem: &DrmCard, size: u64, before: &dyn Fn()) -> Vec<Vec<Duration>> {
    let mut xs = vec![Vec::with_capacity(SAMPLES); cells.len()];
    for round in 0..WARMUP + SAMPLES {
        for k in 0..cells.len() {
            let i = (round + k) % cells.len();
            let (heap, is_dmaplace) = cells[i];
            if is_dmaplace {
                before();
            }
            let d = sample(heap, vgem, size);
            if round >= WARMUP {
                xs[i].push(d);
            }
        }
    }
    xs.iter_mut().for_each(|v| v.sort());
    xs
}

/// memset of one guest CPU, on memory already faulted in, in MiB/s.
fn memset_mib_per_s() -> f64 {
    let mut block = vec![1u8; usize::try_from(32 * MIB).expect("size")];
    let reps = 16;
    let t = Instant::now();
    for i in 0..reps {
        block.fill(u8::try_from(i % 2).expect("0 or 1"));
        std::hint::black_box(&block);
    }
    (reps as f64 * 32.0) / t.elapsed().as_secs_f64()
}

/// Where one sample's time goes: `(ALLOC, vgem import, free)` medians over `n` samples.
fn breakdown(heap: &OwnedFd, vgem: &DrmCard, size: u64, n: usize, before: &dyn Fn()) -> (f64, f64, f64) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        before();
        let t0 = Instant::now();
        let buf = dma_heap_alloc(heap.as_fd(), size).expect("DMA_HEAP_IOCTL_ALLOC");
        let t1 = Instant::now();
        let handle = vgem.import(&buf).expect("vgem PRIME import");
        let t2 = Instant::now();
        drop(handle);
        drop(buf);
        let t3 = Instant::now();
        a.push(t1 - t0);
        b.push(t2 - t1);
        c.push(t3 - t2);
    }
    for v in [&mut a, &mut b, &mut c] {
        v.sort();
    }
    (us(percentile(&a, 50)), us(percentile(&b, 50)), us(percentile(&c, 50)))
}

fn main() {
    if !dmaplace_linux::in_guest() {
        println!("skipped kmod_bench: DMAPLACE_IN_GUEST is unset; run kernel/bench.sh to benchmark in qemu");
        return;
    }
    let vgem = DrmCard::open_driver(&["vgem"]).expect("vgem");
    let (system, cma, dmaplace) = (heap_dev("system"), heap_dev(&cma_heap()), heap_dev("dmaplace"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench: kernel {}, {SAMPLES} rounds per phase after {WARMUP} warm-up; sample = ALLOC + vgem import + free; p50/p99 in us",
        release.trim()
    );
    let mut rows = Vec::new();
    for size in SIZES {
        // Phase 1, pool disabled: system heap, CMA heap, dmaplace cold, in turn.
        pool(0, 0);
        let cold = rounds(&[(&system, false), (&cma, false), (&dmaplace, true)], &vgem, size, &|| {});
        // Phase 2, pool warm: system heap and dmaplace in turn, the pool refilled and
        // its dirty blocks zeroed before every dmaplace sample (that work is not timed).
        pool(512, 2 * size);
        let (h0, m0) = hits_misses();
        let warm = rounds(&[(&system, false), (&dmaplace, true)], &vgem, size, &|| {
            settle(2 * size);
            // Any pause (this wait for the pool) leaves the next system call with cold
            // caches (~+600 us under TCG, for every allocator): as in phase 1, the timed
            // sample follows another allocation, an untimed one from the system heap.
            sample(&system, &vgem, size);
        });
        let (h1, m1) = hits_misses();
        println!("bench: {:>2} MiB warm phase: pool hits {}, misses {}", size / MIB, h1 - h0, m1 - m0);
        let p = |v: &[Duration], pct| us(percentile(v, pct));
        let phase1 = p(&cold[0], 50);
        let phase2 = p(&warm[0], 50);
        for (who, v, base) in [
            (Contender::System, &cold[0], phase1),
            (Contender::Cma, &cold[1], phase1),
            (Contender::Cold, &cold[2], phase1),
            (Contender::System, &warm[0], phase2),
            (Contender::Warm, &warm[1], phase2),
        ] {
            let (p50, p99) = (p(v, 50), p(v, 99));
            println!(
                "bench: {:>2} MiB {:<20} p50 {p50:>9.1}  p99 {p99:>9.1}  system p50 / p50 {:>6.2}x",
                size / MIB,
                who.name(),
                base / p50
            );
            rows.push((size, who, p50, p99, base / p50));
        }
    }
    // Where the time goes, 8 MiB.
    for (name, max) in [("system heap", None), ("dmaplace cold", Some(0)), ("dmaplace warm", Some(512))] {
        let heap = if max.is_some() { &dmaplace } else { &system };
        if let Some(m) = max {
            pool(m, 16 * MIB);
        }
        let (a, b, c) = breakdown(heap, &vgem, 8 * MIB, 50, &|| {
            if max == Some(512) {
                settle(16 * MIB);
            }
            sample(&system, &vgem, 8 * MIB);
        });
        println!("bench:  8 MiB {name:<14} breakdown p50: ALLOC {a:.1}  import (first map) {b:.1}  free {c:.1}");
    }
    // Zeroing throughput, alone: drain, then let the worker refill from nothing
    // while this thread sleeps, and read its counters once.
    let memset_before = memset_mib_per_s();
    pool(0, 0);
    let z0 = PoolInfo::read().expect("pool");
    param("pool_max_mib", "256");
    let t = Instant::now();
    let z1 = loop {
        std::thread::sleep(Duration::from_millis(500));
        let z = PoolInfo::read().expect("pool");
        if z.zeroed_bytes > z0.zeroed_bytes && z.runs > z0.runs && z.dirty == 0 {
            std::thread::sleep(Duration::from_millis(1000));
            let again = PoolInfo::read().expect("pool");
            if again.zeroed_bytes == z.zeroed_bytes {
                break again;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the pool did not refill");
    };
    let memset = (memset_before + memset_mib_per_s()) / 2.0;
    let zeroed = (z1.zeroed_bytes - z0.zeroed_bytes) as f64 / MIB as f64;
    let secs = (z1.zeroing_ns - z0.zeroing_ns).max(1) as f64 / 1e9;
    param("pool_max_mib", "128");
    println!("bench: memset (one guest CPU, 32 MiB x 16, before and after) {memset:.0} MiB/s");
    println!(
        "bench: pool refill from empty: {zeroed:.0} MiB zeroed in {:.1} ms of worker time = {:.0} MiB/s ({:.0}% of memset)",
        secs * 1e3,
        zeroed / secs,
        100.0 * zeroed / secs / memset
    );
    println!();
    println!("| size | allocator | p50 (us) | p99 (us) | system heap p50 / p50 (same phase) |");
    println!("|---|---|---|---|---|");
    for (size, who, p50, p99, ratio) in rows {
        println!("| {} MiB | {} | {p50:.1} | {p99:.1} | {ratio:.2}x |", size / MIB, who.name());
    }
}
