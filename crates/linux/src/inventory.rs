//! What this kernel offers for placing dma-buf memory: dma-heaps (classified by what
//! they can promise), udmabuf and its limits, 2 MiB huge pages, where RAM is, the DRM
//! devices, and which placement observations (pagemap, kcore, CMA debugfs) work here.
//!
//! Everything is read from the running kernel; nothing is guessed. What cannot be read
//! (CMA ranges and RAM addresses are hidden from non-root users) is recorded as unknown,
//! with the reason, and the heap choice treats unknown as "cannot promise".

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use dmaplace_core::{PhysAddr, PhysRange, Size, Window};

use crate::parse;

/// `/dev/dma_heap`.
pub const HEAP_DIR: &str = "/dev/dma_heap";
/// `/dev/udmabuf`.
pub const UDMABUF_DEV: &str = "/dev/udmabuf";
/// udmabuf's `size_limit_mb` default (`drivers/dma-buf/udmabuf.c`).
pub const UDMABUF_DEFAULT_SIZE_LIMIT: Size = Size::mib(64);
/// udmabuf's `list_limit` default.
pub const UDMABUF_DEFAULT_LIST_LIMIT: u32 = 1024;
/// Names CMA heaps go by when their area is the default one.
pub const CMA_HEAP_NAMES: [&str; 3] = ["linux,cma", "reserved", "default_cma_region"];

/// A CMA area and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmaArea {
    /// The area's name (`/sys/kernel/mm/cma/<name>`).
    pub name: String,
    /// Where it is, if the kernel said.
    pub range: Option<PhysRange>,
    /// Where the range was read, or why it is unknown.
    pub source: String,
    /// `base_pfn`, `count`, `order_per_bit` from debugfs, when readable: what allocation
    /// tracking through the bitmap needs.
    pub debugfs: Option<CmaDebugfs>,
}

/// `/sys/kernel/debug/cma/<area>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmaDebugfs {
    /// The directory.
    pub dir: PathBuf,
    /// First page frame.
    pub base_pfn: u64,
    /// Pages.
    pub count: u64,
    /// Each bitmap bit covers `2^order_per_bit` pages.
    pub order_per_bit: u32,
}

/// What a dma-heap is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeapKind {
    /// `system`: pages from the buddy allocator in 1 MiB, 64 KiB and 4 KiB chunks,
    /// anywhere in RAM.
    System,
    /// A CMA heap: one physically contiguous run inside its area.
    Cma(CmaArea),
    /// A heap dmaplace does not know: reported, never used.
    Unknown,
}

/// One `/dev/dma_heap/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapInfo {
    /// The heap's name.
    pub name: String,
    /// Its device node.
    pub path: PathBuf,
    /// What it can promise.
    pub kind: HeapKind,
}

/// `/dev/udmabuf` and its module limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdmabufInfo {
    /// `size_limit_mb`: the most one dma-buf may hold.
    pub size_limit: Size,
    /// `list_limit`: the most memfd ranges one `UDMABUF_CREATE_LIST` may take.
    pub list_limit: u32,
    /// Where the limits came from.
    pub source: String,
}

/// 2 MiB huge pages (`/sys/kernel/mm/hugepages/hugepages-2048kB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugePages {
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
}

/// A DRM card node and its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrmCard {
    /// `/dev/dri/cardN`.
    pub path: PathBuf,
    /// `vgem`, `vkms`, `cirrus-qemu`, ... (`DRM_IOCTL_VERSION`).
    pub driver: String,
}

/// Everything this kernel offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// `uname -r`.
    pub release: String,
    /// Whether we run as root (pagemap frame numbers, kcore, debugfs, iomem addresses).
    pub root: bool,
    /// The dma-heaps.
    pub heaps: Vec<HeapInfo>,
    /// udmabuf, if present.
    pub udmabuf: Option<UdmabufInfo>,
    /// 2 MiB huge pages, if the kernel has hugetlbfs.
    pub huge_2m: Option<HugePages>,
    /// Where RAM is (`System RAM` in `/proc/iomem`), or why unknown.
    pub ram: Result<Window, String>,
    /// CMA areas (including ones no heap exposes).
    pub cma_areas: Vec<CmaArea>,
    /// DRM card nodes.
    pub drm: Vec<DrmCard>,
    /// Whether `/proc/kcore` is readable (physical placement of any mapped buffer).
    pub kcore: bool,
}

impl Inventory {
    /// Reads this kernel's inventory.
    pub fn probe() -> Inventory {
        let root = rustix::process::geteuid().is_root();
        let ram = read_ram(root);
        let cma_areas = read_cma_areas(root);
        let heaps = read_heaps(&cma_areas);
        Inventory {
            release: fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default(),
            root,
            heaps,
            udmabuf: read_udmabuf(),
            huge_2m: read_huge_2m(),
            ram,
            cma_areas,
            drm: read_drm(),
            kcore: root && fs::File::open("/proc/kcore").is_ok(),
        }
    }

