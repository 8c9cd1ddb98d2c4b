//! dmaplace rig probe: runs inside the qemu guest (`vm/rig.sh smoke`).
//!
//! It reports what the booted kernel offers for dma-buf placement (heaps,
//! udmabuf, DRM devices, CMA, IOMMU) and exits 0 only if everything the kernel
//! named by `DMAPLACE_KERNEL` (debian|custom) should have is present and works.
//! `DMAPLACE_IOMMU=1` additionally requires an IOMMU with groups and virtio-gpu.
//!
//! Heap and udmabuf mmaps are VM_PFNMAP on 6.12, so /proc/self/pagemap cannot
//! see them; CMA placement is read from the debugfs CMA bitmap instead.
//!
//! No dependencies: the few syscalls it needs are declared against the libc
//! that std already links (the binary is built with `+crt-static`).

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

extern "C" {
    fn ioctl(fd: c_int, req: c_ulong, ...) -> c_int;
    fn mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: i64) -> *mut c_void;
    fn munmap(addr: *mut c_void, len: usize) -> c_int;
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
    fn ftruncate(fd: c_int, len: i64) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
}

const PAGE: usize = 4096;
// _IOWR('H', 0, struct dma_heap_allocation_data) (24 bytes)
const DMA_HEAP_IOCTL_ALLOC: c_ulong = 0xC018_4800;
// _IOW('u', 0x42, struct udmabuf_create) (24 bytes)
const UDMABUF_CREATE: c_ulong = 0x4018_7542;
// _IOWR('d', 0x00, struct drm_version) (64 bytes)
const DRM_IOCTL_VERSION: c_ulong = 0xC040_6400;
const O_RDWR: u32 = 2;
const O_CLOEXEC: u32 = 0o2_000_000;
const PROT_READ: c_int = 1;
const PROT_WRITE: c_int = 2;
const MAP_SHARED: c_int = 1;
const MFD_ALLOW_SEALING: c_uint = 2;
const F_ADD_SEALS: c_int = 1033;
const F_SEAL_SHRINK: c_int = 2;

#[repr(C)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

#[repr(C)]
struct DrmVersion {
    major: c_int,
    minor: c_int,
    patchlevel: c_int,
    name_len: usize,
    name: *mut c_char,
    date_len: usize,
    date: *mut c_char,
    desc_len: usize,
    desc: *mut c_char,
}

struct Report {
    failures: Vec<String>,
}

impl Report {
    fn need(&mut self, ok: bool, what: &str) {
        println!("probe: check {:<55} {}", what, if ok { "ok" } else { "MISSING" });
        if !ok {
            self.failures.push(what.to_string());
        }
    }
}

fn list_dir(p: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn read_trim(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("<{e}>"))
}

/// Physical extents of `len` bytes mapped at `addr`, as (first pfn, pages).
fn phys_segments(addr: *const u8, len: usize) -> io::Result<Vec<(u64, u64)>> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut segs: Vec<(u64, u64)> = Vec::new();
    for i in 0..len / PAGE {
        let vpn = (addr as usize + i * PAGE) / PAGE;
        let mut e = [0u8; 8];
        pagemap.read_exact_at(&mut e, (vpn * 8) as u64)?;
        let e = u64::from_ne_bytes(e);
        if e >> 63 == 0 {
            return Err(io::Error::other(format!("page {i} not in pagemap (VM_PFNMAP mapping?)")));
        }
        let pfn = e & ((1u64 << 55) - 1);
        match segs.last_mut() {
            Some((start, n)) if *start + *n == pfn => *n += 1,
            _ => segs.push((pfn, 1)),
        }
    }
    Ok(segs)
}

