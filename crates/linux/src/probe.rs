//! `dmaplace probe`: this machine as a platform file, learned from sysfs and procfs.
//!
//! Every value written carries the file it was read from; what the kernel does not
//! expose is listed as unknown, with the reason, and never guessed:
//!
//! - **memory banks** from `/proc/iomem` (`System RAM`, root only: others see zeros),
//!   else `/sys/firmware/memmap/*/{start,end,type}`, else one bank of `MemTotal` at 0
//!   from `/proc/meminfo` (a stated fallback: the addresses are unknown); reserved
//!   ranges (`Reserved` in either) and device-tree `reserved-memory` nodes are listed;
//! - **CMA areas** from `/sys/kernel/debug/cma/*/{base_pfn,count}`, else the CMA lines
//!   of `/proc/iomem`, else reusable `shared-dma-pool` reserved-memory nodes;
//!   an area `/sys/kernel/mm/cma` lists but nothing places is unknown;
//! - **the page allocator's largest block** from the column count of `/proc/buddyinfo`;
//! - **devices**: every PCI function (`/sys/bus/pci/devices`) with its `dma_mask_bits`,
//!   class, driver, DRM and V4L2 nodes, IOMMU group and the group's domain type
//!   (`DMA`, `DMA-FQ`: translated; `identity`: not), and its IOMMU unit; Intel VT-d
//!   units give their page sizes (SLLPS, capability bits 34 and 35) and address width
//!   (MGAW, bits 21:16) from `/sys/class/iommu/dmar*/intel-iommu/cap`. DRM and V4L2
//!   nodes that are not PCI functions (vgem, vkms, SoC blocks) have no `dma_mask_bits`
//!   in sysfs: they are listed as unknown, not written as devices.
//!
//! All paths go through a [`Root`], so the tests run over fixture trees.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use dmaplace_core::{PhysAddr, PhysRange, Size};

use crate::parse;

/// Where the filesystem starts: `/` on a live system, a fixture directory in tests.
#[derive(Clone, Debug)]
pub struct Root(PathBuf);

impl Root {
    /// The running system.
    pub fn system() -> Root {
        Root(PathBuf::from("/"))
    }
    /// A tree laid out like `/` under `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Root {
        Root(dir.into())
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }
    fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.path(p)).ok()
    }
    fn read_bytes(&self, p: &str) -> Option<Vec<u8>> {
        fs::read(self.path(p)).ok()
    }
    fn list(&self, p: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path(p))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    /// The last component of the link at `p`.
    fn link_name(&self, p: &str) -> Option<String> {
        let t = fs::read_link(self.path(p)).ok()?;
        t.file_name().map(|n| n.to_string_lossy().into_owned())
    }
    fn link_target(&self, p: &str) -> Option<String> {
        fs::read_link(self.path(p)).ok().map(|t| t.to_string_lossy().into_owned())
    }
}

/// A value and the file it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// The file (a path on the probed system).
    pub source: String,
}

fn sourced<T>(value: T, source: impl Into<String>) -> Sourced<T> {
    Sourced { value, source: source.into() }
}

/// Something the probe could not learn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// What.
    pub what: String,
    /// Why it is unknown.
    pub why: String,
}

/// A named physical range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// Name.
    pub name: String,
    /// Where.
    pub range: PhysRange,
}

/// An IOMMU unit (`/sys/class/iommu/<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedIommu {
    /// `dmar0`, `ivhd0`, ...
    pub name: String,
    /// The page sizes it maps, in bytes.
    pub page_sizes: Option<Sourced<Vec<u64>>>,
    /// The IOVA width it translates.
    pub iova_bits: Option<Sourced<u32>>,
}

/// A device the platform file describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedDevice {
    /// The name written (a DRM card or V4L2 node name, else `pci-<bdf>`).
    pub name: String,
    /// `display`, `gpu`, `video`, `accelerator`, `other`.
    pub class: Sourced<&'static str>,
    /// The PCI address (`0000:00:02.0`).
    pub pci: String,
    /// `vendor:device` in hex.
    pub ids: String,
    /// The bound driver.
    pub driver: Option<String>,
    /// `/dev/dri/card0`, `/dev/video0`, ...
    pub nodes: Vec<String>,
    /// `dma_mask_bits`.
    pub dma_mask_bits: Sourced<u32>,
    /// The IOMMU group.
    pub iommu_group: Option<Sourced<u32>>,
    /// The group's domain type.
    pub domain: Option<Sourced<String>>,
    /// The IOMMU unit translating it (only for `DMA`/`DMA-FQ` domains).
    pub iommu: Option<String>,
}

