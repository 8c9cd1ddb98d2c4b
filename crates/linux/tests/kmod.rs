//! In-guest tests of the dmaplace kernel module (`kernel/test.sh` boots the rig's
//! custom kernel with and without qemu's intel-iommu, loads `dmaplace.ko` and
//! `dmaplace_testdev.ko`, and runs this binary as root with `--test-threads=1`).
//!
//! Every scenario is checked three ways: the backing's segments from debugfs
//! against `dmaplace_core::verify` for every attached device; the module's merged
//! plan against `dmaplace_core::solve` for the same devices (the differential
//! test); and what the hardware side sees, through `/proc/self/pagemap` of a CPU
//! mapping and the DMA addresses in each importer's sg table. Each prints a
//! `PLACEMENT` line per segment for the record.
//!
//! Every test is `#[ignore]`d: they only mean something in the guest, where
//! kernel/test.sh runs them with `--include-ignored` (tests named `iommu_*` only on
//! the `--iommu` boots). Run elsewhere, they fail rather than pass vacuously.

use std::os::fd::AsFd;

use dmaplace_core::{Platform, verify};
use dmaplace_linux::drm::DrmCard;
use dmaplace_linux::kmod::{self, BufferInfo, Dmaplace, FakeDevice, Importer, Snapshot, SwSync, TestDev, guest};
use dmaplace_linux::phys;
use dmaplace_linux::sys::map::RawMap;
use rustix::io::Errno;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

struct Env {
    dp: Dmaplace,
    td: TestDev,
    platform: Platform,
    iommu: bool,
}

fn env(test: &str) -> Env {
    assert!(
        dmaplace_linux::in_guest(),
        "{test}: runs only in the qemu guest (DMAPLACE_IN_GUEST=1): use kernel/test.sh"
    );
    assert!(kmod::modules_loaded(), "{test}: /dev/dmaplace or /dev/dmaplace_testdev missing: the modules did not load");
    let dp = Dmaplace::open().expect("open /dev/dmaplace");
    let td = TestDev::open().expect("open /dev/dmaplace_testdev");
    let platform = kmod::guest_platform().expect("guest platform");
    let iommu = std::env::var("DMAPLACE_IOMMU").as_deref() == Ok("1");
    Env { dp, td, platform, iommu }
}

/// Whether the running kernel has `CONFIG_DMABUF_MOVE_NOTIFY` (without it the
/// dma-buf core pins the buffer for every mapping, dynamic importers' included).
fn move_notify_enabled() -> bool {
    guest::kernel_config("CONFIG_DMABUF_MOVE_NOTIFY").expect("/proc/config.gz")
}

/// The scenario's devices: fake importers with declared constraints.
fn display32(e: &Env) -> &'static str {
    // A display-like device: 32-bit DMA, needs one contiguous range, 64 KiB aligned.
    let d = FakeDevice::new("dp-display32", 32);
    e.td.ensure_device(&d).expect("create dp-display32");
    e.dp.declare("dp-display32", 1, 64 << 10).expect("declare dp-display32");
    "dp-display32"
}

fn gpu64(e: &Env) -> &'static str {
    let d = FakeDevice::new("dp-gpu64", 64);
    e.td.ensure_device(&d).expect("create dp-gpu64");
    "dp-gpu64"
}

fn isp4(e: &Env) -> &'static str {
    // A device without an IOMMU that takes at most 4 segments of up to 4 MiB.
    let d = FakeDevice::new("dp-isp4", 64);
    e.td.ensure_device(&d).expect("create dp-isp4");
    e.dp.declare("dp-isp4", 4, 0).expect("declare dp-isp4");
    "dp-isp4"
}