/// mmap a dma-buf, touch every page, and return its physical segments.
fn map_and_locate(fd: RawFd, len: usize) -> io::Result<Vec<(u64, u64)>> {
    // SAFETY: fresh shared mapping of a dma-buf fd we own; unmapped below.
    let p = unsafe { mmap(std::ptr::null_mut(), len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    let base = p.cast::<u8>();
    for i in 0..len / PAGE {
        // SAFETY: within the `len`-byte mapping created above.
        unsafe { base.add(i * PAGE).write_volatile(i as u8) };
    }
    let segs = phys_segments(base, len);
    // SAFETY: unmapping exactly what was mapped.
    unsafe { munmap(p, len) };
    segs
}

fn fmt_segs(segs: &[(u64, u64)]) -> String {
    segs.iter()
        .map(|(pfn, n)| format!("{:#x}-{:#x}", pfn * PAGE as u64, (pfn + n) * PAGE as u64 - 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// A CMA area as debugfs shows it (/sys/kernel/debug/cma/<name>, CONFIG_CMA_DEBUGFS).
struct CmaDebug {
    base_pfn: u64,
    count: u64,
    order_per_bit: u32,
    bitmap: Vec<u32>,
}

fn cma_debug(area: &str) -> Option<CmaDebug> {
    let d = format!("/sys/kernel/debug/cma/{area}");
    let num = |f: &str| read_trim(format!("{d}/{f}")).parse::<u64>().ok();
    Some(CmaDebug {
        base_pfn: num("base_pfn")?,
        count: num("count")?,
        order_per_bit: num("order_per_bit")? as u32,
        bitmap: fs::read_to_string(format!("{d}/bitmap")).ok()?.split_whitespace().filter_map(|w| w.parse().ok()).collect(),
    })
}

/// Pages that became allocated in the CMA bitmap between two snapshots, as (first pfn, pages).
fn cma_new_segments(before: &CmaDebug, after: &CmaDebug) -> Vec<(u64, u64)> {
    let mut segs: Vec<(u64, u64)> = Vec::new();
    let per_bit = 1u64 << after.order_per_bit;
    for (w, (&b, &a)) in before.bitmap.iter().zip(&after.bitmap).enumerate() {
        let new = a & !b;
        for bit in 0..32 {
            if new & (1 << bit) != 0 {
                let pfn = after.base_pfn + (w as u64 * 32 + bit) * per_bit;
                match segs.last_mut() {
                    Some((start, n)) if *start + *n == pfn => *n += per_bit,
                    _ => segs.push((pfn, per_bit)),
                }
            }
        }
    }
    segs
}

fn heap_alloc(heap: &str, len: usize) -> io::Result<OwnedFd> {
    let f = File::options().read(true).write(true).open(format!("/dev/dma_heap/{heap}"))?;
    let mut d = DmaHeapAllocationData { len: len as u64, fd: 0, fd_flags: O_RDWR | O_CLOEXEC, heap_flags: 0 };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC reads and writes a dma_heap_allocation_data.
    if unsafe { ioctl(f.as_raw_fd(), DMA_HEAP_IOCTL_ALLOC, &mut d as *mut DmaHeapAllocationData) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d.fd as RawFd) })
}

/// udmabuf over a sealed memfd; also returns the memfd's physical segments
/// (udmabuf mmaps are VM_PFNMAP, so pagemap only sees the backing memfd).
fn udmabuf_create(len: usize) -> io::Result<(OwnedFd, io::Result<Vec<(u64, u64)>>)> {
    let name = CString::new("dmaplace-probe").unwrap();
    // SAFETY: plain syscalls on fds owned here.
    unsafe {
        let mfd = memfd_create(name.as_ptr(), MFD_ALLOW_SEALING);
        if mfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mfd = OwnedFd::from_raw_fd(mfd);
        if ftruncate(mfd.as_raw_fd(), len as i64) < 0 || fcntl(mfd.as_raw_fd(), F_ADD_SEALS, F_SEAL_SHRINK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let backing = map_and_locate(mfd.as_raw_fd(), len);
        let dev = File::options().read(true).write(true).open("/dev/udmabuf")?;
        let c = UdmabufCreate { memfd: mfd.as_raw_fd() as u32, flags: 1 /* UDMABUF_FLAGS_CLOEXEC */, offset: 0, size: len as u64 };
        let fd = ioctl(dev.as_raw_fd(), UDMABUF_CREATE, &c as *const UdmabufCreate);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fd), backing))
    }
}

fn drm_driver_name(node: &str) -> io::Result<String> {
    let f = File::options().read(true).write(true).open(node)?;
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        major: 0,
        minor: 0,
        patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr().cast(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: DRM_IOCTL_VERSION fills at most name_len bytes of `name`.
    if unsafe { ioctl(f.as_raw_fd(), DRM_IOCTL_VERSION, &mut v as *mut DrmVersion) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..n]).into_owned())
}

