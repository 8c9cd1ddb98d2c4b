//! In-guest tests: dmaplace on real kernels (`vm/test-linux.sh` boots Debian's 6.12 and
//! the self-built 6.12 under qemu and runs this binary as root in each).
//!
//! On the host every test is `#[ignore]`d with the reason (and fails, saying why, if run
//! with `--include-ignored` there); `vm/test-linux.sh` runs them in the guest with
//! `--include-ignored`. In the guest, anything the kernel should have and does not is a
//! failure.

mod common;

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use common::{Kernel, bufinfo, guest, plan, plans, sized, xr24};
use dmaplace_core::backend::{Backend, CpuAccess};
use dmaplace_core::{Field, PhysRange, Plan, Size};
use dmaplace_linux::drm::DrmCard;
use dmaplace_linux::{Buffer, HeapKind, Inventory, LinuxBackend, LinuxError, Method, Source};

/// Every source this kernel has, in a fixed order.
fn sources(inv: &Inventory) -> Vec<Source> {
    let mut v: Vec<Source> =
        inv.heaps.iter().filter(|h| h.kind != HeapKind::Unknown).map(|h| Source::Heap(h.name.clone())).collect();
    if inv.udmabuf.is_some() {
        v.push(Source::Udmabuf);
        v.push(Source::UdmabufHuge);
    }
    v
}

fn cma_range(inv: &Inventory) -> Option<PhysRange> {
    inv.heaps.iter().find_map(|h| match &h.kind {
        HeapKind::Cma(a) => a.range,
        _ => None,
    })
}

fn fmt_runs(runs: &[PhysRange]) -> String {
    let shown: Vec<String> = runs.iter().take(4).map(ToString::to_string).collect();
    let more = if runs.len() > 4 { format!(" and {} more", runs.len() - 4) } else { String::new() };
    format!("{} run(s): {}{more}", runs.len(), shown.join(", "))
}

#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn inventory_matches_the_kernel() {
    let kernel = guest("inventory_matches_the_kernel");
    let inv = Inventory::probe();
    print!("{inv}");
    assert!(inv.root, "the rig runs tests as root");
    assert!(
        matches!(inv.heap("system").map(|h| &h.kind), Some(HeapKind::System)),
        "every 6.12 kernel of the rig has the system heap"
    );
    assert!(inv.udmabuf.is_some(), "udmabuf is built into both kernels");
    assert!(inv.ram.is_ok(), "RAM ranges from /proc/iomem: {:?}", inv.ram);
    assert!(inv.kcore, "/proc/kcore must be readable (CONFIG_PROC_KCORE): it is how system-heap placement is proven");
    assert!(inv.drm_cards("vgem").next().is_some(), "vgem is in both kernels");
    let cma: Vec<_> = inv.heaps.iter().filter(|h| matches!(h.kind, HeapKind::Cma(_))).collect();
    match kernel {
        Kernel::Debian => {
            assert!(cma.is_empty(), "Debian's 6.12 has CONFIG_CMA off");
            assert!(
                inv.drm.iter().any(|c| c.driver.starts_with("cirrus")),
                "cirrus (qemu -device cirrus-vga): {:?}",
                inv.drm
            );
        }
        Kernel::Custom => {
            let [heap] = cma.as_slice() else { panic!("the custom kernel has one CMA heap, found {cma:?}") };
            let HeapKind::Cma(area) = &heap.kind else { unreachable!() };
            let range = area.range.unwrap_or_else(|| panic!("CMA range must be read from the kernel: {}", area.source));
            assert_eq!(range.len(), Size::mib(64), "booted with cma=64M");
            let ram = inv.ram.as_ref().unwrap();
            assert!(ram.contains_range(range), "the CMA area {range} lies in RAM {ram}");
            assert!(area.debugfs.is_some(), "CONFIG_CMA_DEBUGFS gives the area's bitmap");
            println!("CMA heap `{}`: area `{}` at {range} (from {})", heap.name, area.name, area.source);
            assert!(inv.drm_cards("vkms").next().is_some(), "vkms is built into the custom kernel");
        }
    }
}

