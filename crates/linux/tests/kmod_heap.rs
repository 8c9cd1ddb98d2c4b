//! In-guest tests of dmaplace as a dma-buf heap and of its pool of pre-zeroed
//! pages (`kernel/heap.rs`, `kernel/pool.rs`). kernel/test.sh runs this binary
//! after `kmod_unload`, which leaves `dmaplace.ko` loaded with its heap.
//!
//! - the kernel's own heap selftest (`tools/testing/selftests/dmabuf-heaps/
//!   dmabuf-heap.c` from the same tree, unmodified, built static) passes on
//!   every heap, `dmaplace` included;
//! - heap buffers are deferred and placed for every device at the first map;
//! - a page that held one process's data never reaches another unzeroed, with
//!   the pool warm, after the shrinker emptied it, and after refills;
//! - the shrinker gives the oldest blocks back first;
//! - write-combined buffers are converted once and recycled without conversion;
//! - pages are charged to the creator's memory cgroup, pool hits included;
//! - a camera-to-display pipeline with no test driver: vivid (dma-contig)
//!   captures into a heap buffer that KMS (vkms) scans out, and fails to import
//!   one when vivid's contiguity need is not declared.
//!
//! Every test is `#[ignore]`d: it only means something in the guest, where
//! kernel/test.sh runs it with `--include-ignored`; elsewhere it fails.

mod v4l2;

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use dmaplace_linux::kmod::{self, BufferInfo, Dmaplace, FakeDevice, Importer, PoolInfo, Snapshot, TestDev, guest};
use dmaplace_linux::sys::ioctl::dma_heap_alloc;
use dmaplace_linux::sys::map::RawMap;
use rustix::io::Errno;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HEAP: &str = "/dev/dma_heap/dmaplace";
/// Set in a child process this test binary starts: which role it plays.
const CHILD: &str = "DMAPLACE_HEAP_CHILD";

fn in_guest(test: &str) {
    assert!(
        dmaplace_linux::in_guest(),
        "{test}: runs only in the qemu guest (DMAPLACE_IN_GUEST=1): use kernel/test.sh"
    );
    if !std::path::Path::new(HEAP).exists() {
        // kernel/test.sh loads dmaplace with heap=0 (so that kmod_unload can unload it),
        // and kmod_unload reloads it with the heap; when a filter skipped that, reload here.
        for (cmd, arg) in [
            ("rmmod", "dmaplace_testdev"),
            ("rmmod", "dmaplace"),
            ("insmod", "/lib/modules/extra/dmaplace.ko"),
            ("insmod", "/lib/modules/extra/dmaplace_testdev.ko"),
        ] {
            let st = Command::new(cmd).arg(arg).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert!(st.success(), "{test}: {cmd} {arg} failed");
        }
    }
    assert!(std::path::Path::new(HEAP).exists(), "{test}: {HEAP} missing: dmaplace.ko not loaded with its heap");
}

fn heap_alloc(len: u64) -> Result<OwnedFd, Errno> {
    let heap = std::fs::File::open(HEAP).expect(HEAP);
    dma_heap_alloc(heap.as_fd(), len)
}

/// The debugfs ids of buffers named `heap`, in creation order.
fn heap_buffers() -> Vec<BufferInfo> {
    Snapshot::read().expect("debugfs").buffers.into_iter().filter(|b| b.name == "heap").collect()
}

