//! The guest test of `kernel/test.sh` that unloads the modules: they unload
//! cleanly and leave no memory and no dma-buf behind. The boot loads dmaplace
//! with `heap=0` (with its heap registered it cannot be unloaded); this test
//! ends by loading it with the heap, for the heap tests that run after it. It unloads both modules (every earlier test
//! has closed its fds), measures, loads them again, runs a workload that
//! allocates, migrates, maps and imports about 100 MiB, closes everything,
//! unloads again and measures again. On a kernel with `CONFIG_DMA_API_DEBUG`,
//! dma-debug must report no error and no mapping left behind by the test
//! importers, the module's allocator device, or anything else.

use std::os::fd::AsFd;
use std::process::Command;

use dmaplace_linux::drm::DrmCard;
use dmaplace_linux::kmod::{self, Dmaplace, FakeDevice, Importer, TestDev, guest};
use dmaplace_linux::sys::map::RawMap;

const MIB: u64 = 1 << 20;
const MODULES: [&str; 2] = ["dmaplace_testdev", "dmaplace"];

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unload() {
    for m in MODULES {
        run("rmmod", &[m]);
    }
    assert!(!kmod::modules_loaded());
    assert!(std::fs::metadata("/sys/kernel/debug/dmaplace").is_err(), "debugfs directory left behind");
}

/// Loads both modules; `heap=0` keeps `/dev/dma_heap/dmaplace` out (with it the
/// module can no longer be unloaded: 6.12 has no `dma_heap_remove`).
fn load(heap: bool) {
    for m in MODULES.iter().rev() {
        let ko = format!("/lib/modules/extra/{m}.ko");
        if *m == "dmaplace" && !heap {
            run("insmod", &[&ko, "heap=0"]);
        } else {
            run("insmod", &[&ko]);
        }
    }
    assert!(kmod::modules_loaded());
}

/// `(free bytes, dma-bufs listed in bufinfo)`, after dropping caches. Free is
/// `MemFree` plus the pages on the per-CPU free lists (`count:` in
/// `/proc/zoneinfo`), which `MemFree` leaves out and which grow and shrink by
/// megabytes as a workload frees pages.
fn measure() -> (u64, usize) {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("MemFree")
        * 1024;
    let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").expect("zoneinfo");
    let pcp: u64 = zoneinfo
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let bufinfo = std::fs::read_to_string("/sys/kernel/debug/dma_buf/bufinfo").expect("bufinfo");
    (free + pcp * 4096, dmaplace_linux::parse::bufinfo(&bufinfo).len())
}

fn workload() -> u64 {
    let dp = Dmaplace::open().expect("open");
    let td = TestDev::open().expect("open testdev");
    td.ensure_device(&FakeDevice::new("dp-unload64", 64)).expect("device");
    td.ensure_device(&FakeDevice::new("dp-unload32", 32)).expect("device");
    dp.declare("dp-unload32", 1, 0).expect("declare");
    let mut total = 0;
    let mut keep = Vec::new();
    for i in 0..24u64 {
        let size = (1 + i % 4) * MIB;
        let buf = dp.create(size, "unload").expect("create");
        let h = td.attach(buf.fd.as_fd(), "dp-unload64", true).expect("attach");
        td.map(h).expect("map");
        let mut map = RawMap::shared(buf.fd.as_fd(), usize::try_from(size).unwrap(), 0, true).expect("mmap");
        map.as_mut_slice()[0] = 1;
        if i % 2 == 0 {
            td.unmap(h).expect("unmap");
            let h2 = td.attach(buf.fd.as_fd(), "dp-unload32", true).expect("late attach");
            td.map(h2).expect("migrating map");
        } else if i % 3 == 0 {
            // A static importer, mapped at attach and left for close to tear down.
            td.attach_as(buf.fd.as_fd(), "dp-unload64", Importer::Static).expect("static attach");
        }
        total += size;
        keep.push((buf, map));
    }
    // The check after rmmod is not vacuous: dma-debug sees these mappings now.
    if guest::dma_debug().is_some() {
        let live = our_dma_entries();
        assert!(!live.is_empty(), "dma-debug lists none of the workload's live mappings");
        println!("PLACEMENT unload: dma-debug lists {} mappings of the workload while it runs", live.len());
    }
    if let Ok(card) = DrmCard::open_driver(&["vgem"]) {
        let buf = dp.create(8 * MIB, "unload-vgem").expect("create");
        let handle = card.import(&buf.fd).expect("vgem import");
        total += 8 * MIB;
        drop(handle);
    }
    // Everything (mappings, attachments, fds) is dropped here.
    drop(keep);
    drop(td);
    drop(dp);
    total
}

/// The dma-debug entries of the devices the workload used.
fn our_dma_entries() -> Vec<String> {
    ["dp-unload64", "dp-unload32", "dmaplace"].iter().flat_map(|d| guest::dma_debug_entries_of(d)).collect()
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn rmmod_leaves_no_memory_no_dma_buf_and_no_dma_mapping_behind() {
    assert!(dmaplace_linux::in_guest(), "runs only in the qemu guest (DMAPLACE_IN_GUEST=1): use kernel/test.sh");
    unload();
    let (free0, bufs0) = measure();
    let debug0 = guest::dma_debug();
    load(false);
    let total = workload();
    // The module's own count first: every chunk it allocated is freed.
    let snap = kmod::Snapshot::read().expect("debugfs");
    println!(
        "PLACEMENT unload: {} chunks allocated, {} freed, {} bytes live, {} buffers listed",
        snap.chunks_allocated,
        snap.chunks_freed,
        snap.live_bytes,
        snap.buffers.len()
    );
    assert!(snap.buffers.is_empty() && snap.live_bytes == 0 && snap.chunks_allocated == snap.chunks_freed, "{snap:#?}");
    unload();
    let (free1, bufs1) = measure();
    println!(
        "PLACEMENT unload: workload of {} MiB; free (MemFree + per-CPU lists) {} -> {} KiB ({:+} KiB); dma-bufs {bufs0} -> {bufs1}",
        total / MIB,
        free0 / 1024,
        free1 / 1024,
        (i128::from(free1) - i128::from(free0)) / 1024
    );
    assert_eq!(bufs1, bufs0, "dma-bufs left behind");
    // Slab and page tables move by a few hundred KiB; the workload is 68 MiB.
    assert!(
        free1 + 2 * MIB >= free0,
        "free memory is {} KiB lower after the workload and rmmod: a leak",
        (free0 - free1) / 1024
    );
    match (debug0, guest::dma_debug()) {
        (Some((errors0, entries0)), Some((errors1, entries1))) => {
            println!(
                "PLACEMENT unload: dma-debug: errors {errors0} -> {errors1}, active mappings {entries0} -> {entries1}"
            );
            assert_eq!(errors1, 0, "dma-debug reported errors");
            assert!(our_dma_entries().is_empty(), "mappings left behind: {:#?}", our_dma_entries());
            assert_eq!(entries1, entries0, "active dma-debug entries changed across the workload and rmmod");
        }
        (None, None) => println!("PLACEMENT unload: dma-debug: not in this kernel"),
        other => panic!("dma-debug appeared or vanished during the test: {other:?}"),
    }
    // Back with the heap, for the tests that run after this one (kmod_heap).
    load(true);
    let out = Command::new("rmmod").arg("dmaplace").output().expect("rmmod");
    assert!(!out.status.success(), "rmmod of dmaplace with its heap registered succeeded");
    println!(
        "PLACEMENT unload: reloaded with /dev/dma_heap/dmaplace; rmmod now refused: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
