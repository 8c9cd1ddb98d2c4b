//! `dmaplace probe` over fixture trees laid out like `/`: a q35 guest with intel-iommu
//! (root's view), the same seen by a non-root user, a device-tree SoC, and a machine
//! that shows nothing but `/proc/meminfo`. Every value must come with its file, every
//! gap must be listed as unknown, and the platform file must load and solve.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use dmaplace_core::{BufferDesc, Platform, Request, Size, Usage, solve};
use dmaplace_linux::probe::{Root, probe};

struct Tree(PathBuf);

impl Tree {
    fn new(tag: &str) -> Tree {
        let d = std::env::temp_dir().join(format!("dmaplace-probe-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tree(d)
    }
    fn file(&self, path: &str, text: impl AsRef<[u8]>) -> &Tree {
        let p = self.0.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
        self
    }
    fn dir(&self, path: &str) -> &Tree {
        fs::create_dir_all(self.0.join(path.trim_start_matches('/'))).unwrap();
        self
    }
    fn link(&self, path: &str, target: &str) -> &Tree {
        let p = self.0.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
        self
    }
    fn root(&self) -> Root {
        Root::at(&self.0)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// qemu q35, 1 GiB, `-device intel-iommu` (as the rig boots it): /proc/iomem as root.
const Q35_IOMEM: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
00100000-3ffdffff : System RAM
  01000000-01ffffff : Kernel code
3ffe0000-3fffffff : Reserved
b0000000-bfffffff : PCI MMIO
fed90000-fed90fff : dmar0
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
";

/// qemu 7.2's VT-d capability register shape: SLLPS 2M+1G (bits 34, 35), MGAW 39 (38 in
/// bits 21:16), SAGAW 39-bit (bit 9).
const VTD_CAP: &str = "c00260200\n";

fn q35(t: &Tree, iomem: &str) {
    t.file("/proc/iomem", iomem)
        .file("/proc/buddyinfo", "Node 0, zone      DMA      1      1      0      1      2      1      1      0      1      1      3\nNode 0, zone    DMA32    5   4   3   2   1   1   1   1   1   1   200\n")
        .file("/sys/class/iommu/dmar0/intel-iommu/cap", VTD_CAP)
        .file("/sys/kernel/mm/cma/reserved/count", "16384\n")
        .file("/sys/kernel/debug/cma/reserved/base_pfn", "244736\n")
        .file("/sys/kernel/debug/cma/reserved/count", "16384\n");
    // cirrus behind the IOMMU (DMA-FQ), virtio-gpu in an identity domain, the ISA bridge blocked.
    for (bdf, class, vendor, device, bits, group, kind, driver, card) in [
        ("0000:00:01.0", "0x030000", "0x1013", "0x00b8", "32", "1", "DMA-FQ", "cirrus-qemu", Some("card0")),
        ("0000:00:02.0", "0x030000", "0x1af4", "0x1050", "64", "2", "identity", "virtio-pci", None),
        ("0000:00:1f.0", "0x060100", "0x8086", "0x2918", "32", "3", "blocked", "lpc_ich", None),
    ] {
        let dir = format!("/sys/bus/pci/devices/{bdf}");
        t.file(&format!("{dir}/class"), format!("{class}\n"))
            .file(&format!("{dir}/vendor"), format!("{vendor}\n"))
            .file(&format!("{dir}/device"), format!("{device}\n"))
            .file(&format!("{dir}/dma_mask_bits"), format!("{bits}\n"))
            .link(&format!("{dir}/driver"), &format!("../../../../bus/pci/drivers/{driver}"))
            .link(&format!("{dir}/iommu_group"), &format!("../../../../kernel/iommu_groups/{group}"))
            .file(&format!("/sys/kernel/iommu_groups/{group}/type"), format!("{kind}\n"));
        if kind.starts_with("DMA") {
            t.link(&format!("{dir}/iommu"), "../../../../class/iommu/dmar0");
        }
        if let Some(c) = card {
            t.dir(&format!("{dir}/drm/{c}"))
                .dir(&format!("/sys/class/drm/{c}"))
                .dir(&format!("/sys/class/drm/{c}-VGA-1"));
        }
    }
    // vgem: a DRM card that is no PCI function.
    t.dir("/sys/devices/platform/vgem")
        .link("/sys/devices/platform/vgem/driver", "../../../bus/platform/drivers/vgem")
        .link("/sys/class/drm/card1/device", "../../../devices/platform/vgem");
}

fn solves(toml: &str, device: &str) {
    let p = Platform::from_toml("probe", toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let d = p.device(device).unwrap();
    solve(&p, &BufferDesc::Size(Size::mib(4)), &[Request { device: d, hints: Usage::SCANOUT }])
        .unwrap_or_else(|e| panic!("{device}: {e}"));
}

#[test]
fn q35_with_intel_iommu_as_root() {
    let t = Tree::new("q35");
    q35(&t, Q35_IOMEM);
    let p = probe(&t.root());
    let banks: Vec<String> = p.banks.iter().map(|b| format!("{} {}", b.value.name, b.value.range)).collect();
    assert_eq!(banks, ["ram0 0x1000..0x9_f000", "ram1 0x10_0000..0x3ffe_0000"]);
    assert!(p.banks.iter().all(|b| b.source == "/proc/iomem"));
    assert_eq!(p.reserved.len(), 6);
    assert_eq!(p.cma.len(), 1);
    assert_eq!(p.cma[0].value.range.to_string(), "0x3bc0_0000..0x3fc0_0000");
    assert!(p.cma[0].source.contains("/sys/kernel/debug/cma/reserved/base_pfn"));
    assert_eq!(p.max_buddy_block.as_ref().unwrap().value, 4 << 20);
    assert_eq!(p.iommus.len(), 1);
    assert_eq!(p.iommus[0].page_sizes.as_ref().unwrap().value, [4096, 2 << 20, 1 << 30]);
    assert_eq!(p.iommus[0].iova_bits.as_ref().unwrap().value, 39);

    assert_eq!(p.devices.len(), 2, "the blocked ISA bridge is not written");
    let cirrus = &p.devices[0];
    assert_eq!((cirrus.name.as_str(), cirrus.ids.as_str(), cirrus.class.value), ("card0", "1013:00b8", "display"));
    assert_eq!(cirrus.dma_mask_bits.value, 32);
    assert_eq!(cirrus.iommu.as_deref(), Some("dmar0"));
    assert_eq!(cirrus.domain.as_ref().unwrap().value, "DMA-FQ");
    let virtio = &p.devices[1];
    assert_eq!((virtio.name.as_str(), virtio.class.value, virtio.iommu.as_deref()), ("pci-0000-00-02.0", "gpu", None));

    let unknowns: Vec<&str> = p.unknowns.iter().map(|u| u.what.as_str()).collect();
    assert_eq!(unknowns, ["PCI 0000:00:1f.0 DMA", "/dev/dri/card1 (vgem) DMA constraints"]);

    let toml = p.to_toml();
    assert!(toml.contains("dma_mask = 32  # from /sys/bus/pci/devices/0000:00:01.0/dma_mask_bits"), "{toml}");
    assert!(toml.contains("pgsize_bitmap = [\"4KiB\", \"2MiB\", \"1GiB\"]  # from /sys/class/iommu/dmar0/intel-iommu/cap (SLLPS, bits 34-35)"), "{toml}");
    assert!(
        toml.contains("iova_bits = 39  # from /sys/class/iommu/dmar0/intel-iommu/cap (MGAW, bits 21:16)"),
        "{toml}"
    );
    assert!(
        toml.contains(
            "# unknown: /dev/dri/card1 (vgem) DMA constraints: not a PCI function (../../../devices/platform/vgem)"
        ),
        "{toml}"
    );
    assert!(toml.contains("max_buddy_block = \"4MiB\"  # from /proc/buddyinfo"), "{toml}");
    solves(&toml, "card0");
    solves(&toml, "pci-0000-00-02.0");
    // A 32-bit device behind VT-d still reaches all RAM; the plan says so.
    let platform = Platform::from_toml("probe", &toml).unwrap();
    let plan = solve(
        &platform,
        &BufferDesc::Size(Size::mib(8)),
        &[Request { device: platform.device("card0").unwrap(), hints: Usage::SCANOUT }],
    )
    .unwrap();
    assert!(!plan.contiguous(), "behind the IOMMU scanout needs no contiguity");
}

#[test]
fn without_root_memory_comes_from_firmware_memmap() {
    let t = Tree::new("nonroot");
    let zeros: String = Q35_IOMEM
        .lines()
        .map(|l| {
            let (span, name) = l.split_once(" : ").unwrap();
            let indent = span.len() - span.trim_start().len();
            format!("{}00000000-00000000 : {name}\n", " ".repeat(indent))
        })
        .collect();
    q35(&t, &zeros);
    fs::remove_dir_all(t.0.join("sys/kernel/debug")).unwrap();
    for (i, (s, e, kind)) in
        [("0x0", "0x9fbff", "System RAM"), ("0x9fc00", "0x9ffff", "Reserved"), ("0x100000", "0x3ffdffff", "System RAM")]
            .iter()
            .enumerate()
    {
        t.file(&format!("/sys/firmware/memmap/{i}/start"), format!("{s}\n"))
            .file(&format!("/sys/firmware/memmap/{i}/end"), format!("{e}\n"))
            .file(&format!("/sys/firmware/memmap/{i}/type"), format!("{kind}\n"));
    }
    let p = probe(&t.root());
    let banks: Vec<String> = p.banks.iter().map(|b| b.value.range.to_string()).collect();
    assert_eq!(banks, ["0x0..0x9_f000", "0x10_0000..0x3ffe_0000"]);
    assert_eq!(p.banks[0].source, "/sys/firmware/memmap/0/{start,end,type}");
    assert!(p.cma.is_empty());
    let unknowns: Vec<&str> = p.unknowns.iter().map(|u| u.what.as_str()).collect();
    assert!(unknowns.contains(&"/proc/iomem addresses"), "{unknowns:?}");
    assert!(unknowns.contains(&"CMA area `reserved` range"), "{unknowns:?}");
    solves(&p.to_toml(), "card0");
}

#[test]
fn device_tree_reserved_memory_gives_cma_and_reserved_ranges() {
    let t = Tree::new("dt");
    t.file("/proc/iomem", "40000000-bfffffff : System RAM\n")
        .file("/proc/device-tree/reserved-memory/#address-cells", 2u32.to_be_bytes())
        .file("/proc/device-tree/reserved-memory/#size-cells", 2u32.to_be_bytes())
        .file("/proc/device-tree/reserved-memory/linux,cma/reg", [0, 0, 0, 0, 0x70, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0])
        .file("/proc/device-tree/reserved-memory/linux,cma/compatible", b"shared-dma-pool\0")
        .file("/proc/device-tree/reserved-memory/linux,cma/reusable", b"")
        .file(
            "/proc/device-tree/reserved-memory/secure@50000000/reg",
            [0, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0],
        )
        .file("/proc/device-tree/reserved-memory/secure@50000000/no-map", b"")
        .file("/proc/device-tree/reserved-memory/broken/reg", [0, 0, 1]);
    let p = probe(&t.root());
    assert_eq!(p.cma.len(), 1);
    assert_eq!(p.cma[0].value.name, "linux-cma");
    assert_eq!(p.cma[0].value.range.to_string(), "0x7000_0000..0x8000_0000");
    assert!(p.cma[0].source.contains("reusable shared-dma-pool"));
    assert_eq!(p.reserved.iter().map(|r| r.value.range.to_string()).collect::<Vec<_>>(), ["0x5000_0000..0x5100_0000"]);
    assert!(p.unknowns.iter().any(|u| u.what == "reserved-memory `broken`"), "{:?}", p.unknowns);
    let toml = p.to_toml();
    let platform = Platform::from_toml("probe", &toml).unwrap();
    assert_eq!(platform.devices.len(), 0);
}

#[test]
fn with_only_meminfo_the_fallback_is_stated() {
    let t = Tree::new("bare");
    t.file("/proc/meminfo", "MemTotal:        2048000 kB\nMemFree: 1 kB\n");
    let p = probe(&t.root());
    assert_eq!(p.banks.len(), 1);
    assert_eq!(p.banks[0].value.range.len(), Size::new(2_048_000 * 1024));
    assert_eq!(p.banks[0].source, "/proc/meminfo MemTotal (fallback)");
    let toml = p.to_toml();
    assert!(toml.contains("# unknown: RAM addresses: neither /proc/iomem"), "{toml}");
    assert!(toml.contains("# unknown: the page allocator's largest block"), "{toml}");
    Platform::from_toml("probe", &toml).unwrap();
    let _ = Path::new("/");
}