    /// The heap called `name`.
    pub fn heap(&self, name: &str) -> Option<&HeapInfo> {
        self.heaps.iter().find(|h| h.name == name)
    }

    /// Whether any dma-buf exporter is reachable (a usable heap or udmabuf).
    pub fn has_dma_buf(&self) -> bool {
        self.udmabuf.is_some() || self.heaps.iter().any(|h| h.kind != HeapKind::Unknown)
    }

    /// The DRM cards whose driver is `driver`.
    pub fn drm_cards<'a>(&'a self, driver: &'a str) -> impl Iterator<Item = &'a DrmCard> + 'a {
        self.drm.iter().filter(move |c| c.driver == driver)
    }
}

impl fmt::Display for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernel {}{}",
            self.release,
            if self.root { " (running as root)" } else { " (not root: physical addresses are hidden)" }
        )?;
        if self.heaps.is_empty() {
            writeln!(f, "  dma-heaps: none ({HEAP_DIR} is absent or empty)")?;
        }
        for h in &self.heaps {
            match &h.kind {
                HeapKind::System => {
                    writeln!(f, "  dma-heap {:<12} system: 1 MiB/64 KiB/4 KiB chunks anywhere in RAM", h.name)?
                }
                HeapKind::Cma(a) => match a.range {
                    Some(r) => writeln!(
                        f,
                        "  dma-heap {:<12} CMA area `{}`: contiguous, within {r} ({} MiB; {})",
                        h.name,
                        a.name,
                        r.len().bytes() >> 20,
                        a.source
                    )?,
                    None => writeln!(
                        f,
                        "  dma-heap {:<12} CMA area `{}`: contiguous, range unknown ({})",
                        h.name, a.name, a.source
                    )?,
                },
                HeapKind::Unknown => writeln!(f, "  dma-heap {:<12} unknown kind: reported, never used", h.name)?,
            }
        }
        match &self.udmabuf {
            Some(u) => {
                writeln!(f, "  udmabuf: size limit {}, list limit {} ({})", u.size_limit, u.list_limit, u.source)?
            }
            None => writeln!(f, "  udmabuf: absent ({UDMABUF_DEV})")?,
        }
        match self.huge_2m {
            Some(h) => writeln!(f, "  2 MiB huge pages: {} free of {}", h.free, h.total)?,
            None => writeln!(f, "  2 MiB huge pages: unavailable")?,
        }
        match &self.ram {
            Ok(w) => writeln!(f, "  RAM: {w}")?,
            Err(why) => writeln!(f, "  RAM: unknown ({why})")?,
        }
        for c in &self.drm {
            writeln!(f, "  DRM {}: {}", c.path.display(), c.driver)?;
        }
        writeln!(
            f,
            "  placement proof: pagemap {}, /proc/kcore {}",
            if self.root { "yes" } else { "no (not root)" },
            if self.kcore { "yes" } else { "no" }
        )
    }
}

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

fn read_u64(p: impl AsRef<Path>) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