/// Waits until the pool's worker is idle: every dirty block zeroed, every refill
/// it queued done, nothing pending (the module counts runs queued and finished).
fn settle_pool() -> PoolInfo {
    let t = Instant::now();
    loop {
        let p = PoolInfo::read().expect("pool debugfs");
        if p.dirty == 0 && p.worker_idle() {
            return p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the pool worker was not idle for 2 minutes: {} blocks dirty, {} runs queued, {} finished",
            p.dirty,
            p.queued,
            p.finished
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets a dmaplace module parameter, restoring the old value on drop.
struct ParamGuard(&'static str, String);

impl ParamGuard {
    fn set(name: &'static str, value: &str) -> ParamGuard {
        let path = format!("/sys/module/dmaplace/parameters/{name}");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
        ParamGuard(name, old.trim().to_owned())
    }
}

impl Drop for ParamGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("/sys/module/dmaplace/parameters/{}", self.0), &self.1);
    }
}

/// Runs this test binary again as a child playing `role` in test `test`; returns
/// its stdout (it must succeed).
fn child(test: &str, role: &str, extra_env: &[(&str, String)]) -> String {
    let out = child_command(test, role, extra_env).output().expect("spawn the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "child {role} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// This test binary, to run only `test`, as a child playing `role`.
fn child_command(test: &str, role: &str, extra_env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test, "--include-ignored", "--nocapture", "--test-threads=1"]).env(CHILD, role);
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// A child started by [`hold_child`]: it printed `READY` and now waits for its
/// stdin to close.
struct HeldChild {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    role: &'static str,
    /// What it printed up to `READY`.
    out: String,
}

/// Runs this test binary again as a child playing `role` (like [`child`]), and
/// returns once it printed a line ending in `READY`.
fn hold_child(test: &str, role: &'static str, extra_env: &[(&str, String)]) -> HeldChild {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut cmd = child_command(test, role, extra_env);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn the child");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    // Owned by the HeldChild at once: its Drop reaps the child on every path.
    let mut held = HeldChild { child, stdout, role, out: String::new() };
    loop {
        let mut line = String::new();
        let n = held.stdout.read_line(&mut line).expect("read the child's stdout");
        held.out.push_str(&line);
        if line.trim_end().ends_with("READY") {
            return held;
        }
        assert!(n > 0, "child {role} exited before it was READY:\n{}", held.out);
    }
}

impl Drop for HeldChild {
    /// A child a failed test did not release is killed, not left waiting.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HeldChild {
    /// Closes the child's stdin and waits for it to exit (it must succeed).
    fn release(mut self) {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self.child.wait().expect("wait for the child");
        assert!(status.success(), "child {} failed ({status}):\n{}{rest}", self.role, self.out);
    }
}

/// The physical ranges a child printed as `SEGMENT phys len` lines.
fn segments_in(stdout: &str) -> Vec<(u64, u64)> {
    // With --nocapture the first line a test prints follows libtest's "test ... " on one line.
    stdout
        .lines()
        .filter_map(|l| l.split_once("SEGMENT ").map(|(_, rest)| rest))
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok());
            Some((w.next()??, w.next()??))
        })
        .collect()
}

