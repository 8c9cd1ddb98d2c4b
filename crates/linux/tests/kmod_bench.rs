//! In-guest benchmark of dmaplace's heap and pool (`kernel/bench.sh` runs it on
//! the custom kernel; results and reading in `docs/PERFORMANCE.md`).
//!
//! One sample = `DMA_HEAP_IOCTL_ALLOC` + import (the first map) + free (the
//! importer lets go, the fd is closed: the buffer is released), timed as a whole
//! and per phase. Two importers, both *static* (the dma-buf core pins and maps at
//! import, which is dmaplace's first map):
//!
//! - **vgem** (PRIME import, `DRM_IOCTL_GEM_CLOSE`): a real DRM driver, the
//!   importer the issue names. Its device never set `max_segment_size`, so the
//!   DMA API's 64 KiB default applies: dmaplace splits its tables there (128
//!   entries for 8 MiB), the system and CMA heaps hand vgem 1 MiB entries (what
//!   dma-debug reports as a violation).
//! - **the test importer** (`DMAPLACE_TD_ATTACH`/`DETACH` on a fake device with
//!   `max_segment_size` = `UINT_MAX`, as most DRM drivers set it): every
//!   allocator's table is legal for it as built, so no allocator does work the
//!   others skip.
//!
//! Contenders: the system heap, the CMA heap, dmaplace with its pool disabled
//! (`pool_max_mib=0`: "cold") and dmaplace with a warm pool. Sizes 1, 8 and
//! 32 MiB; [`SAMPLES`] timed samples per cell after [`WARMUP`] rounds; p50 and
//! p99. **Every timed sample of every allocator is preceded by one untimed
//! sample of the same allocator and size** (and, in the warm phase, by a wait
//! until the pool's worker is idle — for every allocator alike): under TCG a
//! pause, or a different allocator's code, leaves the next system calls several
//! times slower (host-side state; measured in `docs/PERFORMANCE.md`), so each
//! sample is measured in the same state: the second of two allocations in a
//! row. Contenders rotate order every round so that drift hits all alike. At
//! 8 MiB, bursts of [`BURST`] samples in a row give a second, hotter reading.
//! Then the pool worker's zeroing throughput against a `memset` of the same
//! guest CPU.
//!
//! Under TCG absolute times are indicative; the ratios are the result. Prints
//! `bench:` lines and tables; exits 0 (it is a measurement, not a test).

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use dmaplace_linux::drm::DrmCard;
use dmaplace_linux::kmod::{FakeDevice, Importer as TdImporter, PoolInfo, TestDev};
use dmaplace_linux::sys::ioctl::dma_heap_alloc;

const MIB: u64 = 1 << 20;
const SIZES: [u64; 3] = [MIB, 8 * MIB, 32 * MIB];
const WARMUP: usize = 5;
const SAMPLES: usize = 200;
/// The test importer's device: 64-bit, segments of any length.
const TD_DEVICE: &str = "bench-importer";

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