/// Kernel log lines matching any needle (reads /dev/kmsg without blocking).
fn kmsg_lines(needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut f) = File::options().read(true).custom_flags(0o4000 /* O_NONBLOCK */).open("/dev/kmsg") else {
        return out;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let msg = rec.split_once(';').map(|x| x.1).unwrap_or(&rec).lines().next().unwrap_or("").to_string();
                if needles.iter().any(|s| msg.contains(s)) {
                    out.push(msg);
                }
            }
            Err(e) if e.raw_os_error() == Some(32) => continue, // EPIPE: record overwritten
            Err(_) => break,
        }
    }
    out
}

fn main() {
    let kernel = std::env::var("DMAPLACE_KERNEL").unwrap_or_default();
    let iommu = std::env::var("DMAPLACE_IOMMU").as_deref() == Ok("1");
    let in_guest = std::env::var("DMAPLACE_IN_GUEST").as_deref() == Ok("1");
    println!("probe: kernel={kernel} iommu={iommu} in_guest={in_guest} uname={}", read_trim("/proc/sys/kernel/osrelease"));
    let mut r = Report { failures: Vec::new() };
    r.need(kernel == "debian" || kernel == "custom", "DMAPLACE_KERNEL is debian|custom");

    // --- dma-buf heaps ---
    let heaps = list_dir("/dev/dma_heap");
    println!("probe: dma_heaps: {heaps:?}");
    let mut cma_heap_ok = false;
    for h in &heaps {
        let len = 16 * PAGE;
        let before = cma_debug(h);
        let fd = match heap_alloc(h, len) {
            Ok(fd) => fd,
            Err(e) => {
                println!("probe: heap {h}: alloc {len} bytes FAILED: {e}");
                continue;
            }
        };
        match map_and_locate(fd.as_raw_fd(), len) {
            Ok(segs) => println!("probe: heap {h}: alloc {len} bytes ok; pagemap: {} segment(s): {}", segs.len(), fmt_segs(&segs)),
            Err(e) => println!("probe: heap {h}: alloc {len} bytes ok; mmap+pagemap: {e}"),
        }
        if let (Some(b), Some(a)) = (before, cma_debug(h)) {
            let segs = cma_new_segments(&b, &a);
            let pages: u64 = segs.iter().map(|s| s.1).sum();
            let inside = segs.iter().all(|(p, n)| *p >= a.base_pfn && p + n <= a.base_pfn + a.count);
            println!(
                "probe: heap {h}: CMA area {:#x}-{:#x}; this buffer took {} page(s) in {} segment(s): {}",
                a.base_pfn * PAGE as u64,
                (a.base_pfn + a.count) * PAGE as u64 - 1,
                pages,
                segs.len(),
                fmt_segs(&segs)
            );
            if segs.len() == 1 && pages == (len / PAGE) as u64 && inside {
                cma_heap_ok = true;
            }
        }
        drop(fd);
    }
    let system_ok = heaps.iter().any(|h| h == "system") && heap_alloc("system", PAGE).is_ok();
    r.need(system_ok, "dma_heap 'system' allocates");
    if kernel == "custom" {
        r.need(cma_heap_ok, "a CMA dma_heap allocates one contiguous range inside its CMA area (debugfs cma bitmap)");
    }

    // --- udmabuf ---
    let udmabuf = udmabuf_create(4 * PAGE);
    match &udmabuf {
        Ok((fd, backing)) => {
            let mapped = map_and_locate(fd.as_raw_fd(), 4 * PAGE);
            println!("probe: udmabuf: 4 pages ok; dma-buf mmap: {}", mapped.map(|s| fmt_segs(&s)).unwrap_or_else(|e| e.to_string()));
            match backing {
                Ok(segs) => println!("probe: udmabuf: memfd backing {} phys segment(s): {}", segs.len(), fmt_segs(segs)),
                Err(e) => println!("probe: udmabuf: memfd backing: {e}"),
            }
        }
        Err(e) => println!("probe: udmabuf: FAILED: {e}"),
    }
    r.need(udmabuf.is_ok(), "/dev/udmabuf creates a dma-buf from a memfd");

    // --- CMA ---
    let cma_areas = list_dir("/sys/kernel/mm/cma");
    println!("probe: /sys/kernel/mm/cma: {cma_areas:?}");
    for a in &cma_areas {
        for f in list_dir(&format!("/sys/kernel/mm/cma/{a}")) {
            println!("probe:   cma/{a}/{f} = {}", read_trim(format!("/sys/kernel/mm/cma/{a}/{f}")));
        }
    }
    let iomem = fs::read_to_string("/proc/iomem").unwrap_or_default();
    let iomem_cma: Vec<&str> = iomem.lines().filter(|l| l.to_lowercase().contains("cma")).collect();
    println!("probe: /proc/iomem CMA lines: {iomem_cma:?}");
    for l in fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().filter(|l| l.starts_with("Cma")) {
        println!("probe: meminfo {l}");
    }
    for l in kmsg_lines(&["cma: ", "CMA", "Reserved memory"]) {
        println!("probe: kmsg {l}");
    }
    if kernel == "custom" {
        r.need(!cma_areas.is_empty(), "/sys/kernel/mm/cma has an area");
    }

    // --- DRM ---
    let dri = list_dir("/dev/dri");
    println!("probe: /dev/dri: {dri:?}");
    let mut drivers = Vec::new();
    for n in dri.iter().filter(|n| n.starts_with("card")) {
        let node = format!("/dev/dri/{n}");
        let name = drm_driver_name(&node).unwrap_or_else(|e| format!("<{e}>"));
        let group = fs::read_link(format!("/sys/class/drm/{n}/device/iommu_group"))
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "-".into());
        println!("probe: {node}: driver={name} iommu_group={group}");
        drivers.push(name);
    }
    let has = |d: &str| drivers.iter().any(|x| x == d);
    r.need(has("cirrus") || has("cirrus-qemu"), "DRM driver cirrus (qemu -device cirrus-vga)");
    r.need(has("vgem"), "DRM driver vgem");
    if kernel == "custom" {
        r.need(has("vkms"), "DRM driver vkms");
    }

    // --- IOMMU ---
    let iommus = list_dir("/sys/class/iommu");
    let groups = list_dir("/sys/kernel/iommu_groups");
    println!("probe: /sys/class/iommu: {iommus:?}; {} iommu group(s)", groups.len());
    for g in &groups {
        println!("probe:   iommu_group {g}: {:?} type={}", list_dir(&format!("/sys/kernel/iommu_groups/{g}/devices")), read_trim(format!("/sys/kernel/iommu_groups/{g}/type")));
    }
    if iommu {
        r.need(!iommus.is_empty(), "an IOMMU in /sys/class/iommu");
        r.need(!groups.is_empty(), "iommu groups in /sys/kernel/iommu_groups");
        r.need(has("virtio_gpu"), "DRM driver virtio_gpu (qemu -device virtio-gpu-pci)");
    }
    r.need(Path::new("/sys/kernel/debug/dma_buf/bufinfo").exists(), "/sys/kernel/debug/dma_buf/bufinfo");

    if r.failures.is_empty() {
        println!("probe: all checks passed");
    } else {
        println!("probe: FAILED: {}", r.failures.join("; "));
        std::process::exit(1);
    }
}