/// For every plan and every source: the source either promises the plan, and then the
/// buffer it gives is placed as promised (proven through the kernel's page frames), or
/// refuses, saying why. Every buffer is then imported into vgem.
#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn every_source_every_plan_is_placed_and_verified() {
    let kernel = guest("every_source_every_plan_is_placed_and_verified");
    let mut be = LinuxBackend::new();
    let inv = be.inventory().clone();
    let vgem = DrmCard::open_driver(&["vgem"]).expect("vgem card");
    let mut admitted: BTreeSet<(String, String)> = BTreeSet::new();
    for (label, plan) in plans() {
        for source in sources(&inv) {
            let name = format!("t-{}", admitted.len());
            match be.allocate_from(&source, &plan, &name) {
                Ok(buf) => {
                    let t = Instant::now();
                    let (runs, method) = be.placement(&buf).unwrap_or_else(|e| panic!("{label} from {source}: {e}"));
                    let backing = be
                        .verify(&plan, &buf)
                        .unwrap_or_else(|e| panic!("{label} from {source}: placement fails: {e}"));
                    assert!(backing.len() >= plan.size);
                    println!(
                        "{label} from {source}: {} via {method} ({:.2}s): verified",
                        fmt_runs(&runs),
                        t.elapsed().as_secs_f64()
                    );
                    check_shape(&inv, &source, &runs);
                    let h = vgem.import(&buf).unwrap_or_else(|e| panic!("{label} from {source}: vgem import: {e}"));
                    assert_ne!(h.get(), 0);
                    admitted.insert((label.to_owned(), source.to_string()));
                }
                Err(LinuxError::NoFit(e)) => {
                    println!("{label} from {source}: refused: {}", e.rejected[0].reason)
                }
                Err(e) => panic!("{label} from {source}: {e}"),
            }
        }
    }
    let has = |label: &str, source: &str| admitted.iter().any(|(l, s)| l.starts_with(label) && s == source);
    for label in ["address-limited", "IOMMU-chunked", "plain"] {
        assert!(has(label, "dma-heap `system`"), "the system heap serves the {label} plan");
        assert!(has(label, "udmabuf (shmem memfd)"), "udmabuf serves the {label} plan");
    }
    assert!(
        has("contiguous 2 MiB", "udmabuf (2 MiB hugetlb memfd)"),
        "one 2 MiB huge page is contiguous (boot with hugepages=)"
    );
    assert!(!has("contiguous 6 MiB", "dma-heap `system`"));
    if kernel == Kernel::Custom {
        let cma = format!("dma-heap `{}`", inv.heaps.iter().find(|h| matches!(h.kind, HeapKind::Cma(_))).unwrap().name);
        for label in ["contiguous 2 MiB", "contiguous 6 MiB", "address-limited", "IOMMU-chunked", "plain"] {
            assert!(has(label, &cma), "the CMA heap serves the {label} plan");
        }
    }
}

/// What each source promises, checked on what it gave.
fn check_shape(inv: &Inventory, source: &Source, runs: &[PhysRange]) {
    match source {
        Source::Heap(n) if inv.heap(n).is_some_and(|h| matches!(h.kind, HeapKind::Cma(_))) => {
            assert_eq!(runs.len(), 1, "a CMA buffer is one run");
            let area = cma_range(inv).expect("CMA range");
            assert!(area.contains_range(runs[0]), "{} lies inside the CMA area {area}", runs[0]);
        }
        Source::UdmabufHuge => {
            for r in runs {
                assert!(
                    r.start().get() % (2 << 20) == 0 && r.len().bytes() % (2 << 20) == 0,
                    "{r} is made of 2 MiB huge pages"
                );
            }
        }
        _ => {
            let ram = inv.ram.as_ref().expect("RAM known");
            for r in runs {
                assert!(ram.contains_range(*r), "{r} lies in RAM");
            }
        }
    }
}