/// What the probe learned.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Probed {
    /// RAM banks (4 KiB aligned).
    pub banks: Vec<Sourced<Named>>,
    /// Reserved ranges, for the reader.
    pub reserved: Vec<Sourced<Named>>,
    /// CMA areas inside the banks.
    pub cma: Vec<Sourced<Named>>,
    /// The page allocator's largest block.
    pub max_buddy_block: Option<Sourced<u64>>,
    /// IOMMU units.
    pub iommus: Vec<ProbedIommu>,
    /// Devices.
    pub devices: Vec<ProbedDevice>,
    /// What could not be learned.
    pub unknowns: Vec<Unknown>,
}

impl Probed {
    fn unknown(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.unknowns.push(Unknown { what: what.into(), why: why.into() });
    }
}

fn range(start: u64, end_exclusive: u64) -> Option<PhysRange> {
    PhysRange::from_start_size(PhysAddr::new(start), Size::new(end_exclusive.checked_sub(start)?)).ok()
}

/// Whole 4 KiB pages of `r` (the page allocator manages nothing smaller).
fn pages_of(r: PhysRange) -> Option<PhysRange> {
    let start = r.start().get().next_multiple_of(4096);
    let end = r.end().get() & !0xfff;
    (end > start).then(|| range(start, end)).flatten()
}

fn hex_u64(text: &str) -> Option<u64> {
    let t = text.trim();
    u64::from_str_radix(t.trim_start_matches("0x"), 16).ok()
}

/// Probes the system under `root`.
pub fn probe(root: &Root) -> Probed {
    let mut p = Probed::default();
    memory(root, &mut p);
    cma(root, &mut p);
    device_tree_reserved(root, &mut p);
    buddy(root, &mut p);
    iommus(root, &mut p);
    pci_devices(root, &mut p);
    other_nodes(root, &mut p);
    p
}

fn memory(root: &Root, p: &mut Probed) {
    if let Some(text) = root.read("/proc/iomem") {
        let m = parse::iomem(&text);
        if !m.hidden && !m.system_ram().is_empty() {
            for (i, r) in m.system_ram().into_iter().filter_map(pages_of).enumerate() {
                p.banks.push(sourced(Named { name: format!("ram{i}"), range: r }, "/proc/iomem"));
            }
            for (i, e) in m.entries.iter().filter(|e| e.depth == 0 && e.name == "Reserved").enumerate() {
                p.reserved.push(sourced(Named { name: format!("reserved{i}"), range: e.range }, "/proc/iomem"));
            }
            return;
        }
        p.unknown("/proc/iomem addresses", "they read as zero (not root)");
    }
    let mut found = Vec::new();
    for n in root.list("/sys/firmware/memmap") {
        let dir = format!("/sys/firmware/memmap/{n}");
        let (Some(s), Some(e), Some(t)) =
            (root.read(&format!("{dir}/start")), root.read(&format!("{dir}/end")), root.read(&format!("{dir}/type")))
        else {
            continue;
        };
        let (Some(s), Some(e)) = (hex_u64(&s), hex_u64(&e)) else { continue };
        if let Some(r) = e.checked_add(1).and_then(|end| range(s, end)) {
            found.push((r, t.trim().to_owned(), dir));
        }
    }
    found.sort_by_key(|(r, _, _)| r.start());
    for (r, kind, dir) in &found {
        match kind.as_str() {
            "System RAM" => {
                if let Some(r) = pages_of(*r) {
                    let name = format!("ram{}", p.banks.len());
                    p.banks.push(sourced(Named { name, range: r }, format!("{dir}/{{start,end,type}}")));
                }
            }
            "Reserved" => {
                let name = format!("reserved{}", p.reserved.len());
                p.reserved.push(sourced(Named { name, range: *r }, format!("{dir}/{{start,end,type}}")));
            }
            _ => {}
        }
    }
    if !p.banks.is_empty() {
        return;
    }
    let total = root
        .read("/proc/meminfo")
        .and_then(|t| t.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        .map(|kib| (kib * 1024) & !0xfff);
    match total.and_then(|t| range(0, t)) {
        Some(r) => {
            p.banks.push(sourced(Named { name: "ram0".into(), range: r }, "/proc/meminfo MemTotal (fallback)"));
            p.unknown(
                "RAM addresses",
                "neither /proc/iomem (root only) nor /sys/firmware/memmap gave them: one bank of MemTotal at 0 stands in (a stated fallback, not the real map)",
            );
        }
        None => p.unknown("RAM", "no /proc/iomem, /sys/firmware/memmap or /proc/meminfo MemTotal"),
    }
}

fn inside_banks(p: &Probed, r: PhysRange) -> bool {
    p.banks.iter().any(|b| b.value.range.start() <= r.start() && r.end() <= b.value.range.end())
}

fn cma(root: &Root, p: &mut Probed) {
    let mut placed: Vec<String> = Vec::new();
    for n in root.list("/sys/kernel/debug/cma") {
        let dir = format!("/sys/kernel/debug/cma/{n}");
        let read = |f: &str| root.read(&format!("{dir}/{f}")).and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(base), Some(count)) = (read("base_pfn"), read("count"))
            && let Some(r) = range(base << 12, (base + count) << 12)
        {
            add_cma(p, &n, r, format!("{dir}/base_pfn, {dir}/count"));
            placed.push(n);
        }
    }
    if placed.is_empty()
        && let Some(text) = root.read("/proc/iomem")
    {
        let m = parse::iomem(&text);
        if !m.hidden {
            for (name, r) in m.cma() {
                add_cma(p, &name, r, "/proc/iomem".to_owned());
                placed.push(name);
            }
        }
    }
    for n in root.list("/sys/kernel/mm/cma") {
        if !placed.iter().any(|x| x == &n) && !p.cma.iter().any(|c| c.value.name == n) {
            p.unknown(
                format!("CMA area `{n}` range"),
                "/sys/kernel/mm/cma lists it, but neither debugfs (root, CONFIG_CMA_DEBUGFS) nor /proc/iomem places it",
            );
        }
    }
}