fn list_dir(p: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn read_ram(root: bool) -> Result<Window, String> {
    let text = fs::read_to_string("/proc/iomem").map_err(|e| format!("cannot read /proc/iomem: {e}"))?;
    let m = parse::iomem(&text);
    if m.hidden {
        // Memory blocks (memory hotplug sysfs) are readable by anyone: a superset of RAM.
        if let Some(w) = memory_blocks() {
            return Ok(w);
        }
        return Err(if root {
            "/proc/iomem shows zero addresses".into()
        } else {
            "/proc/iomem hides addresses from non-root users".into()
        });
    }
    let ram = m.system_ram();
    if ram.is_empty() {
        return Err("/proc/iomem has no System RAM line".into());
    }
    Ok(Window::from_ranges(ram))
}

/// The online memory blocks of `/sys/devices/system/memory` (present with memory
/// hotplug): each `memoryN` covers `[N, N + 1) * block_size_bytes`, a superset of the RAM
/// in it.
fn memory_blocks() -> Option<Window> {
    let dir = "/sys/devices/system/memory";
    let block = u64::from_str_radix(&read_trim(format!("{dir}/block_size_bytes"))?, 16).ok()?;
    let ranges: Vec<PhysRange> = list_dir(dir)
        .iter()
        .filter_map(|n| n.strip_prefix("memory")?.parse::<u64>().ok())
        .filter(|n| read_trim(format!("{dir}/memory{n}/state")).as_deref() == Some("online"))
        .filter_map(|n| PhysRange::from_start_size(PhysAddr::new(n.checked_mul(block)?), Size::new(block)).ok())
        .collect();
    (!ranges.is_empty()).then(|| Window::from_ranges(ranges))
}

fn read_cma_debugfs(name: &str) -> Option<CmaDebugfs> {
    let dir = PathBuf::from(format!("/sys/kernel/debug/cma/{name}"));
    Some(CmaDebugfs {
        base_pfn: read_u64(dir.join("base_pfn"))?,
        count: read_u64(dir.join("count"))?,
        order_per_bit: u32::try_from(read_u64(dir.join("order_per_bit"))?).ok()?,
        dir,
    })
}

/// The kernel log, when readable (`/dev/kmsg` needs root or `dmesg_restrict = 0`).
fn read_kernel_log() -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open("/dev/kmsg")
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // "6,123,4567,-;cma: Reserved 64 MiB at ..." -> the message.
                let rec = String::from_utf8_lossy(&buf[..n]);
                let msg = rec.split_once(';').map_or(&*rec, |x| x.1);
                out.push_str(msg.lines().next().unwrap_or(""));
                out.push('\n');
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

fn read_cma_areas(root: bool) -> Vec<CmaArea> {
    let mut names = list_dir("/sys/kernel/mm/cma");
    for n in list_dir("/sys/kernel/debug/cma") {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut log: Option<Option<String>> = None;
    let mut iomem: Option<parse::Iomem> = None;
    let single = names.len() == 1;
    names
        .into_iter()
        .map(|name| {
            let debugfs = read_cma_debugfs(&name);
            if let Some(d) = &debugfs {
                let range = PhysRange::from_start_size(PhysAddr::new(d.base_pfn << 12), Size::new(d.count << 12)).ok();
                return CmaArea { source: format!("{}/base_pfn and count", d.dir.display()), range, name, debugfs };
            }
            let iomem =
                iomem.get_or_insert_with(|| parse::iomem(&fs::read_to_string("/proc/iomem").unwrap_or_default()));
            if !iomem.hidden
                && let Some((_, r)) = iomem.cma().into_iter().find(|(n, _)| *n == name)
            {
                return CmaArea { name, range: Some(r), source: "/proc/iomem".into(), debugfs };
            }
            // The boot log names no area; it is unambiguous only when there is one.
            let log = log.get_or_insert_with(read_kernel_log);
            if single
                && let Some(text) = log
                && let [one] = parse::log_cma(text).as_slice()
            {
                return CmaArea { name, range: Some(one.range), source: format!("boot log: {}", one.line), debugfs };
            }
            let why = if root {
                "no debugfs cma directory, /proc/iomem line or unambiguous boot-log line"
            } else {
                "not root: debugfs, /proc/iomem addresses and the boot log are hidden"
            };
            CmaArea { name, range: None, source: why.into(), debugfs }
        })
        .collect()
}

fn read_heaps(cma: &[CmaArea]) -> Vec<HeapInfo> {
    list_dir(HEAP_DIR)
        .into_iter()
        .map(|name| {
            let path = Path::new(HEAP_DIR).join(&name);
            let area = cma.iter().find(|a| a.name == name).or_else(|| match cma {
                [only] if CMA_HEAP_NAMES.contains(&name.as_str()) => Some(only),
                _ => None,
            });
            let kind = match (name.as_str(), area) {
                ("system", _) => HeapKind::System,
                (_, Some(a)) => HeapKind::Cma(a.clone()),
                (n, None) if CMA_HEAP_NAMES.contains(&n) => HeapKind::Cma(CmaArea {
                    name: n.to_owned(),
                    range: None,
                    source: "no CMA area of this name in /sys/kernel/mm/cma".into(),
                    debugfs: None,
                }),
                _ => HeapKind::Unknown,
            };
            HeapInfo { name, path, kind }
        })
        .collect()
}

fn read_udmabuf() -> Option<UdmabufInfo> {
    if !Path::new(UDMABUF_DEV).exists() {
        return None;
    }
    let params = Path::new("/sys/module/udmabuf/parameters");
    let size = read_u64(params.join("size_limit_mb"));
    let list = read_u64(params.join("list_limit")).and_then(|v| u32::try_from(v).ok());
    let source = if size.is_some() {
        params.display().to_string()
    } else {
        "module defaults (no /sys/module/udmabuf/parameters)".into()
    };
    Some(UdmabufInfo {
        size_limit: size.map_or(UDMABUF_DEFAULT_SIZE_LIMIT, |mb| Size::new(mb.saturating_mul(1 << 20))),
        list_limit: list.unwrap_or(UDMABUF_DEFAULT_LIST_LIMIT),
        source,
    })
}

fn read_huge_2m() -> Option<HugePages> {
    let d = Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB");
    Some(HugePages { total: read_u64(d.join("nr_hugepages"))?, free: read_u64(d.join("free_hugepages"))? })
}

fn read_drm() -> Vec<DrmCard> {
    list_dir("/dev/dri")
        .into_iter()
        .filter(|n| n.starts_with("card"))
        .filter_map(|n| {
            let path = Path::new("/dev/dri").join(&n);
            let f = fs::File::options().read(true).write(true).open(&path).ok()?;
            let driver = crate::sys::ioctl::drm_driver_name(std::os::fd::AsFd::as_fd(&f)).ok()?;
            Some(DrmCard { path, driver })
        })
        .collect()
}

/// Re-reads the free 2 MiB huge pages (they change as buffers come and go).
pub fn free_huge_2m() -> Option<u64> {
    read_u64("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
}