/// The kcore method is proven against the others: for a udmabuf, pagemap over its memfd
/// and kcore over its dma-buf mapping find the same frames; for a CMA buffer, the bitmap
/// and kcore agree.
#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn placement_methods_agree() {
    let kernel = guest("placement_methods_agree");
    let mut be = LinuxBackend::new().track_cma(true);
    let p = plan("x86-desktop", &["dgpu:RENDERING"], sized(Size::kib(512)));
    let buf = be.allocate_from(&Source::Udmabuf, &p, "agree-udmabuf").unwrap();
    let by_pagemap = be.observe(&buf, Method::Pagemap).unwrap();
    let by_kcore = be.observe(&buf, Method::Kcore).unwrap();
    assert_eq!(by_pagemap, by_kcore, "udmabuf: pagemap of the memfd and kcore of the dma-buf");
    println!("udmabuf 512 KiB: pagemap and kcore agree on {}", fmt_runs(&by_kcore));
    let heap = be.allocate_from(&Source::Heap("system".into()), &p, "agree-system").unwrap();
    let err = be.observe(&heap, Method::Pagemap).unwrap_err();
    assert!(err.contains("VM_PFNMAP"), "6.12 maps heap buffers VM_PFNMAP, which pagemap skips: {err}");
    if kernel == Kernel::Custom {
        let cma = be.inventory().heaps.iter().find(|h| matches!(h.kind, HeapKind::Cma(_))).unwrap().name.clone();
        let p = plan("rpi4", &["unicam:CAMERA_WRITE"], sized(Size::mib(3)));
        let buf = be.allocate_from(&Source::Heap(cma), &p, "agree-cma").unwrap();
        let by_bitmap = be.observe(&buf, Method::CmaBitmap).unwrap();
        let by_kcore = be.observe(&buf, Method::Kcore).unwrap();
        assert_eq!(by_bitmap, by_kcore, "CMA: debugfs bitmap and kcore");
        println!("CMA 3 MiB: bitmap and kcore agree on {}", fmt_runs(&by_kcore));
    }
}

#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn unmeetable_plans_fail_with_the_explanation() {
    let kernel = guest("unmeetable_plans_fail_with_the_explanation");
    let mut be = LinuxBackend::new();
    let mut refuse = |p: &Plan, field: Field, needles: &[&str]| {
        let text = match be.allocate(p, "never") {
            Ok(buf) => panic!("allocated {buf:?} for a plan this kernel cannot meet"),
            Err(LinuxError::NoFit(e)) => {
                assert_eq!(e.field, Some(field), "{e}");
                e.to_string()
            }
            Err(e) => panic!("expected an explanation, got {e}"),
        };
        for n in needles {
            assert!(text.contains(n), "missing {n:?} in:\n{text}");
        }
        println!("refused as it should be:\n{text}");
    };
    if kernel == Kernel::Debian {
        // No CMA heap: a contiguous buffer over one huge page cannot be promised.
        let p = plan("rpi4", &["unicam:CAMERA_WRITE"], sized(Size::mib(6)));
        refuse(
            &p,
            Field::MaxSegments,
            &[
                "6 MiB of physically contiguous memory",
                "`unicam` (max_segments = 1)",
                "dma-heap `system`: gives 4 KiB chunks",
                "no CMA heap",
            ],
        );
    } else {
        let p = plan("rpi4", &["unicam:CAMERA_WRITE"], sized(Size::mib(96)));
        refuse(&p, Field::MaxSegments, &["96 MiB of physically contiguous memory", "holds at most 64 MiB (CMA area"]);
    }
    // The HVS scans out of write-combined or uncached memory; the heaps map cached.
    let p = plan("rpi4", &["hvs:SCANOUT", "v3d:RENDERING"], sized(Size::mib(1)));
    refuse(&p, Field::CacheModes, &["`hvs` (cache_modes = {write-combined, uncached})", "maps cached only"]);
    // The ISP may only use its carveout, which no heap here provides.
    let p = plan("refsoc", &["isp:CAMERA_WRITE"], sized(Size::mib(1)));
    refuse(&p, Field::Pool, &["`isp` (regions = [isp-carveout])", "outside the required pool"]);
}

struct Fb<'a> {
    size: (u32, u32),
    pitch: u32,
    offset: u32,
    handle: drm::buffer::Handle,
    _buf: &'a Buffer,
}

impl drm::buffer::PlanarBuffer for Fb<'_> {
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
        [self.offset, 0, 0, 0]
    }
}

