//! `dmaplace probe` in the qemu guest (`vm/test-daemon.sh`), checked against what qemu
//! is known to provide: 1 GiB of RAM (`--mem 1G`) below 4 GiB; cirrus-vga
//! (`1013:00b8`) always; the machine's host bridge: i440FX (`8086:1237`) on `pc`, the
//! Q35 MCH (`8086:29c0`) on `q35` (`--machine q35`, or `--iommu`); no IOMMU on either
//! without `--iommu`; with `--iommu`, q35 with `intel-iommu` (VT-d unit `dmar0`,
//! 2 MiB and 1 GiB second-level pages, 39-bit address width: qemu's `aw-bits` default)
//! and virtio-gpu-pci (`1af4:1050`) translated by it; the custom kernel's 64 MiB CMA
//! area (`cma=64M`). The probed platform must load and solve. On the host every test is
//! `#[ignore]`d with the reason (and fails, saying why, if run with `--include-ignored`
//! there); `vm/test-daemon.sh` runs them in the guest with `--include-ignored`.

use dmaplace_core::{BufferDesc, Platform, Request, Size, Usage, solve};
use dmaplace_linux::probe::{Probed, Root, probe};

fn guest(test: &str) -> (Probed, bool, bool) {
    assert!(
        dmaplace_linux::in_guest(),
        "{test} probes what qemu provides and runs only in the guest (DMAPLACE_IN_GUEST is unset): run vm/test-daemon.sh"
    );
    let iommu = std::env::var("DMAPLACE_IOMMU").as_deref() == Ok("1");
    let custom = std::env::var("DMAPLACE_KERNEL").as_deref() == Ok("custom");
    let p = probe(&Root::system());
    println!("{}", p.to_toml());
    (p, iommu, custom)
}

#[test]
#[ignore = "probes what qemu provides: vm/test-daemon.sh runs it in the guest"]
fn ram_is_what_qemu_gives_a_1g_guest() {
    let (p, _, _) = guest("ram_is_what_qemu_gives_a_1g_guest");
    assert!(!p.banks.is_empty());
    assert!(p.banks.iter().all(|b| b.source == "/proc/iomem"), "root reads /proc/iomem");
    let total: u64 = p.banks.iter().map(|b| b.value.range.len().bytes()).sum();
    assert!(((1024 - 16) << 20..=1 << 30).contains(&total), "RAM {total:#x} is not about 1 GiB");
    assert!(p.banks.iter().all(|b| b.value.range.end().get() <= 1 << 30), "a 1 GiB guest has all RAM below 1 GiB");
    assert_eq!(p.max_buddy_block.as_ref().map(|b| b.value), Some(4 << 20), "x86-64 6.12: MAX_ORDER 10");
}

#[test]
#[ignore = "probes what qemu provides: vm/test-daemon.sh runs it in the guest"]
fn cirrus_and_virtio_gpu_are_pci_functions() {
    let (p, iommu, _) = guest("cirrus_and_virtio_gpu_are_pci_functions");
    let cirrus = p.devices.iter().find(|d| d.ids == "1013:00b8").expect("cirrus-vga is a PCI function");
    assert!((24..=64).contains(&cirrus.dma_mask_bits.value));
    assert!(cirrus.dma_mask_bits.source.ends_with("/dma_mask_bits"));
    if cirrus.driver.as_deref() == Some("cirrus-qemu") || cirrus.driver.as_deref() == Some("cirrus") {
        assert!(cirrus.name.starts_with("card"), "a bound cirrus has a DRM card: {}", cirrus.name);
        assert_eq!(cirrus.class.value, "display");
    }
    let virtio = p.devices.iter().find(|d| d.ids == "1af4:1050");
    if iommu {
        let unit = p.iommus.iter().find(|u| u.name == "dmar0").expect("intel-iommu is dmar0");
        assert_eq!(
            unit.page_sizes.as_ref().unwrap().value,
            [4096, 2 << 20, 1 << 30],
            "qemu's VT-d sets both SLLPS bits"
        );
        assert_eq!(unit.iova_bits.as_ref().unwrap().value, 39, "qemu's intel-iommu aw-bits default");
        let virtio = virtio.expect("virtio-gpu-pci with --iommu");
        for d in [cirrus, virtio] {
            let domain = d.domain.as_ref().map(|x| x.value.as_str());
            assert!(matches!(domain, Some("DMA" | "DMA-FQ")), "{}: domain {domain:?}", d.ids);
            assert_eq!(d.iommu.as_deref(), Some("dmar0"), "{}", d.ids);
        }
    } else {
        assert!(p.iommus.is_empty(), "no IOMMU without --iommu");
        assert!(virtio.is_none(), "the rig adds virtio-gpu only with --iommu");
        assert!(cirrus.iommu_group.is_none());
    }
}

#[test]
#[ignore = "probes what qemu provides: vm/test-daemon.sh runs it in the guest"]
fn the_host_bridge_is_the_machines() {
    let (p, iommu, _) = guest("the_host_bridge_is_the_machines");
    // vm/rig.sh says which machine it booted (older rigs: pc unless --iommu).
    let machine = std::env::var("DMAPLACE_MACHINE").unwrap_or_else(|_| if iommu { "q35" } else { "pc" }.into());
    let ids: Vec<&str> = p.devices.iter().map(|d| d.ids.as_str()).collect();
    let (want, other) = match machine.as_str() {
        "q35" => ("8086:29c0", "8086:1237"),
        _ => ("8086:1237", "8086:29c0"),
    };
    assert!(ids.contains(&want) && !ids.contains(&other), "machine {machine}: PCI functions {ids:?}");
    if !iommu {
        assert!(p.iommus.is_empty() && p.devices.iter().all(|d| d.iommu_group.is_none()), "{machine} without an IOMMU");
    }
    println!(
        "machine {machine}: host bridge {want}; IOMMU units {:?}",
        p.iommus.iter().map(|u| &u.name).collect::<Vec<_>>()
    );
}

#[test]
#[ignore = "probes what qemu provides: vm/test-daemon.sh runs it in the guest"]
fn cma_is_the_custom_kernels_64m() {
    let (p, _, custom) = guest("cma_is_the_custom_kernels_64m");
    if custom {
        assert_eq!(p.cma.len(), 1, "{:?}", p.cma);
        assert_eq!(p.cma[0].value.range.len(), Size::mib(64));
    } else {
        assert!(p.cma.is_empty(), "Debian's kernel has no CMA");
    }
}

#[test]
#[ignore = "probes what qemu provides: vm/test-daemon.sh runs it in the guest"]
fn the_probed_platform_loads_and_solves() {
    let (p, iommu, _) = guest("the_probed_platform_loads_and_solves");
    let platform = Platform::from_toml("probe", &p.to_toml()).unwrap();
    let cirrus = p.devices.iter().find(|d| d.ids == "1013:00b8").unwrap();
    let dev = platform.device(&cirrus.name).unwrap();
    let plan = solve(&platform, &BufferDesc::Size(Size::mib(4)), &[Request { device: dev, hints: Usage::SCANOUT }])
        .unwrap_or_else(|e| panic!("{e}"));
    println!("cirrus 4 MiB SCANOUT: placement {}", plan.placement);
    assert_eq!(dev.placement.iommu.is_some(), iommu, "translated exactly when behind intel-iommu");
}