fn add_cma(p: &mut Probed, name: &str, r: PhysRange, source: String) {
    let name = sanitize(name);
    if p.cma.iter().any(|c| c.value.name == name) {
        return;
    }
    match pages_of(r).filter(|r| inside_banks(p, *r)) {
        Some(r) => p.cma.push(sourced(Named { name, range: r }, source)),
        None => p.unknown(format!("CMA area `{name}`"), format!("{r} ({source}) is not inside one RAM bank")),
    }
}

/// Device-tree `reserved-memory`: every child with a `reg` is listed; reusable
/// `shared-dma-pool` nodes are CMA areas.
fn device_tree_reserved(root: &Root, p: &mut Probed) {
    let base = "/proc/device-tree/reserved-memory";
    let cells = |f: &str| {
        root.read_bytes(&format!("{base}/{f}"))
            .filter(|b| b.len() == 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (Some(ac), Some(sc)) = (cells("#address-cells"), cells("#size-cells")) else { return };
    for child in root.list(base) {
        let dir = format!("{base}/{child}");
        let Some(reg) = root.read_bytes(&format!("{dir}/reg")) else { continue };
        let Some((start, size)) = dt_reg(&reg, ac, sc) else {
            p.unknown(
                format!("reserved-memory `{child}`"),
                format!("{dir}/reg does not hold <{ac} address, {sc} size> cells"),
            );
            continue;
        };
        let Some(r) = start.checked_add(size).and_then(|end| range(start, end)) else { continue };
        let compatible = root.read_bytes(&format!("{dir}/compatible")).unwrap_or_default();
        let reusable = root.path(&format!("{dir}/reusable")).exists();
        let name = sanitize(child.split('@').next().unwrap_or(&child));
        if reusable && compatible.split(|b| *b == 0).any(|c| c == b"shared-dma-pool") {
            add_cma(p, &name, r, format!("{dir}/reg (reusable shared-dma-pool)"));
        } else {
            p.reserved.push(sourced(Named { name, range: r }, format!("{dir}/reg")));
        }
    }
}

/// Big-endian `<address size>` cells.
fn dt_reg(reg: &[u8], address_cells: u32, size_cells: u32) -> Option<(u64, u64)> {
    let cell = |i: usize| reg.get(4 * i..4 * i + 4).map(|b| u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
    let read = |at: usize, n: u32| -> Option<u64> {
        match n {
            1 => cell(at),
            2 => Some((cell(at)? << 32) | cell(at + 1)?),
            _ => None,
        }
    };
    let (a, s) = (usize::try_from(address_cells).ok()?, usize::try_from(size_cells).ok()?);
    if reg.len() < 4 * (a + s) {
        return None;
    }
    Some((read(0, address_cells)?, read(a, size_cells)?))
}

fn buddy(root: &Root, p: &mut Probed) {
    // `Node 0, zone   Normal   c0 c1 ... cMAX`: one count per order 0..=MAX_ORDER.
    let orders = root.read("/proc/buddyinfo").and_then(|t| {
        t.lines().next().map(|l| l.split_whitespace().skip(4).filter(|w| w.parse::<u64>().is_ok()).count())
    });
    match orders {
        Some(n) if n > 0 => p.max_buddy_block = Some(sourced(4096u64 << (n - 1), "/proc/buddyinfo (orders listed)")),
        _ => p.unknown("the page allocator's largest block", "/proc/buddyinfo is missing or empty"),
    }
}

/// VT-d capability register: page sizes from SLLPS (bit 34: 2 MiB, bit 35: 1 GiB) and
/// the IOVA width from MGAW (bits 21:16, width - 1).
pub fn vtd_caps(cap: u64) -> (Vec<u64>, u32) {
    let mut sizes = vec![4096];
    if cap & (1 << 34) != 0 {
        sizes.push(2 << 20);
    }
    if cap & (1 << 35) != 0 {
        sizes.push(1 << 30);
    }
    // CAST: six bits.
    let mgaw = ((cap >> 16) & 0x3f) as u32 + 1;
    (sizes, mgaw)
}

fn iommus(root: &Root, p: &mut Probed) {
    for n in root.list("/sys/class/iommu") {
        let cap_file = format!("/sys/class/iommu/{n}/intel-iommu/cap");
        let mut unit = ProbedIommu { name: n.clone(), page_sizes: None, iova_bits: None };
        if let Some(cap) = root.read(&cap_file).and_then(|t| hex_u64(&t)) {
            let (sizes, bits) = vtd_caps(cap);
            unit.page_sizes = Some(sourced(sizes, format!("{cap_file} (SLLPS, bits 34-35)")));
            unit.iova_bits = Some(sourced(bits, format!("{cap_file} (MGAW, bits 21:16)")));
        } else {
            p.unknown(
                format!("IOMMU `{n}` page sizes and address width"),
                "only Intel VT-d exposes them (intel-iommu/cap); 4 KiB, the smallest page every IOMMU maps, is written alone",
            );
        }
        p.iommus.push(unit);
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' }).collect()
}

fn pci_class(code: u32, has_connectors: bool) -> &'static str {
    match code >> 16 {
        0x03 if has_connectors => "display",
        0x03 => "gpu",
        0x04 => "video",
        0x12 => "accelerator",
        _ => "other",
    }
}

fn pci_devices(root: &Root, p: &mut Probed) {
    for bdf in root.list("/sys/bus/pci/devices") {
        let dir = format!("/sys/bus/pci/devices/{bdf}");
        let Some(bits) = root.read(&format!("{dir}/dma_mask_bits")).and_then(|t| t.trim().parse::<u32>().ok()) else {
            p.unknown(format!("PCI {bdf} dma_mask_bits"), format!("{dir}/dma_mask_bits is missing"));
            continue;
        };
        let class = root.read(&format!("{dir}/class")).and_then(|t| hex_u64(&t)).unwrap_or(0);
        let ids = format!(
            "{}:{}",
            root.read(&format!("{dir}/vendor")).unwrap_or_default().trim().trim_start_matches("0x"),
            root.read(&format!("{dir}/device")).unwrap_or_default().trim().trim_start_matches("0x")
        );
        let cards: Vec<String> = root.list(&format!("{dir}/drm")).into_iter().filter(|c| is_card(c)).collect();
        let connectors =
            cards.iter().any(|c| root.list("/sys/class/drm").iter().any(|x| x.starts_with(&format!("{c}-"))));
        let videos: Vec<String> = root.list(&format!("{dir}/video4linux"));
        let name = cards.first().or(videos.first()).cloned().unwrap_or_else(|| format!("pci-{}", sanitize(&bdf)));
        let mut nodes: Vec<String> = cards.iter().map(|c| format!("/dev/dri/{c}")).collect();
        nodes.extend(videos.iter().map(|v| format!("/dev/{v}")));
        let group = root.link_name(&format!("{dir}/iommu_group")).and_then(|g| g.parse::<u32>().ok());
        let domain = group.and_then(|g| {
            let f = format!("/sys/kernel/iommu_groups/{g}/type");
            root.read(&f).map(|t| sourced(t.trim().to_owned(), f))
        });
        if group.is_some() && domain.is_none() {
            p.unknown(format!("PCI {bdf} IOMMU domain type"), "its group has no readable `type` file");
        }
        let translated = domain.as_ref().is_some_and(|d| d.value == "DMA" || d.value == "DMA-FQ");
        let iommu = if translated { root.link_name(&format!("{dir}/iommu")) } else { None };
        if domain.as_ref().is_some_and(|d| d.value == "blocked") {
            p.unknown(format!("PCI {bdf} DMA"), "its IOMMU domain is `blocked`: it cannot DMA, so it is not written");
            continue;
        }
        let class_name = pci_class(u32::try_from(class).unwrap_or(0), connectors);
        p.devices.push(ProbedDevice {
            name,
            class: sourced(
                class_name,
                format!("{dir}/class{}", if class >> 16 == 3 { " and /sys/class/drm connectors" } else { "" }),
            ),
            pci: bdf.clone(),
            ids,
            driver: root.link_name(&format!("{dir}/driver")),
            nodes,
            dma_mask_bits: sourced(bits, format!("{dir}/dma_mask_bits")),
            iommu_group: group.map(|g| sourced(g, format!("{dir}/iommu_group"))),
            domain,
            iommu,
        });
    }
}

fn is_card(name: &str) -> bool {
    name.strip_prefix("card").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// DRM and V4L2 nodes that are not PCI functions: listed as unknown.
fn other_nodes(root: &Root, p: &mut Probed) {
    let known: Vec<String> = p.devices.iter().flat_map(|d| d.nodes.clone()).collect();
    for (class, dev_dir, pred) in
        [("drm", "/dev/dri", is_card as fn(&str) -> bool), ("video4linux", "/dev", |n: &str| n.starts_with("video"))]
    {
        for n in root.list(&format!("/sys/class/{class}")).into_iter().filter(|n| pred(n)) {
            let node = format!("{dev_dir}/{n}");
            if known.contains(&node) {
                continue;
            }
            let target = root.link_target(&format!("/sys/class/{class}/{n}/device")).unwrap_or_default();
            let driver = root.link_name(&format!("/sys/class/{class}/{n}/device/driver")).unwrap_or_else(|| "?".into());
            p.unknown(
                format!("{node} ({driver}) DMA constraints"),
                format!(
                    "not a PCI function ({target}): sysfs shows no dma_mask_bits, so it is not written as a device"
                ),
            );
        }
    }
}

fn hex(v: u64) -> String {
    let s = format!("{v:x}");
    let mut out = String::from("0x");
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 4 == 0 {
            out.push('_');
        }
        out.push(c);
    }
    out
}

fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("\"{}{unit}\"", bytes >> shift);
        }
    }
    bytes.to_string()
}