struct Card(std::fs::File);
impl AsFd for Card {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl drm::control::Device for Card {}

/// A SCANOUT plan's buffer, laid out at the plan's pitch and format, is put on screen
/// by a real KMS driver: PRIME import, ADDFB2, SETCRTC.
#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn scanout_buffer_is_shown_by_kms() {
    use drm::control::Device as _;
    let kernel = guest("scanout_buffer_is_shown_by_kms");
    let inv = Inventory::probe();
    let want: &[&str] = match kernel {
        Kernel::Debian => &["cirrus", "cirrus-qemu"],
        Kernel::Custom => &["vkms"],
    };
    let cards: Vec<_> = inv.drm.iter().filter(|c| want.contains(&c.driver.as_str())).collect();
    assert!(!cards.is_empty(), "no {want:?} card: {:?}", inv.drm);
    let mut be = LinuxBackend::new();
    for c in cards {
        let card = Card(std::fs::File::options().read(true).write(true).open(&c.path).unwrap());
        let res = card.resource_handles().expect("KMS resources");
        let (conn, mode) = res
            .connectors()
            .iter()
            .filter_map(|h| card.get_connector(*h, true).ok())
            .filter(|ci| ci.state() != drm::control::connector::State::Disconnected)
            .find_map(|ci| {
                let mode = ci
                    .modes()
                    .iter()
                    .find(|m| m.mode_type().contains(drm::control::ModeTypeFlags::PREFERRED))
                    .or(ci.modes().first())
                    .copied()?;
                Some((ci.handle(), mode))
            })
            .unwrap_or_else(|| panic!("{}: no connected connector with a mode", c.driver));
        let (w, h) = mode.size();
        let crtc = *res.crtcs().first().expect("a CRTC");
        let p = plan("x86-desktop", &["dgpu:SCANOUT"], xr24(w.into(), h.into()));
        let layout = p.layout.as_ref().expect("image plan has a layout").layout.clone();
        let buf = be.allocate(&p, "scanout").unwrap();
        be.verify(&p, &buf).expect("scanout placement");
        buf.cpu_access(CpuAccess::Write, |bytes| {
            for (i, px) in bytes.chunks_exact_mut(4).enumerate() {
                px.copy_from_slice(&(0x0030_6090u32 ^ u32::try_from(i % 256).unwrap()).to_le_bytes());
            }
        })
        .unwrap();
        let handle = card.prime_fd_to_buffer(buf.as_fd()).expect("PRIME import into the KMS driver");
        let fb = Fb {
            size: (w.into(), h.into()),
            pitch: layout.planes[0].pitch,
            offset: layout.planes[0].offset,
            handle,
            _buf: &buf,
        };
        let fb_id =
            card.add_planar_framebuffer(&fb, drm::control::FbCmd2Flags::empty()).expect("ADDFB2 at the plan's pitch");
        card.set_crtc(crtc, Some(fb_id), (0, 0), &[conn], Some(mode)).expect("SETCRTC");
        let info = card.get_crtc(crtc).unwrap();
        assert_eq!(info.framebuffer(), Some(fb_id), "the CRTC scans out our framebuffer");
        println!(
            "{} ({}): {w}x{h} XR24 pitch {} from {} scanned out (fb {fb_id:?})",
            c.driver,
            c.path.display(),
            fb.pitch,
            buf.source()
        );
        card.set_crtc(crtc, None, (0, 0), &[], None).expect("SETCRTC off");
        card.destroy_framebuffer(fb_id).unwrap();
        let _ = card.close_buffer(handle);
    }
}