/// The PCI device with this vendor:device id, if present.
fn pci_device(vendor: &str, device: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/bus/pci/devices").ok()?;
    for e in dir.flatten() {
        let rd = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default().trim().to_owned();
        if rd("vendor") == vendor && rd("device") == device {
            return Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// virtio-gpu (a 64-bit PCI device) behind the IOMMU: the IOMMU importer.
fn virtio_gpu() -> String {
    pci_device("0x1af4", "0x1050").expect("virtio-gpu-pci is on the bus with --iommu")
}

fn info(id: u64) -> BufferInfo {
    Snapshot::read().expect("debugfs").buffer(id).unwrap_or_else(|| panic!("buffer {id} not in debugfs")).clone()
}

/// Prints the placement and checks it: the differential test against the core
/// solver, then `verify` of the backing against every device.
fn check(scenario: &str, e: &Env, b: &BufferInfo) -> kmod::CoreVerdict {
    println!(
        "PLACEMENT {scenario}: buffer {} ({}) {:#x} bytes, generation {}, migrations {}, plan strategy {}, window below {:#x}, devices: {}",
        b.id,
        b.name,
        b.size,
        b.generation,
        b.migrations,
        b.plan.strategy,
        b.plan.window_end.0,
        b.attachments
            .iter()
            .map(|a| format!("{}{}", a.dev, if a.iommu { "(iommu)" } else { "" }))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (i, s) in b.segments.iter().enumerate() {
        println!(
            "PLACEMENT {scenario}:   segment {i}: phys {:#x} len {:#x} order {} {}",
            s.phys, s.len, s.order, s.source
        );
    }
    for w in &b.why {
        println!("PLACEMENT {scenario}:   {w}");
    }
    let verdict = b
        .check_against_core(&e.platform)
        .unwrap_or_else(|m| panic!("{scenario}: module plan != core plan: {m}\n{b:#?}"));
    match (&verdict.plan, b.has_backing) {
        (Some(plan), true) => verify(plan, &plan.devices, &b.backing())
            .unwrap_or_else(|v| panic!("{scenario}: backing fails verify: {v}\n{b:#?}")),
        (None, true) => {
            panic!("{scenario}: the module allocated where the core finds no plan: {:?}\n{b:#?}", verdict.conflict)
        }
        _ => {}
    }
    verdict
}

/// The physical pages of a CPU mapping equal the backing's segments, page by page.
fn check_pagemap(scenario: &str, map: &RawMap, b: &BufferInfo) {
    phys::touch(map.as_slice());
    let pfns = phys::pagemap(map.addr(), map.len()).unwrap_or_else(|e| panic!("{scenario}: pagemap: {e}"));
    let want: Vec<u64> = b.segments.iter().flat_map(|s| (0..s.len / 4096).map(move |i| s.phys / 4096 + i)).collect();
    assert_eq!(pfns, want, "{scenario}: pagemap of the CPU mapping differs from the backing in debugfs");
}

/// A device without an IOMMU gets physical addresses: its DMA entries, merged,
/// are the backing's runs.
fn check_direct_dma(scenario: &str, sg: &kmod::SgDma, b: &BufferInfo) {
    let merge = |v: &mut Vec<(u64, u64)>, (s, l): (u64, u64)| match v.last_mut() {
        Some((ps, pl)) if *ps + *pl == s => *pl += l,
        _ => v.push((s, l)),
    };
    let mut dma = Vec::new();
    sg.entries.iter().for_each(|&x| merge(&mut dma, x));
    let mut runs = Vec::new();
    b.segments.iter().for_each(|s| merge(&mut runs, (s.phys, s.len)));
    assert_eq!(
        dma, runs,
        "{scenario}: the direct device's DMA addresses are not the backing's physical addresses (swiotlb bounce?)"
    );
}

/// Behind the IOMMU the DMA side is one IOVA-contiguous range covering the buffer.
fn check_iova(scenario: &str, sg: &kmod::SgDma, size: u64) {
    let total: u64 = sg.entries.iter().map(|e| e.1).sum();
    assert!(total >= size, "{scenario}: IOVA entries cover {total:#x} of {size:#x}");
    let contiguous = sg.entries.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0);
    assert!(contiguous, "{scenario}: IOVA entries are not contiguous: {:#x?}", sg.entries);
    println!(
        "PLACEMENT {scenario}:   IOMMU side: {} DMA entries, IOVA {:#x}..{:#x}",
        sg.entries.len(),
        sg.entries[0].0,
        sg.entries[0].0 + total
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn deferred_allocation() {
    let e = env("deferred_allocation");
    let gpu = gpu64(&e);
    // The module's own count of pages held by buffers (MemFree would mix in the
    // pool of pre-zeroed pages, which the first map draws from).
    let live = || Snapshot::read().expect("debugfs").live_bytes;
    let before = live();
    let buf = e.dp.create(64 * MIB, "deferred").expect("create");
    let h = e.td.attach(buf.fd.as_fd(), gpu, true).expect("dynamic attach");
    let b = info(buf.id);
    assert!(!b.has_backing && b.segments.is_empty(), "pages exist before the first map: {b:#?}");
    assert_eq!(live(), before, "buffers hold more pages after CREATE and attach, before any map");
    let sg = e.td.map(h).expect("first map");
    let b = info(buf.id);
    assert!(b.has_backing && b.generation == 1, "{b:#?}");
    assert_eq!(b.segments.iter().map(|s| s.len).sum::<u64>(), 64 * MIB);
    assert_eq!(live(), before + 64 * MIB, "the first map placed the whole buffer");
    check("deferred_allocation", &e, &b);
    check_direct_dma("deferred_allocation", &sg, &b);
    // A non-dynamic importer is mapped by the dma-buf core at attach time: for it
    // the attach is the first map.
    let eager = e.dp.create(MIB, "eager").expect("create");
    let _h2 = e.td.attach(eager.fd.as_fd(), gpu, false).expect("static attach");
    let b2 = info(eager.id);
    assert!(b2.has_backing && b2.attachments[0].pins == 1 && b2.attachments[0].maps == 1, "{b2:#?}");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn contiguous_below_4g_for_display_with_an_iommu_device() {
    let e = env("contiguous_below_4g");
    let display = display32(&e);
    let other = if e.iommu { virtio_gpu() } else { gpu64(&e).to_owned() };
    let buf = e.dp.create(4 * MIB, "scanout").expect("create");
    let hd = e.td.attach(buf.fd.as_fd(), display, true).expect("attach display");
    let hg = e.td.attach(buf.fd.as_fd(), &other, true).expect("attach other");
    // The other device maps first; the allocation serves both.
    let sg_other = e.td.map(hg).expect("map other");
    let sg_display = e.td.map(hd).expect("map display");
    let b = info(buf.id);
    check("contiguous_below_4g", &e, &b);
    assert_eq!(b.segments.len(), 1, "not contiguous: {b:#?}");
    assert!(b.segments[0].phys + b.size <= 4 * GIB, "above 4 GiB: {b:#?}");
    assert_eq!(b.segments[0].phys % (64 << 10), 0, "not 64 KiB aligned");
    assert_eq!(b.plan.window_end.1, vec![0], "the display causes the window");
    assert_eq!(b.plan.max_segments, (Some(1), vec![0]), "the display causes contiguity");
    check_direct_dma("contiguous_below_4g", &sg_display, &b);
    if e.iommu {
        assert!(b.attachments[1].iommu, "virtio-gpu is behind the IOMMU: {b:#?}");
        check_iova("contiguous_below_4g", &sg_other, b.size);
    } else {
        check_direct_dma("contiguous_below_4g", &sg_other, &b);
    }
    let map = RawMap::shared(buf.fd.as_fd(), 4 << 20, 0, true).expect("mmap");
    check_pagemap("contiguous_below_4g", &map, &b);
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn contiguous_beyond_the_page_allocator_comes_from_cma() {
    let e = env("contiguous_cma");
    let d = FakeDevice::new("dp-display64", 64);
    e.td.ensure_device(&d).expect("create");
    e.dp.declare("dp-display64", 1, 0).expect("declare");
    let buf = e.dp.create(8 * MIB, "cma").expect("create");
    let h = e.td.attach(buf.fd.as_fd(), "dp-display64", true).expect("attach");
    let sg = e.td.map(h).expect("map");
    let b = info(buf.id);
    check("contiguous_cma", &e, &b);
    assert_eq!(b.segments.len(), 1);
    assert_eq!(b.segments[0].source, "cma", "8 MiB contiguous is over MAX_ORDER: {b:#?}");
    let cma = e.platform.memory.cma.first().expect("a CMA area");
    let (start, end) = (cma.start.get(), cma.start.get() + cma.size.bytes());
    assert!(
        b.segments[0].phys >= start && b.segments[0].phys + b.size <= end,
        "not inside the CMA area {start:#x}..{end:#x}"
    );
    check_direct_dma("contiguous_cma", &sg, &b);
    // CMA pages are individually refcounted: mmap inserts them and pagemap sees them.
    let map = RawMap::shared(buf.fd.as_fd(), 8 << 20, 0, true).expect("mmap");
    check_pagemap("contiguous_cma", &map, &b);
    // 8 MiB contiguous below 4 GiB: only CMA could hold it, and when the kernel put
    // the CMA area above 4 GiB (its default on a machine with more RAM) there is
    // none: the module's map fails with ENOMEM and the core solver explains why.
    if start >= 4 * GIB {
        let display = display32(&e);
        let buf32 = e.dp.create(8 * MIB, "cma32").expect("create");
        let h32 = e.td.attach(buf32.fd.as_fd(), display, true).expect("attach");
        assert_eq!(e.td.map(h32), Err(Errno::NOMEM));
        let b32 = info(buf32.id);
        let verdict = check("contiguous_cma/32-bit", &e, &b32);
        let why = verdict.conflict.expect("the core finds no plan either");
        println!("PLACEMENT contiguous_cma/32-bit: ENOMEM; core: {why}");
    }
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn four_segment_device_gets_at_most_four() {
    let e = env("four_segments");
    let isp = isp4(&e);
    let buf = e.dp.create(8 * MIB, "isp").expect("create");
    let h = e.td.attach(buf.fd.as_fd(), isp, true).expect("attach");
    let sg = e.td.map(h).expect("map");
    let b = info(buf.id);
    check("four_segments", &e, &b);
    assert!(sg.entries.len() <= 4, "{} DMA entries for a 4-segment device: {:#x?}", sg.entries.len(), sg.entries);
    assert_eq!(b.plan.min_chunk, Some(2 * MIB));
    check_direct_dma("four_segments", &sg, &b);
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn iommu_chunk_orders_match_the_iommu_page_sizes() {
    let e = env("iommu_chunks");
    assert!(e.iommu, "iommu_chunks: needs the --iommu boot (kernel/test.sh skips iommu_* on the others)");
    let gpu = virtio_gpu();
    // Declare the IOMMU device contiguous: behind its IOMMU that binds IOVAs, which
    // the IOMMU lays out contiguously anyway, so it must not make the pages contiguous.
    e.dp.declare(&gpu, 1, 0).expect("declare");
    let size = 8 * MIB + 3 * 4096;
    let buf = e.dp.create(size, "iommu").expect("create");
    let h = e.td.attach(buf.fd.as_fd(), &gpu, true).expect("attach");
    let sg = e.td.map(h).expect("map");
    let b = info(buf.id);
    check("iommu_chunks", &e, &b);
    let a = &b.attachments[0];
    assert!(a.iommu && a.pgsize_bitmap & (2 * MIB) != 0, "VT-d maps 2 MiB pages: {a:#?}");
    assert_eq!(b.plan.strategy, "orders:9,0", "{b:#?}");
    assert!(b.segments.iter().all(|s| s.order == 9 || s.order == 0), "orders other than the IOMMU's: {b:#?}");
    assert!(b.segments.iter().filter(|s| s.order == 9).all(|s| s.phys % (2 * MIB) == 0 && s.len == 2 * MIB));
    assert_eq!(b.segments.iter().filter(|s| s.order == 9).count(), 4, "{b:#?}");
    check_iova("iommu_chunks", &sg, size);
    let map = RawMap::shared(buf.fd.as_fd(), usize::try_from(size).expect("size"), 0, true).expect("mmap");
    check_pagemap("iommu_chunks", &map, &b);
    assert_eq!(a.declared_max_segments, 1);
    assert!(
        !b.plan.contiguous && b.plan.max_segments == (None, vec![]),
        "a declared segment limit counted behind the IOMMU: {b:#?}"
    );
    println!(
        "PLACEMENT iommu_chunks:   {gpu} declared max_segments=1; behind the IOMMU it binds IOVAs only: plan not contiguous"
    );
    e.dp.forget(&gpu).expect("forget");
}

/// A byte pattern that differs from page to page.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 4096) & 0xff).to_le_bytes()[0]
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn late_attach_migrates_with_contents_and_move_notify() {
    let e = env("late_attach_migrates");
    let gpu = gpu64(&e);
    let display = display32(&e);
    let size = 4 * MIB;
    let buf = e.dp.create(size, "late").expect("create");
    let hg = e.td.attach(buf.fd.as_fd(), gpu, true).expect("attach gpu");
    e.td.map(hg).expect("map gpu");
    let first = info(buf.id);
    check("late_attach_migrates/before", &e, &first);
    if e.platform.memory.ram().ranges().last().is_some_and(|r| r.end().get() > 5 * GIB) {
        assert!(
            first.segments.iter().any(|s| s.phys >= 4 * GIB),
            "the 64-bit device's pages are all below 4 GiB: the test proves nothing"
        );
    }
    let mut map = RawMap::shared(buf.fd.as_fd(), 4 << 20, 0, true).expect("mmap");
    for (i, byte) in map.as_mut_slice().iter_mut().enumerate() {
        *byte = pattern(i);
    }
    check_pagemap("late_attach_migrates/before", &map, &first);
    e.td.unmap(hg).expect("unmap gpu");
    let hd = e.td.attach(buf.fd.as_fd(), display, true).expect("late attach while nothing is mapped");
    let pending = info(buf.id);
    assert_eq!(pending.attachments[1].served, Some(false), "{pending:#?}");
    let sg = e.td.map(hd).expect("map display: migrates");
    let after = info(buf.id);
    check("late_attach_migrates/after", &e, &after);
    assert_eq!((after.migrations, after.generation), (1, 2), "{after:#?}");
    assert_eq!(after.segments.len(), 1);
    assert!(after.segments[0].phys + size <= 4 * GIB);
    check_direct_dma("late_attach_migrates", &sg, &after);
    // The old CPU mapping faults in the new pages, with the contents preserved.
    for (i, byte) in map.as_slice().iter().enumerate() {
        assert_eq!(*byte, pattern(i), "byte {i} changed in the migration");
    }
    check_pagemap("late_attach_migrates/after", &map, &after);
    let st = e.td.status(hg).expect("status");
    assert!(st.move_notifies >= 1, "the dynamic gpu attachment saw no move_notify: {st:?}");
    println!("PLACEMENT late_attach_migrates:   move_notify seen by {gpu}: {}", st.move_notifies);
    // The gpu maps again, now on the display-friendly pages.
    let sg_gpu = e.td.map(hg).expect("gpu maps the new backing");
    check_direct_dma("late_attach_migrates/gpu", &sg_gpu, &after);
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn late_attach_is_busy_while_mapped_or_fenced() {
    let e = env("late_attach_busy");
    let gpu = gpu64(&e);
    let display = display32(&e);
    let buf = e.dp.create(2 * MIB, "busy").expect("create");
    let hg = e.td.attach(buf.fd.as_fd(), gpu, true).expect("attach gpu");
    e.td.map(hg).expect("map gpu");
    let b = info(buf.id);
    assert!(
        b.segments.iter().any(|s| s.phys + s.len > 4 * GIB),
        "late_attach_busy: the 64-bit device's pages all landed below 4 GiB, so the display fits them and the test proves nothing: {b:#?}"
    );
    // Pinned by a static (DRM-like) importer: both a dynamic and a static late attach get EBUSY.
    let hs = e.td.attach(buf.fd.as_fd(), gpu, false).expect("static attach (pins and maps)");
    assert_eq!(e.td.attach(buf.fd.as_fd(), display, true), Err(Errno::BUSY));
    assert_eq!(e.td.attach(buf.fd.as_fd(), display, false), Err(Errno::BUSY));
    let b = info(buf.id);
    // The static importer's pin, plus the dynamic mapping's when the core pins every mapping.
    let pins = if move_notify_enabled() { 1 } else { 2 };
    assert!(b.refused >= 2 && b.attachments.len() == 2 && b.pins == pins, "{b:#?}");
    check("late_attach_busy/pinned", &e, &b);
    println!("PLACEMENT late_attach_busy:   while a static importer of {gpu} pinned it: EBUSY x{}", b.refused);
    e.td.detach(hs).expect("detach the static importer");
    // Unmapped but with an unsignalled write fence in the reservation object: EBUSY.
    e.td.unmap(hg).expect("unmap");
    let timeline = SwSync::open().expect("sw_sync");
    let fence = timeline.fence(1).expect("fence");
    kmod::import_sync_file(buf.fd.as_fd(), fence.as_fd(), true).expect("import the fence");
    assert_eq!(e.td.attach(buf.fd.as_fd(), display, true), Err(Errno::BUSY), "unsignalled fence");
    timeline.inc(1).expect("signal");
    let hd = e.td.attach(buf.fd.as_fd(), display, true).expect("attach once the fence signalled");
    e.td.map(hd).expect("migrates");
    let b = info(buf.id);
    assert_eq!(b.migrations, 1);
    check("late_attach_busy/after_fence", &e, &b);
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn differential_plans_for_many_device_sets() {
    let e = env("differential");
    let display = FakeDevice::new("dp-display32", 32);
    let devices = vec![
        (FakeDevice { bus_dma_limit: 0x7fff_ffff, ..FakeDevice::new("dp-bus31", 64) }, (0, 0)),
        (
            FakeDevice {
                segment_boundary_mask: 0xffff_ffff,
                max_segment_size: 1 << 16,
                ..FakeDevice::new("dp-pci32", 32)
            },
            (0, 0),
        ),
        (FakeDevice::new("dp-dev36", 36), (0, 1 << 20)),
        (FakeDevice::new("dp-dev30", 30), (0, 0)),
        (FakeDevice { max_segment_size: 1 << 20, ..FakeDevice::new("dp-isp8", 40) }, (8, 0)),
        (display.clone(), (1, 64 << 10)),
        (FakeDevice::new("dp-isp4", 64), (4, 0)),
        (FakeDevice::new("dp-gpu64", 64), (0, 0)),
    ];
    for (d, decl) in &devices {
        e.td.ensure_device(d).expect("create");
        if *decl != (0, 0) {
            e.dp.declare(&d.name, decl.0, decl.1).expect("declare");
        }
    }
    // Behind the IOMMU: the real virtio-gpu PCI device (only fake devices are created).
    let mut names: Vec<String> = devices.iter().map(|(d, _)| d.name.clone()).collect();
    if e.iommu {
        names.push(virtio_gpu());
    }
    let (mut checked, mut conflicts, mut memory_conflicts) = (0, 0, 0);
    // Every pair and every run of four; the plan is compared before any allocation.
    for i in 0..names.len() {
        for j in i..names.len() {
            let pair = vec![i, j];
            let run: Vec<usize> = (i..names.len()).take(4).collect();
            for set in [pair, run] {
                let buf = e.dp.create(16 * MIB, "diff").expect("create");
                for (k, &d) in set.iter().enumerate() {
                    match e.td.attach(buf.fd.as_fd(), &names[d], true) {
                        Ok(_) => {}
                        Err(Errno::INVAL) if d < devices.len() => {
                            let (dev, decl) = &devices[d];
                            // No backing can meet the set: the core solver must say so too.
                            let mut b = info(buf.id);
                            let mut extra = dev.attach_info(*decl);
                            extra.idx = k;
                            b.attachments.push(extra);
                            let verdict = b.core_plan(&e.platform);
                            assert!(
                                verdict.is_err(),
                                "the module refused {} on {set:?} but the core solves it",
                                dev.name
                            );
                            conflicts += 1;
                            break;
                        }
                        Err(err) => panic!("attach {}: {err}", names[d]),
                    }
                }
                let b = info(buf.id);
                let verdict = b.check_against_core(&e.platform).unwrap_or_else(|m| panic!("{set:?}: {m}\n{b:#?}"));
                memory_conflicts += usize::from(verdict.plan.is_none());
                checked += 1;
            }
        }
    }
    println!(
        "PLACEMENT differential: {checked} device sets, module plan == dmaplace_core::solve for each; {conflicts} sets refused as conflicts by both; {memory_conflicts} with no memory to hold them (core)"
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn real_importers() {
    let e = env("real_importers");
    let mut seen = Vec::new();
    for driver in ["vgem", "vkms", "cirrus", "virtio_gpu"] {
        let Ok(card) = DrmCard::open_driver(&[driver]) else {
            println!("PLACEMENT real_importers: {driver}: no card on this boot");
            continue;
        };
        let buf = e.dp.create(MIB, driver).expect("create");
        match card.import(&buf.fd) {
            Ok(handle) => {
                let b = info(buf.id);
                let a = &b.attachments[0];
                println!(
                    "PLACEMENT real_importers: {driver} imported as {} (dma_mask {:#x}, max_segment_size {:#x}, boundary {:#x}, iommu {} pgsize {:#x})",
                    a.dev, a.dma_mask, a.max_segment_size, a.segment_boundary_mask, a.iommu, a.pgsize_bitmap
                );
                assert!(a.pins == 1 && a.maps == 1 && b.has_backing, "PRIME import pins and maps at attach: {b:#?}");
                check(&format!("real_importers/{driver}"), &e, &b);
                seen.push(driver);
                drop(handle);
            }
            Err(err) => {
                // virtio-gpu refuses foreign dma-bufs (it wants its own blob resources).
                println!("PLACEMENT real_importers: {driver}: import refused: {err}");
                assert_eq!(driver, "virtio_gpu", "{driver} refused the import: {err}");
            }
        }
    }
    assert!(seen.contains(&"vgem") && seen.contains(&"vkms") && seen.contains(&"cirrus"), "imported into {seen:?}");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn cpu_access_brackets_and_mmap_before_any_device() {
    let e = env("cpu_access");
    let buf = e.dp.create(256 << 10, "cpu").expect("create");
    // The CPU alone: mmap allocates (any memory will do) and pagemap shows the pages.
    let mut map = RawMap::shared(buf.fd.as_fd(), 256 << 10, 0, true).expect("mmap");
    map.as_mut_slice()[0] = 42;
    let b = info(buf.id);
    assert!(b.has_backing && b.mmaps == 1);
    check_pagemap("cpu_access", &map, &b);
    // DMA_BUF_IOCTL_SYNC begin/end reaches begin/end_cpu_access.
    let gpu = gpu64(&e);
    let h = e.td.attach(buf.fd.as_fd(), gpu, true).expect("attach");
    e.td.map(h).expect("map");
    use dmaplace_linux::sys::ioctl::{DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, dma_buf_sync};
    dma_buf_sync(buf.fd.as_fd(), DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE).expect("sync start");
    dma_buf_sync(buf.fd.as_fd(), DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE | DMA_BUF_SYNC_END).expect("sync end");
    assert_eq!(map.as_slice()[0], 42);
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn bad_ioctls_are_refused() {
    let e = env("bad_ioctls");
    use kmod::abi;
    let ok = kmod::create_request(4096, kmod::FD_FLAGS_RDWR_CLOEXEC, 0, "ok").unwrap();
    let create = |b: &mut [u8]| e.dp.raw(abi::IOCTL_CREATE, b);
    type Corrupt = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, Corrupt, Errno)> = vec![
        ("size 0", Box::new(|b| b[0..8].copy_from_slice(&0u64.to_ne_bytes())), Errno::INVAL),
        ("size not page-aligned", Box::new(|b| b[0..8].copy_from_slice(&4097u64.to_ne_bytes())), Errno::INVAL),
        ("size over 1 GiB", Box::new(|b| b[0..8].copy_from_slice(&(2u64 << 30).to_ne_bytes())), Errno::INVAL),
        ("output fd not zero", Box::new(|b| b[8] = 3), Errno::INVAL),
        ("output id not zero", Box::new(|b| b[24] = 1), Errno::INVAL),
        (
            "unknown fd_flags (O_NONBLOCK)",
            Box::new(|b| b[12..16].copy_from_slice(&0o4000u32.to_ne_bytes())),
            Errno::INVAL,
        ),
        ("unknown flags", Box::new(|b| b[16] = 2), Errno::INVAL),
        ("name without NUL", Box::new(|b| b[32..64].fill(b'a')), Errno::INVAL),
        ("name with a space", Box::new(|b| b[33] = b' '), Errno::INVAL),
    ];
    let mut refusals = 0;
    let mut refused = |got: Result<i32, Errno>, want: Errno, what: &str| {
        assert_eq!(got, Err(want), "{what}");
        refusals += 1;
    };
    for (what, corrupt, want) in cases {
        let mut b = ok;
        corrupt(&mut b);
        refused(create(&mut b), want, &format!("CREATE with {what}"));
    }
    // Forward compatibility: a larger struct with zeros beyond what the module knows
    // works; a non-zero byte there is E2BIG; a struct too small for the outputs is EINVAL.
    let bigger = abi::IOCTL_CREATE & !(0x3fff << 16) | (96 << 16);
    let mut b = [0u8; 96];
    b[..64].copy_from_slice(&ok);
    assert_eq!(e.dp.raw(bigger, &mut b), Ok(0), "a 96-byte CREATE with a zero tail");
    assert!(Dmaplace::take_fd(&b).is_some());
    b[..64].copy_from_slice(&ok);
    b[90] = 1;
    refused(e.dp.raw(bigger, &mut b), Errno::TOOBIG, "a non-zero byte the module does not know");
    let smaller = abi::IOCTL_CREATE & !(0x3fff << 16) | (16 << 16);
    refused(e.dp.raw(smaller, &mut ok.clone()), Errno::INVAL, "a CREATE too small to return the fd");
    // Unknown ioctls and a known number with the wrong direction.
    refused(e.dp.raw(abi::IOCTL_CREATE & !0xff | 0x0f, &mut ok.clone()), Errno::NOTTY, "unknown ioctl number");
    refused(e.dp.raw(abi::IOCTL_CREATE & !(3 << 30) | (1 << 30), &mut ok.clone()), Errno::NOTTY, "CREATE as _IOW");
    // DECLARE.
    let decl = |b: &mut [u8; abi::DECLARE_SIZE]| e.dp.raw(abi::IOCTL_DECLARE, b);
    refused(decl(&mut kmod::declare_request("", 1, 0, 0).unwrap()), Errno::INVAL, "empty device name");
    refused(decl(&mut kmod::declare_request("x", 1, 2, 0).unwrap()), Errno::INVAL, "unknown flag");
    refused(decl(&mut kmod::declare_request("x", 1, 0, 3000).unwrap()), Errno::INVAL, "alignment not a power of two");
    refused(decl(&mut kmod::declare_request("x", 1, 0, 8 << 20).unwrap()), Errno::INVAL, "alignment over 4 MiB");
    let mut r = kmod::declare_request("x", 1, 0, 0).unwrap();
    r[88] = 1;
    refused(decl(&mut r), Errno::INVAL, "reserved bytes");
    let mut r = kmod::declare_request("x", 1, 0, 0).unwrap();
    r[80] = 1;
    refused(decl(&mut r), Errno::INVAL, "max_segment_size below 4 KiB");
    let mut r = kmod::declare_request("x", 1, 0, 0).unwrap();
    r[84] = 1;
    refused(decl(&mut r), Errno::INVAL, "max_segment_size above 4 GiB - 1");
    refused(e.dp.forget("never-declared").map(|()| 0), Errno::NOENT, "FORGET of an undeclared device");
    refused(
        decl(&mut kmod::declare_request("x", 1, abi::DECLARE_FORGET, 0).unwrap()),
        Errno::INVAL,
        "FORGET with values",
    );
    // The test device.
    let buf = e.dp.create(4096, "bad").expect("create");
    refused(e.td.attach(buf.fd.as_fd(), "no-such-device", true).map(|_| 0), Errno::NODEV, "attach to no device");
    refused(e.td.map(12345).map(|_| 0), Errno::NOENT, "map of an unknown handle");
    let hs = e.td.attach(buf.fd.as_fd(), gpu64(&e), false).expect("static attach");
    refused(e.td.pin(hs).map(|()| 0), Errno::INVAL, "PIN of a static attachment");
    let hd = e.td.attach(buf.fd.as_fd(), gpu64(&e), true).expect("dynamic attach");
    refused(e.td.unpin(hd).map(|()| 0), Errno::INVAL, "UNPIN without a pin");
    println!("PLACEMENT bad_ioctls: {refusals} refusals checked");
}

/// A buffer of the 64-bit device placed above 4 GiB (the late-attach tests need a
/// backing the 32-bit display cannot use), filled with [`pattern`] through `map`.
struct HighBuffer {
    buf: kmod::Created,
    gpu: u64,
    map: RawMap,
    first: BufferInfo,
}

fn high_buffer(e: &Env, size: u64, name: &str, importer: Importer) -> HighBuffer {
    let gpu = gpu64(e);
    let buf = e.dp.create(size, name).expect("create");
    let hg = e.td.attach_as(buf.fd.as_fd(), gpu, importer).expect("attach gpu");
    e.td.map(hg).expect("map gpu");
    let first = info(buf.id);
    assert!(
        first.segments.iter().any(|s| s.phys + s.len > 4 * GIB),
        "{name}: the 64-bit device's pages all landed below 4 GiB, so a late 32-bit attach needs no move: {first:#?}"
    );
    let len = usize::try_from(size).expect("size");
    let mut map = RawMap::shared(buf.fd.as_fd(), len, 0, true).expect("mmap");
    for (i, byte) in map.as_mut_slice().iter_mut().enumerate() {
        *byte = pattern(i);
    }
    HighBuffer { buf, gpu: hg, map, first }
}

/// The bytes of the backing's segments, read from physical memory.
fn physical_contents(b: &BufferInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(b.size).expect("size"));
    for s in &b.segments {
        let mut chunk = vec![0u8; usize::try_from(s.len).expect("len")];
        guest::read_physical(s.phys, &mut chunk).expect("read /proc/kcore");
        out.extend_from_slice(&chunk);
    }
    out.truncate(usize::try_from(b.size).expect("size"));
    out
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn a_write_through_the_old_mmap_after_a_move_lands_in_the_new_pages() {
    let e = env("write_after_move");
    let size = 4 * MIB;
    let mut h = high_buffer(&e, size, "write-after-move", Importer::LazyDynamic);
    e.td.unmap(h.gpu).expect("unmap gpu");
    let hd = e.td.attach(h.buf.fd.as_fd(), display32(&e), true).expect("late attach");
    e.td.map(hd).expect("map display: migrates");
    let after = info(h.buf.id);
    assert_eq!(after.migrations, 1, "{after:#?}");
    assert_ne!(after.segments[0].phys, h.first.segments[0].phys, "the backing did not move: {after:#?}");
    // Write through the mapping made before the move: it faults onto the new pages.
    for (i, byte) in h.map.as_mut_slice().iter_mut().enumerate() {
        *byte = !pattern(i);
    }
    let phys = physical_contents(&after);
    let bad = phys.iter().enumerate().find(|(i, b)| **b != !pattern(*i));
    assert!(bad.is_none(), "byte {:?} of the new pages (read from /proc/kcore) is not what was written", bad);
    check_pagemap("write_after_move", &h.map, &after);
    check("write_after_move", &e, &after);
    println!(
        "PLACEMENT write_after_move:   {size:#x} bytes written through the old mapping read back from the new pages at {:#x} via /proc/kcore",
        after.segments[0].phys
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn a_thread_faults_the_mmap_while_late_attachers_migrate_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let e = env("fault_during_move");
    let size = 2 * MIB;
    let h = high_buffer(&e, size, "fault-during-move", Importer::LazyDynamic);
    e.td.unmap(h.gpu).expect("unmap gpu");
    let pages = usize::try_from(size / 4096).expect("pages");
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let map = Arc::new(h.map);
    let writer = {
        let (stop, rounds, map) = (stop.clone(), rounds.clone(), map.clone());
        std::thread::spawn(move || {
            // Each round writes (round, page) at the start of every page through the shared
            // mapping and reads it back; a write lost in a move shows as a wrong read.
            let base = map.addr() as *mut u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) || round < 2 {
                round += 1;
                for p in 0..pages {
                    let v = (round << 32) | p as u64;
                    // SAFETY: the page lies inside the live shared mapping `map` (kept alive by the
                    // Arc); u64 accesses at page starts are aligned; only this thread writes.
                    #[allow(unsafe_code)]
                    unsafe {
                        let at = base.add(p * 512);
                        std::ptr::write_volatile(at, v);
                        assert_eq!(std::ptr::read_volatile(at), v, "page {p} lost a write in round {round}");
                    }
                }
                rounds.store(round, Ordering::Relaxed);
            }
            round
        })
    };
    // Late attachers with tighter constraints: the first (32-bit, contiguous) must move the
    // buffer from above 4 GiB; the others move it again when the backing happens not to
    // serve them (where it lands decides), or find no room (ENOMEM) and leave it be.
    let mut moved = 0;
    for (name, bits, align) in [("dp-fault32", 32, 64 << 10), ("dp-fault-4m", 64, 4 << 20), ("dp-fault31", 31, 0)] {
        e.td.ensure_device(&FakeDevice::new(name, bits)).expect("device");
        e.dp.declare(name, 1, align).expect("declare contiguous");
        let generation = info(h.buf.id).generation;
        let hl = e.td.attach(h.buf.fd.as_fd(), name, true).expect("late attach");
        let outcome = match e.td.map(hl) {
            Ok(_) => {
                e.td.unmap(hl).expect("unmap");
                "mapped"
            }
            Err(Errno::NOMEM) => "no room in its window (ENOMEM), not moved",
            Err(err) => panic!("map for {name}: {err}"),
        };
        e.td.detach(hl).expect("detach");
        let now = info(h.buf.id);
        moved = now.migrations;
        println!(
            "PLACEMENT fault_during_move:   {name}: {outcome}, generation {generation} -> {}, writer at round {}",
            now.generation,
            rounds.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().expect("the writer thread saw a lost write");
    let after = info(h.buf.id);
    assert!(moved >= 1, "no migration happened under the writer: {after:#?}");
    // Every page holds the writer's last round, in memory as through the mapping.
    let phys = physical_contents(&after);
    for p in 0..pages {
        let v = u64::from_ne_bytes(phys[p * 4096..p * 4096 + 8].try_into().expect("8 bytes"));
        assert_eq!(v, (last << 32) | p as u64, "page {p} in physical memory after {moved} moves");
    }
    check_pagemap("fault_during_move", &map, &after);
    check("fault_during_move", &e, &after);
    println!("PLACEMENT fault_during_move:   {moved} moves while a thread wrote {last} rounds; no write lost");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn a_pin_without_a_map_blocks_migration_and_pins_nest() {
    let e = env("pin_blocks_move");
    let h = high_buffer(&e, 2 * MIB, "pinned", Importer::LazyDynamic);
    e.td.unmap(h.gpu).expect("unmap gpu");
    e.td.pin(h.gpu).expect("pin");
    e.td.pin(h.gpu).expect("pin again (nested)");
    let b = info(h.buf.id);
    assert_eq!((b.maps, b.pins, b.attachments[0].pins), (0, 2, 2), "{b:#?}");
    assert_eq!(e.td.status(h.gpu).expect("status").pins, 2);
    let display = display32(&e);
    assert_eq!(e.td.attach(h.buf.fd.as_fd(), display, true), Err(Errno::BUSY), "pinned twice, no mapping");
    e.td.unpin(h.gpu).expect("unpin once");
    assert_eq!(e.td.attach(h.buf.fd.as_fd(), display, true), Err(Errno::BUSY), "still pinned once");
    e.td.unpin(h.gpu).expect("unpin again");
    let hd = e.td.attach(h.buf.fd.as_fd(), display, true).expect("attach once unpinned");
    e.td.map(hd).expect("map: migrates");
    let b = info(h.buf.id);
    // Left pinned: the display's mapping, when the core pins every mapping.
    let pins = u32::from(!move_notify_enabled());
    assert_eq!((b.migrations, b.refused, b.pins), (1, 2, pins), "{b:#?}");
    check("pin_blocks_move", &e, &b);
    println!(
        "PLACEMENT pin_blocks_move:   2 nested pins without a mapping: EBUSY until both were dropped, then 1 move"
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn importers_with_live_mappings_get_move_notify_and_old_pages_outlive_their_mappings() {
    let e = env("move_while_mapped");
    let size = 2 * MIB;
    // An eager importer (unmaps inside move_notify) and a lazy one (unmaps later) both keep
    // a live mapping while a late attacher arrives.
    let h = high_buffer(&e, size, "move-while-mapped", Importer::EagerDynamic);
    let lazy = e.td.attach_as(h.buf.fd.as_fd(), gpu64(&e), Importer::LazyDynamic).expect("attach lazy");
    e.td.map(lazy).expect("map lazy");
    let display = display32(&e);
    if !move_notify_enabled() {
        // Without CONFIG_DMABUF_MOVE_NOTIFY every mapping pins the buffer: no move while mapped.
        let b = info(h.buf.id);
        assert_eq!(b.pins, 2, "each mapping pins with move_notify off: {b:#?}");
        assert_eq!(e.td.attach(h.buf.fd.as_fd(), display, true), Err(Errno::BUSY));
        println!("PLACEMENT move_while_mapped:   CONFIG_DMABUF_MOVE_NOTIFY off: 2 mappings pin the buffer: EBUSY");
        return;
    }
    let before = Snapshot::read().expect("debugfs");
    let hd = e.td.attach(h.buf.fd.as_fd(), display, true).expect("late attach: allowed, nothing pinned");
    e.td.map(hd).expect("map display: migrates");
    let eager = e.td.status(h.gpu).expect("status");
    let lazy_st = e.td.status(lazy).expect("status");
    assert!(eager.move_notifies >= 1 && eager.unmapped_on_move == 1 && eager.maps == 0, "{eager:?}");
    assert!(lazy_st.move_notifies >= 1 && lazy_st.maps == 1, "{lazy_st:?}");
    // The lazy importer still maps the old pages: they are retired, not freed, and still
    // hold the contents they had at the move.
    let b = info(h.buf.id);
    assert_eq!((b.migrations, b.moves_while_mapped, b.retired, b.retired_bytes), (1, 1, 1, size), "{b:#?}");
    let old = &h.first.segments;
    let mut old_bytes = Vec::new();
    for s in old {
        let mut c = vec![0u8; usize::try_from(s.len).expect("len")];
        guest::read_physical(s.phys, &mut c).expect("kcore");
        old_bytes.extend_from_slice(&c);
    }
    assert!(old_bytes.iter().enumerate().all(|(i, b)| *b == pattern(i)), "the retired pages changed while mapped");
    let during = Snapshot::read().expect("debugfs");
    assert!(during.live_bytes >= before.live_bytes + size, "the old pages were freed under a live mapping");
    check("move_while_mapped/retired", &e, &b);
    // Once the lazy importer unmaps, the old pages go.
    e.td.unmap(lazy).expect("unmap lazy");
    let b = info(h.buf.id);
    assert_eq!((b.retired, b.retired_bytes), (0, 0), "{b:#?}");
    let after = Snapshot::read().expect("debugfs");
    assert!(after.chunks_freed > during.chunks_freed, "no chunk freed after the last old mapping went");
    if let Some((errors, _)) = guest::dma_debug() {
        assert_eq!(errors, 0, "dma-debug errors");
    }
    println!(
        "PLACEMENT move_while_mapped:   eager importer unmapped in move_notify; lazy importer kept {size:#x} bytes of old pages retired until it unmapped"
    );
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn cpu_mappings_give_no_page_references_and_refuse_map_private() {
    let e = env("no_page_refs");
    let buf = e.dp.create(MIB, "gup").expect("create");
    let map = RawMap::shared(buf.fd.as_fd(), usize::try_from(MIB).expect("size"), 0, true).expect("mmap");
    phys::touch(map.as_slice());
    // get_user_pages_fast (vmsplice) and get_user_pages (/proc/self/mem) both refuse it.
    assert_eq!(guest::vmsplice_into_pipe(map.as_slice()), Err(Errno::FAULT), "vmsplice took page references");
    let mem = guest::read_proc_self_mem(map.addr(), 4096);
    assert!(mem.is_err(), "/proc/self/mem read the mapping through get_user_pages");
    // The same calls work on ordinary memory (the probes themselves are sound).
    let anon = vec![7u8; 8192];
    assert_eq!(guest::vmsplice_into_pipe(&anon[4096..]), Ok(4096));
    assert_eq!(guest::read_proc_self_mem(anon.as_ptr() as usize, 16).expect("/proc/self/mem"), vec![7u8; 16]);
    assert_eq!(guest::try_map_private(buf.fd.as_fd(), 4096), Err(Errno::INVAL), "MAP_PRIVATE");
    println!("PLACEMENT no_page_refs:   vmsplice EFAULT, /proc/self/mem {mem:?}, MAP_PRIVATE EINVAL");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn create_installs_the_fd_only_after_the_result_is_copied_out() {
    let e = env("create_efault");
    let fds = || std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count();
    let before = (fds(), Snapshot::read().expect("debugfs").buffers.len());
    let req = kmod::create_request(MIB, kmod::FD_FLAGS_RDWR_CLOEXEC, 0, "efault").expect("request");
    assert_eq!(e.dp.create_unwritable(&req), Err(Errno::FAULT));
    let after = (fds(), Snapshot::read().expect("debugfs").buffers.len());
    assert_eq!(after, before, "(open fds, buffers) changed by a CREATE whose result could not be copied out");
    println!("PLACEMENT create_efault:   EFAULT on copy-out: no fd installed, buffer released");
}

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn declare_needs_cap_sys_admin() {
    let _e = env("declare_cap");
    let r = guest::without_cap_sys_admin(|| {
        let dp = Dmaplace::open().expect("open");
        let create = dp.create(4096, "nocap").map(drop);
        (dp.declare("dp-nocap", 1, 0), create)
    })
    .expect("thread");
    assert_eq!(r, (Err(Errno::PERM), Ok(())), "(DECLARE, CREATE) without CAP_SYS_ADMIN");
    println!("PLACEMENT declare_cap:   without CAP_SYS_ADMIN: DECLARE EPERM, CREATE allowed");
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

#[test]
#[ignore = "guest only: kernel/test.sh runs it in the qemu rig with --include-ignored"]
fn each_owner_is_held_to_owner_limit_mib() {
    let _e = env("owner_limit");
    let _limit = ParamGuard::set("owner_limit_mib", "8");
    let a = Dmaplace::open().expect("open");
    let first = a.create(4 * MIB, "limit-a1").expect("4 of 8 MiB");
    let _second = a.create(4 * MIB, "limit-a2").expect("8 of 8 MiB");
    assert_eq!(a.create(4096, "limit-a3").map(drop), Err(Errno::NOMEM), "over the limit");
    // Another opener is another owner.
    let b = Dmaplace::open().expect("open");
    let _other = b.create(8 * MIB, "limit-b").expect("a second owner's 8 MiB");
    // Releasing a buffer returns its charge; the limit counts sizes, not pages placed.
    drop(first);
    let again = a.create(4 * MIB, "limit-a4").expect("4 MiB after releasing 4 MiB");
    assert!(!info(again.id).has_backing);
    println!(
        "PLACEMENT owner_limit:   owner_limit_mib=8: 8 MiB per opener, the 9th refused with ENOMEM, freed on release"
    );
}