/// Where a sample's buffer is imported.
#[derive(Clone, Copy)]
enum Importer<'a> {
    Vgem(&'a DrmCard),
    TestDev(&'a TestDev),
}

impl Importer<'_> {
    fn name(self) -> &'static str {
        match self {
            Importer::Vgem(_) => "vgem",
            Importer::TestDev(_) => "test importer",
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

/// One sample's phases: ALLOC, import (first map), free.
#[derive(Clone, Copy)]
struct Phases {
    alloc: Duration,
    import: Duration,
    free: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.alloc + self.import + self.free
    }
}

/// One sample: allocate, import (first map), free.
fn sample(heap: &OwnedFd, imp: Importer<'_>, size: u64) -> Phases {
    let t0 = Instant::now();
    let buf = dma_heap_alloc(heap.as_fd(), size).expect("DMA_HEAP_IOCTL_ALLOC");
    let t1 = Instant::now();
    match imp {
        Importer::Vgem(vgem) => {
            let handle = vgem.import(&buf).expect("vgem PRIME import");
            let t2 = Instant::now();
            drop(handle);
            drop(buf);
            Phases { alloc: t1 - t0, import: t2 - t1, free: t2.elapsed() }
        }
        Importer::TestDev(td) => {
            let h = td.attach_as(buf.as_fd(), TD_DEVICE, TdImporter::Static).expect("test importer attach");
            let t2 = Instant::now();
            td.detach(h).expect("test importer detach");
            drop(buf);
            Phases { alloc: t1 - t0, import: t2 - t1, free: t2.elapsed() }
        }
    }
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

/// A contender's timed samples.
struct Cell {
    who: Contender,
    samples: Vec<Phases>,
}

impl Cell {
    fn sorted(&self, f: impl Fn(&Phases) -> Duration) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        v.sort();
        v
    }
    fn p50(&self, f: impl Fn(&Phases) -> Duration) -> f64 {
        us(percentile(&self.sorted(f), 50))
    }
    fn p99(&self) -> f64 {
        us(percentile(&self.sorted(Phases::total), 99))
    }
}

/// `SAMPLES` rounds (after `WARMUP`) of one timed sample per contender, the order
/// rotating every round. Before every timed sample, whoever the contender: the
/// wait for an idle pool (`settle`: at least that many bytes ready), then one
/// untimed sample of the same contender.
fn rounds(cells: &[(Contender, &OwnedFd)], imp: Importer<'_>, size: u64, settle_free: Option<u64>) -> Vec<Cell> {
    let mut out: Vec<Cell> = cells.iter().map(|&(who, _)| Cell { who, samples: Vec::with_capacity(SAMPLES) }).collect();
    for round in 0..WARMUP + SAMPLES {
        for k in 0..cells.len() {
            let i = (round + k) % cells.len();
            let heap = cells[i].1;
            if let Some(free) = settle_free {
                settle(free);
            }
            sample(heap, imp, size);
            let s = sample(heap, imp, size);
            if round >= WARMUP {
                out[i].samples.push(s);
            }
        }
    }
    out
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

/// One table row.
struct Row {
    importer: &'static str,
    size: u64,
    who: Contender,
    phase: u8,
    p50: f64,
    p99: f64,
    ratio: f64,
    alloc: f64,
    import: f64,
    free: f64,
}

fn bench_importer(imp: Importer<'_>, system: &OwnedFd, cma: &OwnedFd, dmaplace: &OwnedFd, rows: &mut Vec<Row>) {
    for size in SIZES {
        // Phase 1, pool disabled: system heap, CMA heap, dmaplace cold.
        pool(0, 0);
        let cold =
            rounds(&[(Contender::System, system), (Contender::Cma, cma), (Contender::Cold, dmaplace)], imp, size, None);
        // Phase 2, pool warm: system heap and dmaplace, each timed sample after the
        // pool's worker went idle (that background work is measured apart).
        pool(512, 2 * size);
        let (h0, m0) = hits_misses();
        let warm = rounds(&[(Contender::System, system), (Contender::Warm, dmaplace)], imp, size, Some(2 * size));
        let (h1, m1) = hits_misses();
        println!("bench: {} {:>2} MiB warm phase: pool hits {}, misses {}", imp.name(), size / MIB, h1 - h0, m1 - m0);
        for (phase, cells) in [(1u8, &cold), (2, &warm)] {
            let base = cells[0].p50(Phases::total);
            for c in cells.iter() {
                let p50 = c.p50(Phases::total);
                let row = Row {
                    importer: imp.name(),
                    size,
                    who: c.who,
                    phase,
                    p50,
                    p99: c.p99(),
                    ratio: base / p50,
                    alloc: c.p50(|p| p.alloc),
                    import: c.p50(|p| p.import),
                    free: c.p50(|p| p.free),
                };
                println!(
                    "bench: {:<13} {:>2} MiB {:<20} p50 {:>9.1}  p99 {:>9.1}  system p50 / p50 {:>6.2}x  (ALLOC {:.1} import {:.1} free {:.1})",
                    row.importer,
                    size / MIB,
                    c.who.name(),
                    row.p50,
                    row.p99,
                    row.ratio,
                    row.alloc,
                    row.import,
                    row.free
                );
                rows.push(row);
            }
        }
    }
}

/// Timed samples per burst in [`bursts`].
const BURST: usize = 8;

/// The second reading, at 8 MiB with a warm pool: bursts of `BURST` timed
/// samples in a row (after the idle pool and one untimed sample, as above), for
/// the system heap and dmaplace in turn, until each has `SAMPLES`. A camera
/// allocating its queue at stream-on looks like this; the code is hotter than
/// in the pairs above. Returns `(system, dmaplace)` samples.
fn bursts(imp: Importer<'_>, system: &OwnedFd, dmaplace: &OwnedFd) -> (Cell, Cell) {
    let size = 8 * MIB;
    pool(512, (BURST as u64 + 1) * size);
    let mut cells =
        [Cell { who: Contender::System, samples: Vec::new() }, Cell { who: Contender::Warm, samples: Vec::new() }];
    let (h0, m0) = hits_misses();
    for round in 0..SAMPLES / BURST {
        for k in 0..2 {
            let i = (round + k) % 2;
            let heap = if i == 0 { system } else { dmaplace };
            settle((BURST as u64 + 1) * size);
            sample(heap, imp, size);
            for _ in 0..BURST {
                let s = sample(heap, imp, size);
                cells[i].samples.push(s);
            }
        }
    }
    let (h1, m1) = hits_misses();
    println!("bench: {} 8 MiB bursts of {BURST}: pool hits {}, misses {}", imp.name(), h1 - h0, m1 - m0);
    let [s, w] = cells;
    (s, w)
}

fn zeroing_throughput() {
    // Alone: drain, then let the worker refill from nothing while this thread
    // sleeps, and read its counters once.
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
}

/// The phase-1 system heap p50 for an importer and size: the system heap at its
/// fastest in this run (no waits before its samples).
fn phase1_system(rows: &[Row], importer: &str, size: u64) -> f64 {
    rows.iter()
        .find(|r| r.importer == importer && r.size == size && r.phase == 1 && r.who == Contender::System)
        .map_or(f64::NAN, |r| r.p50)
}

fn print_tables(rows: &[Row]) {
    for imp in ["vgem", "test importer"] {
        println!();
        println!("importer: {imp}");
        println!("| size | allocator | p50 (us) | p99 (us) | system heap p50 / p50: same phase | phase 1 |");
        println!("|---|---|---|---|---|---|");
        for r in rows.iter().filter(|r| r.importer == imp) {
            let phase = if r.phase == 2 && r.who == Contender::System { " (phase 2)" } else { "" };
            println!(
                "| {} MiB | {}{phase} | {:.1} | {:.1} | {:.2}x | {:.2}x |",
                r.size / MIB,
                r.who.name(),
                r.p50,
                r.p99,
                r.ratio,
                phase1_system(rows, imp, r.size) / r.p50
            );
        }
    }
    println!();
    println!("8 MiB, p50 of each phase over the same samples (us):");
    println!("| importer | allocator | ALLOC | import (first map) | free |");
    println!("|---|---|---|---|---|");
    for r in rows.iter().filter(|r| r.size == 8 * MIB) {
        let phase = if r.phase == 2 && r.who == Contender::System { " (phase 2)" } else { "" };
        println!("| {} | {}{phase} | {:.1} | {:.1} | {:.1} |", r.importer, r.who.name(), r.alloc, r.import, r.free);
    }
}

fn main() {
    if !dmaplace_linux::in_guest() {
        println!("skipped kmod_bench: DMAPLACE_IN_GUEST is unset; run kernel/bench.sh to benchmark in qemu");
        return;
    }
    let vgem = DrmCard::open_driver(&["vgem"]).expect("vgem");
    let td = TestDev::open().expect("/dev/dmaplace_testdev");
    td.ensure_device(&FakeDevice::new(TD_DEVICE, 64)).expect("the test importer's device");
    let (system, cma, dmaplace) = (heap_dev("system"), heap_dev(&cma_heap()), heap_dev("dmaplace"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench: kernel {}, {SAMPLES} rounds per phase after {WARMUP} warm-up; sample = ALLOC + import + free, each after an untimed one of the same allocator; p50/p99 in us",
        release.trim()
    );
    let mut rows = Vec::new();
    let mut burst_rows = Vec::new();
    for imp in [Importer::Vgem(&vgem), Importer::TestDev(&td)] {
        bench_importer(imp, &system, &cma, &dmaplace, &mut rows);
        let (s, w) = bursts(imp, &system, &dmaplace);
        burst_rows.push((imp.name(), s, w));
    }
    zeroing_throughput();
    print_tables(&rows);
    println!();
    println!("8 MiB, warm pool, in bursts of {BURST} (us):");
    println!("| importer | allocator | p50 | p99 | system heap p50 / p50: same bursts | phase 1 |");
    println!("|---|---|---|---|---|---|");
    for (imp, s, w) in &burst_rows {
        let base = s.p50(Phases::total);
        let base1 = phase1_system(&rows, imp, 8 * MIB);
        for c in [s, w] {
            let p50 = c.p50(Phases::total);
            println!(
                "| {imp} | {} | {p50:.1} | {:.1} | {:.2}x | {:.2}x |",
                c.who.name(),
                c.p99(),
                base / p50,
                base1 / p50
            );
        }
    }
}