#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn cpu_access_with_sync_and_a_name_in_bufinfo() {
    guest("cpu_access_with_sync_and_a_name_in_bufinfo");
    let mut be = LinuxBackend::new();
    let p = plan("x86-desktop", &["dgpu:RENDERING"], sized(Size::kib(256)));
    let vgem = DrmCard::open_driver(&["vgem"]).unwrap();
    for source in sources(be.inventory()) {
        let Ok(mut buf) = be.allocate_from(&source, &p, "cpu") else {
            continue;
        };
        let name = format!("dmaplace-{}", std::process::id() % 100_000);
        buf.set_name(&format!("{name}-and-a-much-longer-tail")).unwrap();
        assert_eq!(buf.name().len(), 31, "names are cut to what the kernel keeps");
        let byte = |i: usize| u8::try_from(i % 251).expect("below 251");
        buf.cpu_access(CpuAccess::Write, |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = byte(i))).unwrap();
        let ok = buf.cpu_access(CpuAccess::Read, |b| b.iter().enumerate().all(|(i, x)| *x == byte(i))).unwrap();
        assert!(ok, "{source}: what the CPU wrote reads back");
        assert_eq!(be.cpu_sync(&buf, &[], CpuAccess::ReadWrite, true).unwrap(), 1);
        assert_eq!(be.cpu_sync(&buf, &[], CpuAccess::ReadWrite, false).unwrap(), 1);
        let _h = vgem.import(&buf).unwrap();
        let ino = buf.inode().unwrap();
        let info = bufinfo()
            .into_iter()
            .find(|b| b.ino == ino)
            .unwrap_or_else(|| panic!("{source}: inode {ino} not in bufinfo"));
        assert_eq!(info.name.as_deref(), Some(buf.name()), "{source}: the name shows in bufinfo");
        assert_eq!(info.size, buf.size().bytes());
        let exporter = match &source {
            Source::Heap(h) => h.clone(),
            _ => "udmabuf".into(),
        };
        assert_eq!(info.exp_name, exporter);
        assert!(!info.attached.is_empty(), "{source}: vgem's attachment shows in bufinfo");
        println!("{source}: `{}` in bufinfo, exporter {}, attached {:?}", buf.name(), info.exp_name, info.attached);
    }
}

#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn vgem_fences_block_poll_until_signalled() {
    use rustix::event::{PollFd, PollFlags, poll};
    guest("vgem_fences_block_poll_until_signalled");
    let mut be = LinuxBackend::new();
    let p = plan("x86-desktop", &["dgpu:RENDERING"], sized(Size::kib(64)));
    let vgem = DrmCard::open_driver(&["vgem"]).unwrap();
    for source in [Source::Heap("system".into()), Source::Udmabuf] {
        let buf = be.allocate_from(&source, &p, "fenced").unwrap();
        let handle = vgem.import(&buf).unwrap();
        let ready = |timeout: Option<&rustix::time::Timespec>| {
            let mut fds = [PollFd::new(&buf, PollFlags::IN)];
            poll(&mut fds, timeout).unwrap()
        };
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        assert_eq!(ready(Some(&zero)), 1, "{source}: no fence, readable at once");
        let fence = handle.vgem_fence(true).unwrap();
        assert_eq!(ready(Some(&zero)), 0, "{source}: a write fence blocks poll");
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                fence.signal().unwrap();
            });
            let five = rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 };
            assert_eq!(ready(Some(&five)), 1, "{source}: readable once signalled");
        });
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{source}: poll waited {waited:?}"
        );
        println!("{source}: poll blocked {waited:?} on a vgem write fence, until it was signalled");
    }
}

/// The `Backend` trait the exporter drives, on the real kernel.
#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn backend_trait_round_trip() {
    guest("backend_trait_round_trip");
    let mut be = LinuxBackend::new();
    let p = plan("x86-desktop", &["capture:CAMERA_WRITE", "dgpu:TEXTURING"], sized(Size::mib(2)));
    let a = be.allocate(&p, "trait-a").unwrap();
    let b = be.allocate(&p, "trait-b").unwrap();
    be.fill(&a, 42).unwrap();
    let sum = be.checksum(&a, p.size).unwrap();
    assert_eq!(be.copy(&a, &b, p.size).unwrap(), p.size);
    assert_eq!(be.checksum(&b, p.size).unwrap(), sum, "the copy holds the same bytes");
    let backing = be.describe(&b).unwrap();
    dmaplace_core::verify(&p, &p.devices, &backing).unwrap();
    let capture = p.devices.iter().find(|d| d.device == "capture").unwrap();
    let (m, sg) = be.map(capture, &b).unwrap();
    assert_eq!(sg.len(), backing.len(), "the capture card's sg table covers the buffer");
    assert!(sg.entries.iter().all(|e| e.dma_addr.get() + e.len.bytes() <= 1 << 32), "all below 4 GiB");
    be.unmap(capture, m);
    let dgpu = p.devices.iter().find(|d| d.device == "dgpu").unwrap();
    let e = be.map(dgpu, &b).unwrap_err();
    assert!(matches!(e, LinuxError::Unsupported(_)), "{e}");
    assert_eq!(be.cpu_sync(&a, &[capture], CpuAccess::Read, true).unwrap(), 1);
    assert_eq!(be.cpu_sync(&a, &[capture], CpuAccess::Read, false).unwrap(), 1);
    println!("round trip on {}: copy preserved checksum {sum:#x}; capture sg {} entries", a.source(), sg.entries.len());
    be.free(a);
    be.free(b);
}