fn overlaps(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    a.iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .map(|((s1, l1), (s2, l2))| (s1 + l1).min(s2 + l2).saturating_sub(*s1.max(s2)))
        .sum()
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn the_kernels_heap_selftest_passes_on_every_heap() {
    in_guest("selftest");
    let out = Command::new("/bin/dmabuf-heap").output().expect("run /bin/dmabuf-heap (the kernel's selftest)");
    let tap = String::from_utf8_lossy(&out.stdout);
    // The TAP output goes to the log as it is.
    for line in tap.lines() {
        println!("TAP {line}");
    }
    let heaps: Vec<&str> = tap.lines().filter_map(|l| l.strip_prefix("# Testing heap: ")).collect();
    for want in ["system", "dmaplace"] {
        assert!(heaps.contains(&want), "the selftest did not test the {want} heap (it tested {heaps:?})");
    }
    let failed: Vec<&str> = tap.lines().filter(|l| l.starts_with("not ok")).collect();
    assert!(failed.is_empty(), "selftest failures: {failed:#?}");
    // The dmaplace section: from its header to the next heap's.
    let section: Vec<&str> = tap
        .lines()
        .skip_while(|l| *l != "# Testing heap: dmaplace")
        .skip(1)
        .take_while(|l| !l.starts_with("# Testing heap: "))
        .collect();
    let passed = section.iter().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 10, "only {passed} ok lines for the dmaplace heap: {section:#?}");
    assert!(out.status.success(), "dmabuf-heap exited with {:?}", out.status);
    println!("PLACEMENT heap_selftest: heaps {heaps:?}; dmaplace: {passed} ok, 0 not ok");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn heap_buffers_are_deferred_and_placed_for_every_device_at_the_first_map() {
    in_guest("heap_deferred");
    let dp = Dmaplace::open().expect("open");
    let td = TestDev::open().expect("testdev");
    td.ensure_device(&FakeDevice::new("dp-heap-gpu", 64)).expect("device");
    td.ensure_device(&FakeDevice::new("dp-heap-disp", 32)).expect("device");
    dp.declare("dp-heap-disp", 1, 64 << 10).expect("declare");
    let before: Vec<u64> = heap_buffers().iter().map(|b| b.id).collect();
    let buf = heap_alloc(4 * MIB).expect("heap alloc");
    let b = heap_buffers().into_iter().find(|b| !before.contains(&b.id)).expect("the heap buffer in debugfs");
    assert!(!b.has_backing, "pages exist right after DMA_HEAP_IOCTL_ALLOC: {b:#?}");
    let hg = td.attach(buf.as_fd(), "dp-heap-gpu", true).expect("attach gpu");
    let hd = td.attach(buf.as_fd(), "dp-heap-disp", true).expect("attach display");
    td.map(hg).expect("first map");
    let b = Snapshot::read().expect("debugfs").buffer(b.id).cloned().expect("buffer");
    assert_eq!(b.segments.len(), 1, "not contiguous for the display: {b:#?}");
    assert!(b.segments[0].phys + b.size <= 4 * GIB && b.segments[0].phys % (64 << 10) == 0, "{b:#?}");
    td.map(hd).expect("display maps the same pages");
    println!(
        "PLACEMENT heap_deferred: heap buffer {} placed at the first map for both devices: phys {:#x} ({})",
        b.id, b.segments[0].phys, b.segments[0].source
    );
    dp.forget("dp-heap-disp").expect("forget");
}

/// The 32-bit fake device both sides of the pool test place their buffers for.
const POOL_DEVICE: &str = "dp-pool-32";

/// A heap buffer of `size` placed at its first map for [`POOL_DEVICE`]: its
/// blocks come from (and go back to) the pool's dma32 lists, whichever zone the
/// page allocator would have preferred, so the blocks one side of the pool test
/// frees are the ones the other side takes. `td` holds the attachment.
fn dma32_heap_buffer(td: &TestDev, size: u64) -> OwnedFd {
    td.ensure_device(&FakeDevice::new(POOL_DEVICE, 32)).expect("device");
    let fd = heap_alloc(size).expect("heap alloc");
    let h = td.attach(fd.as_fd(), POOL_DEVICE, true).expect("attach");
    td.map(h).expect("the first map places the buffer");
    fd
}

/// The child of the pool test: fills `n` heap buffers of `size` with 0xa5
/// through their mappings, prints their segments and `READY`, and holds them
/// until its stdin closes; its buffers die with it.
fn pool_writer() {
    let n: usize = std::env::var("DP_N").expect("DP_N").parse().expect("DP_N");
    let size: u64 = std::env::var("DP_SIZE").expect("DP_SIZE").parse().expect("DP_SIZE");
    let td = TestDev::open().expect("testdev");
    let before: Vec<u64> = heap_buffers().iter().map(|b| b.id).collect();
    let mut keep = Vec::new();
    for _ in 0..n {
        let fd = dma32_heap_buffer(&td, size);
        let mut map = RawMap::shared(fd.as_fd(), usize::try_from(size).expect("size"), 0, true).expect("mmap");
        map.as_mut_slice().fill(0xa5);
        keep.push((fd, map));
    }
    for b in heap_buffers().iter().filter(|b| !before.contains(&b.id)) {
        for s in &b.segments {
            println!("SEGMENT {:#x} {:#x} {}", s.phys, s.len, s.source);
        }
    }
    println!("READY");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}

/// Allocates `n` heap buffers of `size` (placed like the writer's), checks every
/// byte is zero, and returns their segments and how many came from the pool.
fn zero_check(td: &TestDev, n: usize, size: u64) -> (Vec<(u64, u64)>, usize) {
    let before: Vec<u64> = heap_buffers().iter().map(|b| b.id).collect();
    let mut keep = Vec::new();
    for i in 0..n {
        let fd = dma32_heap_buffer(td, size);
        let map = RawMap::shared(fd.as_fd(), usize::try_from(size).expect("size"), 0, false).expect("mmap");
        let dirty = map.as_slice().iter().position(|b| *b != 0);
        assert_eq!(dirty, None, "buffer {i}: byte {dirty:?} of a fresh buffer is not zero");
        keep.push((fd, map));
    }
    let mine: Vec<BufferInfo> = heap_buffers().into_iter().filter(|b| !before.contains(&b.id)).collect();
    let segs = mine.iter().flat_map(|b| b.segments.iter().map(|s| (s.phys, s.len))).collect();
    let from_pool = mine.iter().flat_map(|b| &b.segments).filter(|s| s.source == "pool").count();
    (segs, from_pool)
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn a_page_never_reaches_another_process_unzeroed() {
    const TEST: &str = "a_page_never_reaches_another_process_unzeroed";
    if std::env::var(CHILD).as_deref() == Ok("writer") {
        return pool_writer();
    }
    in_guest("pool_zeroing");
    const MAX_MIB: u64 = 512;
    // Room for the writer's blocks to come back to the free lists.
    let _max = ParamGuard::set("pool_max_mib", &MAX_MIB.to_string());
    let (n, size) = (4, 8 * MIB);
    let env = [("DP_N", n.to_string()), ("DP_SIZE", size.to_string())];
    let td = TestDev::open().expect("testdev");
    for round in ["warm pool", "after the shrinker emptied it"] {
        settle_pool();
        if round.starts_with("after") {
            let before = PoolInfo::read().expect("pool");
            guest::shrink_dmaplace_pool(1 << 20).expect("shrinker scan");
            let after = PoolInfo::read().expect("pool");
            assert!(after.shrunk_bytes > before.shrunk_bytes, "the shrinker gave nothing back: {after:#?}");
            println!(
                "PLACEMENT pool_zeroing: shrinker gave back {:#x} bytes ({:#x} free left)",
                after.shrunk_bytes - before.shrunk_bytes,
                after.free_bytes()
            );
        }
        let writer = hold_child(TEST, "writer", &env);
        let written = segments_in(&writer.out);
        assert!(!written.is_empty(), "the writer printed no segments:\n{}", writer.out);
        // The refills the writer's misses queued (up to the watermarks, which add up to
        // pool_max_mib) finish first. Then the pool gets room for the writer's blocks,
        // which go to the dirty list when it exits, not to the page allocator. No
        // list is below its low watermark, so no refill lands after them.
        settle_pool();
        let written_mib = written.iter().map(|s| s.1).sum::<u64>() / MIB;
        let _room = ParamGuard::set("pool_max_mib", &(MAX_MIB + 2 * written_mib).to_string());
        writer.release();
        let p = settle_pool();
        let hits0 = p.hits();
        let (mine, from_pool) = zero_check(&td, n, size);
        let reused = overlaps(&written, &mine);
        let hits = PoolInfo::read().expect("pool").hits() - hits0;
        println!(
            "PLACEMENT pool_zeroing: {round}: the writer's {:#x} bytes of 0xa5, then {:#x} of them in another process's new buffers, all zero ({from_pool} pool blocks, {hits} hits)",
            written.iter().map(|s| s.1).sum::<u64>(),
            reused
        );
        assert!(
            reused > 0,
            "{round}: no page of the writer came back: the test proves nothing (written {written:x?}, got {mine:x?})"
        );
        assert!(from_pool > 0 && hits > 0, "{round}: no pool hit");
    }
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn the_shrinker_gives_the_oldest_blocks_back_first() {
    in_guest("pool_shrink");
    // Its own starting point, whatever the tests before left (trimming to a lower
    // pool_max_mib can leave every block in one list): an empty pool, then one
    // refill, which fills the lists one after another, so their oldest blocks differ.
    let max_mib = settle_pool().max_bytes >> 20;
    guest::shrink_dmaplace_pool(1 << 20).expect("shrinker scan");
    let emptied = PoolInfo::read().expect("pool");
    assert_eq!(emptied.free_bytes(), 0, "the shrinker left blocks: {emptied:#?}");
    // Writing the parameter, even with its own value, kicks the worker.
    let _kick = ParamGuard::set("pool_max_mib", &max_mib.to_string());
    let p = settle_pool();
    let mut full: Vec<_> = p.lists.iter().filter(|l| l.blocks > 0).cloned().collect();
    assert!(full.len() >= 2, "fewer than two lists hold blocks: {p:#?}");
    full.sort_by_key(|l| l.oldest);
    let oldest = &full[0];
    // Exactly one block of the list whose head is oldest.
    guest::shrink_dmaplace_pool(1 << oldest.order).expect("shrinker scan");
    let after = PoolInfo::read().expect("pool");
    let same = |l: &&kmod::PoolList| l.order == oldest.order && l.class == oldest.class && l.mode == oldest.mode;
    let l = after.lists.iter().find(same).expect("list");
    assert_eq!(l.blocks + 1, oldest.blocks, "the list with the oldest block did not lose it: {oldest:?} -> {l:?}");
    for other in full.iter().skip(1) {
        let now = after.lists.iter().find(|l| l.order == other.order && l.class == other.class && l.mode == other.mode);
        assert!(now.is_some_and(|n| n.blocks >= other.blocks), "a younger list lost a block: {other:?} -> {now:?}");
    }
    println!(
        "PLACEMENT pool_shrink: scan of {} pages freed the oldest block (order {} {} {}), younger lists untouched",
        1 << oldest.order,
        oldest.order,
        oldest.class,
        oldest.mode
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn write_combined_buffers_are_converted_once_and_recycled() {
    in_guest("pool_wc");
    let dp = Dmaplace::open().expect("open");
    let _max = ParamGuard::set("pool_max_mib", "512");
    let size = 4 * MIB;
    let p0 = settle_pool();
    let buf = dp.create_with_flags(size, "wc", kmod::abi::CREATE_WRITECOMBINE).expect("create WC");
    let mut map = RawMap::shared(buf.fd.as_fd(), usize::try_from(size).expect("size"), 0, true).expect("mmap");
    assert!(map.as_slice().iter().all(|b| *b == 0), "a new WC buffer is not zero");
    map.as_mut_slice().fill(0x5a);
    let p1 = PoolInfo::read().expect("pool");
    let converted = p1.to_wc - p0.to_wc;
    assert!(converted >= 1, "placing a WC buffer converted nothing: {p1:#?}");
    drop(map);
    drop(buf);
    let p2 = settle_pool();
    let wc_blocks: u64 = p2.lists.iter().filter(|l| l.mode == "wc").map(|l| l.blocks).sum();
    assert!(wc_blocks >= 1, "the freed WC blocks did not reach the WC lists: {p2:#?}");
    // A second WC buffer of the same size reuses them: zeroed, and no new conversion.
    let buf = dp.create_with_flags(size, "wc2", kmod::abi::CREATE_WRITECOMBINE).expect("create WC");
    let map = RawMap::shared(buf.fd.as_fd(), usize::try_from(size).expect("size"), 0, false).expect("mmap");
    assert!(map.as_slice().iter().all(|b| *b == 0), "a recycled WC block was not zeroed");
    let p3 = PoolInfo::read().expect("pool");
    assert_eq!(p3.to_wc, p1.to_wc, "recycled WC blocks were converted again");
    drop(map);
    drop(buf);
    settle_pool();
    // Shrinking converts them back before the page allocator gets them.
    guest::shrink_dmaplace_pool(1 << 20).expect("shrinker scan");
    let p4 = PoolInfo::read().expect("pool");
    assert!(p4.to_wb > p3.to_wb, "WC blocks left the pool without a conversion back: {p4:#?}");
    println!(
        "PLACEMENT pool_wc: {converted} conversion(s) to WC for the first 4 MiB buffer, none for the recycled one; {} back to WB when shrunk",
        p4.to_wb - p3.to_wb
    );
}

/// The child of the memcg test: in the cgroup, a buffer that fits and one that
/// does not.
fn memcg_child() {
    let cg = std::env::var("DP_CGROUP").expect("DP_CGROUP");
    std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).expect("join the cgroup");
    let current = || -> u64 {
        std::fs::read_to_string(format!("{cg}/memory.current")).expect("memory.current").trim().parse().expect("number")
    };
    let td = TestDev::open().expect("testdev");
    td.ensure_device(&FakeDevice::new("dp-memcg", 64)).expect("device");
    let c0 = current();
    let fd = heap_alloc(16 * MIB).expect("heap alloc 16 MiB");
    let h = td.attach_as(fd.as_fd(), "dp-memcg", Importer::LazyDynamic).expect("attach");
    td.map(h).expect("map 16 MiB inside the limit");
    let c1 = current();
    println!("MEMCG placed16 {}", c1 - c0);
    let big = heap_alloc(64 * MIB).expect("heap alloc 64 MiB");
    let hb = td.attach_as(big.as_fd(), "dp-memcg", Importer::LazyDynamic).expect("attach");
    let r = match td.map(hb) {
        Ok(_) => "mapped".to_owned(),
        Err(Errno::NOMEM) => "ENOMEM".to_owned(),
        Err(e) => format!("{e}"),
    };
    println!("MEMCG map64 {r}");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn pages_are_charged_to_the_creators_memory_cgroup() {
    const TEST: &str = "pages_are_charged_to_the_creators_memory_cgroup";
    if std::env::var(CHILD).as_deref() == Ok("memcg") {
        return memcg_child();
    }
    in_guest("memcg");
    let cg = guest::memory_cgroup("dmaplace-test", 48 * MIB).expect("a memory cgroup");
    let out = child(TEST, "memcg", &[("DP_CGROUP", cg.clone())]);
    let field = |k: &str| {
        out.lines().find_map(|l| l.split_once(k).map(|(_, v)| v)).map(str::trim).unwrap_or_default().to_owned()
    };
    let placed: u64 = field("MEMCG placed16 ").parse().unwrap_or_else(|_| panic!("no placed16 line:\n{out}"));
    assert!(placed >= 16 * MIB, "placing 16 MiB charged only {placed:#x} bytes to the creator's memcg");
    assert_eq!(field("MEMCG map64 "), "ENOMEM", "a 64 MiB buffer in a 48 MiB memcg: {out}");
    let after: u64 =
        std::fs::read_to_string(format!("{cg}/memory.current")).expect("memory.current").trim().parse().expect("n");
    assert!(after < 4 * MIB, "the child's buffers died with it but {after:#x} bytes stay charged");
    println!(
        "PLACEMENT memcg: 16 MiB placed in a 48 MiB memcg charged {:#x} bytes; 64 MiB refused (ENOMEM); {after:#x} left after exit",
        placed
    );
}

/// The DRM card of `driver` as a `drm` crate control device.
struct Card(std::fs::File);
impl AsFd for Card {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl drm::control::Device for Card {}

struct Fb {
    size: (u32, u32),
    pitch: u32,
    handle: drm::buffer::Handle,
}
impl drm::buffer::PlanarBuffer for Fb {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn format(&self) -> drm_fourcc::DrmFourcc {
        drm_fourcc::DrmFourcc::Xrgb8888
    }
    fn modifier(&self) -> Option<drm_fourcc::DrmModifier> {
        None
    }
    fn pitches(&self) -> [u32; 4] {
        [self.pitch, 0, 0, 0]
    }
    fn handles(&self) -> [Option<drm::buffer::Handle>; 4] {
        [Some(self.handle), None, None, None]
    }
    fn offsets(&self) -> [u32; 4] {
        [0; 4]
    }
}

/// One frame from vivid into its own MMAP buffer: the reference image.
fn reference_frame(cap: &v4l2::Capture, size: usize) -> Vec<u8> {
    cap.request_buffers(1, v4l2::MEMORY_MMAP).expect("REQBUFS mmap");
    let (offset, len) = cap.query_mmap(0).expect("QUERYBUF");
    let map = RawMap::shared(cap.as_fd(), usize::try_from(len).expect("len"), offset, false).expect("mmap");
    cap.queue_mmap(0).expect("QBUF mmap");
    cap.stream(true).expect("STREAMON");
    cap.dequeue(v4l2::MEMORY_MMAP).expect("DQBUF mmap");
    cap.stream(false).expect("STREAMOFF");
    let frame = map.as_slice()[..size].to_vec();
    drop(map);
    cap.request_buffers(0, v4l2::MEMORY_MMAP).expect("REQBUFS 0");
    frame
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn vivid_captures_into_a_heap_buffer_that_kms_scans_out() {
    use drm::control::Device as _;
    in_guest("vivid_kms");
    let dp = Dmaplace::open().expect("open");
    let cap = v4l2::Capture::open("vivid").expect("vivid capture node (boot with vivid.allocators=1)");
    let fmt = cap.set_format(640, 480, v4l2::PIX_FMT_XR24).expect("S_FMT 640x480 XR24");
    assert_eq!((fmt.width, fmt.height), (640, 480), "{fmt:?}");
    let size = u64::from(fmt.size).next_multiple_of(4096);
    let reference = reference_frame(&cap, fmt.size as usize);
    // vivid's device is the platform device its dma-contig allocator uses.
    let vivid_dev = "vivid.0";
    let _ = dp.forget(vivid_dev);

    // Without a declared contiguity need, vivid's struct device says nothing about it:
    // the heap places chunks, and videobuf2-dma-contig refuses them at QBUF. (Chunks
    // that happen to be physically adjacent would pass: retry on a new buffer then.)
    let mut refused = None;
    for attempt in 0..8 {
        let buf = heap_alloc(size).expect("heap alloc");
        cap.request_buffers(1, v4l2::MEMORY_DMABUF).expect("REQBUFS dmabuf");
        let r = cap.queue_dmabuf(0, buf.as_fd(), fmt.size);
        let b = heap_buffers().into_iter().last().expect("the heap buffer");
        let runs = b.segments.windows(2).filter(|w| w[0].phys + w[0].len != w[1].phys).count() + 1;
        cap.request_buffers(0, v4l2::MEMORY_DMABUF).expect("REQBUFS 0");
        println!(
            "PLACEMENT vivid_kms: undeclared, attempt {attempt}: {} chunks in {runs} physical runs: QBUF {r:?}",
            b.segments.len()
        );
        if runs > 1 {
            assert_eq!(r, Err(Errno::FAULT), "vivid imported a buffer of {runs} physical runs");
            refused = Some(attempt);
            break;
        }
        assert_eq!(r, Ok(()), "one physical run, yet vivid refused it");
    }
    assert!(refused.is_some(), "eight undeclared buffers were all one physical run: the negative half proves nothing");

    // Declared contiguous (what a max_segments field in device_dma_parameters would say):
    // the same pipeline works, and the same buffer goes to the display.
    // vivid never calls vb2_dma_contig_set_max_seg_size, so its struct device says
    // "segments of at most 64 KiB": one contiguous 1.2 MiB segment needs that lifted too.
    dp.declare_with_segment_size(vivid_dev, 1, 0, u64::from(u32::MAX)).expect("declare vivid contiguous");
    let buf = heap_alloc(size).expect("heap alloc");
    cap.request_buffers(1, v4l2::MEMORY_DMABUF).expect("REQBUFS dmabuf");
    cap.queue_dmabuf(0, buf.as_fd(), fmt.size).expect("QBUF: vivid imports the contiguous buffer");
    let b = heap_buffers().into_iter().last().expect("the heap buffer");
    assert_eq!(b.segments.len(), 1, "{b:#?}");
    let vivid_att = b.attachments.iter().find(|a| a.dev == vivid_dev).expect("vivid's attachment");
    assert!(b.segments[0].phys + b.size <= 4 * GIB, "vivid's 32-bit mask: {b:#?}");
    println!(
        "PLACEMENT vivid_kms: declared: phys {:#x} len {:#x} ({}), vivid dma_mask {:#x}",
        b.segments[0].phys, b.segments[0].len, b.segments[0].source, vivid_att.dma_mask
    );
    // KMS imports the same buffer (vkms: a static PRIME import, served by the backing).
    // vkms never calls dma_set_max_seg_size either (64 KiB segments), and the merge
    // counts one device's max_segments with another's max_segment_size, so without
    // this the one 1.2 MiB segment looks impossible for vivid and vkms together.
    dp.declare_with_segment_size("vkms", 0, 0, u64::from(u32::MAX)).expect("declare vkms' segment size");
    // One fd for everything (the first opener is DRM master: mode probing and SETCRTC).
    let path = dmaplace_linux::drm::DrmCard::open_driver(&["vkms"]).expect("vkms").path().to_owned();
    let card = Card(std::fs::File::options().read(true).write(true).open(&path).expect("open vkms"));
    let handle = card.prime_fd_to_buffer(buf.as_fd()).expect("PRIME import into vkms");
    cap.stream(true).expect("STREAMON");
    let (_, used, seq) = cap.dequeue(v4l2::MEMORY_DMABUF).expect("DQBUF: a frame in the heap buffer");
    cap.stream(false).expect("STREAMOFF");
    let map = RawMap::shared(buf.as_fd(), usize::try_from(size).expect("size"), 0, false).expect("mmap");
    let frame = &map.as_slice()[..fmt.size as usize];
    // The bottom half (below vivid's text overlay) equals vivid's own frame.
    let half = (fmt.size / 2) as usize;
    assert!(frame[half..].iter().any(|b| *b != 0), "the captured frame is black");
    assert_eq!(&frame[half..], &reference[half..], "the frame in the heap buffer is not vivid's image");
    let res = card.resource_handles().expect("KMS resources");
    let connectors: Vec<_> = res.connectors().iter().filter_map(|h| card.get_connector(*h, true).ok()).collect();
    let (conn, mode) = connectors
        .iter()
        .find_map(|ci| ci.modes().iter().find(|m| m.size() == (640, 480)).map(|m| (ci.handle(), *m)))
        .unwrap_or_else(|| {
            let modes: Vec<_> = connectors.iter().flat_map(|c| c.modes().iter().map(|m| m.size())).collect();
            panic!("no 640x480 mode on vkms; its modes: {modes:?}")
        });
    let crtc = *res.crtcs().first().expect("a CRTC");
    let fb = Fb { size: (640, 480), pitch: fmt.pitch, handle };
    let fb_id = card.add_planar_framebuffer(&fb, drm::control::FbCmd2Flags::empty()).expect("ADDFB2");
    card.set_crtc(crtc, Some(fb_id), (0, 0), &[conn], Some(mode)).expect("SETCRTC");
    assert_eq!(card.get_crtc(crtc).expect("GETCRTC").framebuffer(), Some(fb_id));
    let b = heap_buffers().into_iter().last().expect("the heap buffer");
    println!(
        "PLACEMENT vivid_kms: frame {seq} ({used} bytes) captured by vivid into {:#x}, scanned out by vkms (fb {fb_id:?}); attachments: {}",
        b.segments[0].phys,
        b.attachments.iter().map(|a| a.dev.as_str()).collect::<Vec<_>>().join(",")
    );
    card.set_crtc(crtc, None, (0, 0), &[], None).expect("SETCRTC off");
    card.destroy_framebuffer(fb_id).expect("RMFB");
    let _ = card.close_buffer(handle);
    cap.request_buffers(0, v4l2::MEMORY_DMABUF).expect("REQBUFS 0");
    dp.forget(vivid_dev).expect("forget");
    dp.forget("vkms").expect("forget");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn heap_allocations_are_held_to_owner_limit_mib_per_process() {
    in_guest("heap_owner_limit");
    let _limit = ParamGuard::set("owner_limit_mib", "8");
    let a = heap_alloc(4 * MIB).expect("4 of 8 MiB");
    let _b = heap_alloc(4 * MIB).expect("8 of 8 MiB");
    assert_eq!(heap_alloc(4096).map(drop), Err(Errno::NOMEM), "over the limit");
    // /dev/dmaplace openers are owners of their own.
    let dp = Dmaplace::open().expect("open");
    let _c = dp.create(4 * MIB, "other-owner").expect("a /dev/dmaplace opener's own 4 MiB");
    drop(a);
    let _d = heap_alloc(4 * MIB).expect("4 MiB again after releasing 4 MiB");
    println!(
        "PLACEMENT heap_owner_limit: owner_limit_mib=8: the process's heap buffers stop at 8 MiB (ENOMEM), freed on release"
    );
}