impl Probed {
    /// The platform file, every value followed by the file it came from.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "# This machine, as `dmaplace probe` read it. Each value names the file it came from;");
        let _ = writeln!(t, "# what the kernel does not expose is listed as unknown below and was not guessed.");
        let _ =
            writeln!(t, "# Device fields not written (max_segments, max_segment_size, segment boundary, alignment,");
        let _ = writeln!(t, "# layouts) are not exposed by sysfs: the platform format's defaults apply to them.");
        for u in &self.unknowns {
            let _ = writeln!(t, "# unknown: {}: {}", u.what, u.why);
        }
        for r in &self.reserved {
            let _ = writeln!(t, "# reserved: {} {} (from {})", r.value.name, r.value.range, r.source);
        }
        let _ = writeln!(
            t,
            "\n[platform]\nname = \"probe\"\ndescription = \"this machine, probed from sysfs and procfs\"\n"
        );
        let _ = writeln!(t, "[memory]");
        if let Some(b) = &self.max_buddy_block {
            let _ = writeln!(t, "max_buddy_block = {}  # from {}", size_text(b.value), b.source);
        }
        for (kind, list) in [("bank", &self.banks), ("cma", &self.cma)] {
            for r in list {
                let _ = writeln!(
                    t,
                    "[[memory.{kind}]]  # from {}\nname = \"{}\"\nstart = {}\nsize = {}",
                    r.source,
                    r.value.name,
                    hex(r.value.range.start().get()),
                    hex(r.value.range.len().bytes())
                );
            }
        }
        for d in &self.devices {
            self.device_toml(&mut t, d);
        }
        t
    }

    fn device_toml(&self, t: &mut String, d: &ProbedDevice) {
        let desc = format!(
            "PCI {} [{}] {}{}",
            d.pci,
            d.ids,
            d.driver.as_deref().unwrap_or("(no driver)"),
            if d.nodes.is_empty() { String::new() } else { format!(", {}", d.nodes.join(" ")) }
        );
        let _ = writeln!(
            t,
            "\n[[device]]\nname = \"{}\"\nclass = \"{}\"  # from {}",
            d.name, d.class.value, d.class.source
        );
        let _ = writeln!(t, "bus = \"pcie\"\ndescription = \"{desc}\"\n[device.placement]");
        let _ = writeln!(t, "dma_mask = {}  # from {}", d.dma_mask_bits.value, d.dma_mask_bits.source);
        match (&d.iommu_group, &d.domain) {
            (Some(g), Some(dom)) => {
                let _ = writeln!(
                    t,
                    "# IOMMU group {} (from {}), domain {} (from {})",
                    g.value, g.source, dom.value, dom.source
                );
            }
            (None, _) => {
                let _ = writeln!(t, "# no IOMMU group: the device reaches physical addresses directly");
            }
            _ => {}
        }
        let Some(unit) = d.iommu.as_ref().and_then(|n| self.iommus.iter().find(|u| &u.name == n)) else { return };
        let sizes = unit.page_sizes.as_ref().map_or(vec![4096], |s| s.value.clone());
        let list: Vec<String> = sizes.iter().map(|s| size_text(*s)).collect();
        let _ = writeln!(t, "[device.placement.iommu]\nname = \"{}\"", unit.name);
        let _ = writeln!(
            t,
            "pgsize_bitmap = [{}]  # {}",
            list.join(", "),
            unit.page_sizes.as_ref().map_or("unknown beyond 4 KiB".to_owned(), |s| format!("from {}", s.source))
        );
        match &unit.iova_bits {
            Some(b) => {
                let _ = writeln!(t, "iova_bits = {}  # from {}", b.value, b.source);
            }
            None => {
                let _ = writeln!(
                    t,
                    "iova_bits = {}  # unknown: the device's own dma_mask_bits bound it",
                    d.dma_mask_bits.value
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtd_cap_bits_give_page_sizes_and_width() {
        // qemu 7.2's intel-iommu (aw-bits=39): SLLPS 2M+1G, MGAW 38.
        let cap = (0b11u64 << 34) | (38 << 16);
        let (sizes, bits) = vtd_caps(cap);
        assert_eq!(sizes, vec![4096, 2 << 20, 1 << 30]);
        assert_eq!(bits, 39);
        assert_eq!(vtd_caps(38 << 16).0, vec![4096]);
        assert_eq!(vtd_caps(1 << 34).0, vec![4096, 2 << 20]);
    }

    #[test]
    fn device_tree_reg_cells() {
        let reg = [0, 0, 0, 0x1, 0x20, 0, 0, 0, 0, 0, 0, 0, 0x04, 0, 0, 0];
        assert_eq!(dt_reg(&reg, 2, 2), Some((0x1_2000_0000, 0x400_0000)));
        assert_eq!(dt_reg(&reg[..8], 1, 1), Some((1, 0x2000_0000)));
        assert_eq!(dt_reg(&reg[..6], 2, 2), None);
        assert_eq!(dt_reg(&reg, 3, 1), None);
    }

    #[test]
    fn hex_groups_digits_by_four() {
        assert_eq!(hex(0x1_2000_0000), "0x1_2000_0000");
        assert_eq!(hex(0x9f000), "0x9_f000");
        assert_eq!(size_text(64 << 20), "\"64MiB\"");
        assert_eq!(size_text(0x9f000), "\"636KiB\"");
        assert_eq!(size_text(1000), "1000");
    }
}