#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn udmabuf_preconditions_are_checked_before_the_ioctl() {
    guest("udmabuf_preconditions_are_checked_before_the_ioctl");
    let dev = dmaplace_linux::udmabuf::open().unwrap();
    let limit = Inventory::probe().udmabuf.unwrap().size_limit;
    let memfd =
        rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING)
            .unwrap();
    rustix::fs::ftruncate(&memfd, 1 << 20).unwrap();
    let e = dmaplace_linux::udmabuf::create(dev.as_fd(), memfd.as_fd(), 0, 1 << 20, limit).unwrap_err();
    assert!(e.to_string().contains("not sealed against shrinking"), "{e}");
    let sealed = dmaplace_linux::udmabuf::sealed_memfd("sealed", 1 << 20, false).unwrap();
    let e = dmaplace_linux::udmabuf::create(dev.as_fd(), sealed.as_fd(), 0, limit.bytes() + 4096, limit).unwrap_err();
    assert!(e.to_string().contains("size_limit_mb"), "{e}");
    let ok = dmaplace_linux::udmabuf::create(dev.as_fd(), sealed.as_fd(), 0, 1 << 20, limit);
    assert!(ok.is_ok(), "a sealed memfd passes the checks and the kernel agrees: {ok:?}");
}

/// Core's exporter state machine, placing memory through the Linux backend: the first
/// map allocates from the real kernel, the device gets the physical sg table.
#[test]
#[ignore = "needs a real kernel with dma-heaps, udmabuf and DRM: vm/test-linux.sh runs it in qemu"]
fn exporter_drives_the_linux_backend() {
    use dmaplace_core::Usage;
    use dmaplace_core::exporter::{Exporter, ExporterConfig};
    guest("exporter_drives_the_linux_backend");
    let platform = dmaplace_core::builtin::load("x86-desktop").unwrap().unwrap();
    let mut ex = Exporter::new(platform, LinuxBackend::new(), ExporterConfig::default());
    let buffer = ex.export(sized(Size::mib(3)), "exported").unwrap();
    let att = ex.attach(buffer, "capture", Usage::CAMERA_WRITE).unwrap();
    assert!(ex.backing(buffer).unwrap().is_none(), "allocation waits for the first map");
    let (mapping, sg) = ex.map(att).unwrap();
    let buf = ex.backing(buffer).unwrap().expect("allocated at first map");
    println!(
        "exporter: first map allocated {} from {}; capture sg: {} entries, {}",
        buf.size(),
        buf.source(),
        sg.entries.len(),
        sg.len()
    );
    assert_eq!(sg.len(), Size::mib(3));
    assert!(sg.entries.iter().all(|e| e.dma_addr.get() + e.len.bytes() <= 1 << 32));
    ex.dma_write(mapping, 9).unwrap();
    let sum = ex.dma_read(mapping).unwrap();
    assert_eq!(ex.begin_cpu_access(buffer, CpuAccess::Read).unwrap(), 1);
    assert_eq!(ex.end_cpu_access(buffer).unwrap(), 1);
    assert_eq!(ex.dma_read(mapping).unwrap(), sum);
    ex.unmap(mapping).unwrap();
    ex.detach(att).unwrap();
    ex.release(buffer).unwrap();
    ex.check_invariants().unwrap();
}
