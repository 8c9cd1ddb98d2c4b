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

/// Waits until the pool has no dirty block and holds at least `free` bytes.
fn settle(free: u64) -> PoolInfo {
    let t = Instant::now();
    loop {
        let p = PoolInfo::read().expect("pool debugfs");
        if p.dirty == 0 && p.free_bytes() >= free {
            return p;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the pool did not settle: {p:#?}");
        std::thread::sleep(Duration::from_millis(5));
    }
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

fn main() {
    if !dmaplace_linux::in_guest() {
        println!("skipped kmod_bench: DMAPLACE_IN_GUEST is unset; run kernel/bench.sh to benchmark in qemu");
        return;
    }
    let vgem = DrmCard::open_driver(&["vgem"]).expect("vgem");
    let cma = cma_heap();
    let heaps = [
        (Contender::System, heap_dev("system")),
        (Contender::Cma, heap_dev(&cma)),
        (Contender::Cold, heap_dev("dmaplace")),
        (Contender::Warm, heap_dev("dmaplace")),
    ];
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench: kernel {} , {SAMPLES} samples per cell after {WARMUP} warm-up; sample = ALLOC + vgem import + free",
        release.trim()
    );
    let mut rows = Vec::new();
    let zero0 = PoolInfo::read().expect("pool debugfs");
    let mut warm_zeroing = (0u64, 0u64);
    for size in SIZES {
        let mut p50_system = 0.0;
        for (who, heap) in &heaps {
            match who {
                Contender::Cold => {
                    param("pool_max_mib", "0");
                    settle(0);
                    // The worker trims to the new maximum: wait until it holds nothing.
                    let t = Instant::now();
                    while PoolInfo::read().expect("pool").bytes > 0 {
                        assert!(t.elapsed() < Duration::from_secs(60), "the pool did not drain");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Contender::Warm => param("pool_max_mib", "512"),
                _ => {}
            }
            let mut xs = Vec::with_capacity(SAMPLES);
            for i in 0..WARMUP + SAMPLES {
                if *who == Contender::Warm {
                    settle(2 * size);
                }
                let before = (*who == Contender::Warm).then(|| PoolInfo::read().expect("pool"));
                let d = sample(heap, &vgem, size);
                if i >= WARMUP {
                    xs.push(d);
                }
                if let Some(b) = before {
                    let a = settle(2 * size);
                    warm_zeroing.0 += a.zeroed_bytes - b.zeroed_bytes;
                    warm_zeroing.1 += a.zeroing_ns - b.zeroing_ns;
                }
            }
            xs.sort();
            let (p50, p99) = (us(percentile(&xs, 50)), us(percentile(&xs, 99)));
            if *who == Contender::System {
                p50_system = p50;
            }
            println!(
                "bench: {:>2} MiB {:<20} p50 {:>9.1} us  p99 {:>9.1} us  system/this p50 {:>6.2}x",
                size / MIB,
                who.name(),
                p50,
                p99,
                p50_system / p50
            );
            rows.push((size, *who, p50, p99, p50_system / p50));
        }
    }
    param("pool_max_mib", "128");
    // memset of one guest CPU, on memory already faulted in.
    let mut block = vec![1u8; usize::try_from(32 * MIB).expect("size")];
    let t = Instant::now();
    let reps = 16;
    for i in 0..reps {
        block.fill(u8::try_from(i % 2).expect("0 or 1"));
        std::hint::black_box(&block);
    }
    let memset = (reps as f64 * 32.0) / t.elapsed().as_secs_f64();
    let zero1 = PoolInfo::read().expect("pool debugfs");
    let pool_all = (zero1.zeroed_bytes - zero0.zeroed_bytes) as f64
        / MIB as f64
        / ((zero1.zeroing_ns - zero0.zeroing_ns).max(1) as f64 / 1e9);
    let pool_warm = warm_zeroing.0 as f64 / MIB as f64 / (warm_zeroing.1.max(1) as f64 / 1e9);
    println!("bench: memset (one CPU, 32 MiB x {reps}) {memset:.0} MiB/s");
    println!(
        "bench: pool worker zeroing during the warm runs {pool_warm:.0} MiB/s ({:.0}% of memset); over the whole run {pool_all:.0} MiB/s ({:.0}%)",
        100.0 * pool_warm / memset,
        100.0 * pool_all / memset
    );
    println!();
    println!("| size | allocator | p50 (us) | p99 (us) | system p50 / p50 |");
    println!("|---|---|---|---|---|");
    for (size, who, p50, p99, ratio) in rows {
        println!("| {} MiB | {} | {p50:.1} | {p99:.1} | {ratio:.2}x |", size / MIB, who.name());
    }
}
