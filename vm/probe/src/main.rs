//! dmaplace rig probe: runs inside the qemu guest (`vm/rig.sh smoke`).
//!
//! It reports what the booted kernel offers for dma-buf placement (heaps, udmabuf, DRM
//! devices, CMA, IOMMU) and exits 0 only if everything the kernel named by
//! `DMAPLACE_KERNEL` (debian|custom) should have is present and works.
//! `DMAPLACE_IOMMU=1` additionally requires an IOMMU with groups and virtio-gpu.
//!
//! Every syscall goes through dmaplace-linux (its inventory, its heap and udmabuf
//! allocation, its placement proof), so the probe has no `unsafe` and checks the same
//! code the guest tests use. Heap and udmabuf mmaps are VM_PFNMAP on 6.12, so CMA
//! placement is read from the debugfs CMA bitmap.

use std::fs;
use std::path::Path;

use dmaplace_core::{BufferDesc, Plan, Request, Size, Usage, solve};
use dmaplace_linux::{HeapKind, Inventory, LinuxBackend, Source};

struct Report {
    failures: Vec<String>,
}

impl Report {
    fn need(&mut self, ok: bool, what: &str) {
        println!("probe: check {:<60} {}", what, if ok { "ok" } else { "MISSING" });
        if !ok {
            self.failures.push(what.to_string());
        }
    }
}

fn list_dir(p: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn read_trim(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("<{e}>"))
}

/// A plan from a built-in platform: `device` alone with `hints`, `size` bytes.
fn plan(platform: &str, device: &str, hints: Usage, size: Size) -> Plan {
    let p = dmaplace_core::builtin::load(platform).expect("built in").expect("parses");
    let d = p.device(device).expect("device exists");
    solve(&p, &BufferDesc::Size(size), &[Request { device: d, hints }]).expect("solves")
}

/// Allocates `plan` from `source` and prints where it went; `Err` says why not.
fn allocate(be: &mut LinuxBackend, source: &Source, plan: &Plan) -> Result<Vec<dmaplace_core::PhysRange>, String> {
    let buf = be.allocate_from(source, plan, "dmaplace-probe").map_err(|e| e.to_string())?;
    let placed = be.placement(&buf).map_err(|e| e.to_string());
    match &placed {
        Ok((runs, method)) => {
            let shown: Vec<String> = runs.iter().take(4).map(ToString::to_string).collect();
            println!("probe: {source}: {} ok; {} run(s) via {method}: {}", plan.size, runs.len(), shown.join(", "));
        }
        Err(e) => println!("probe: {source}: {} ok; placement: {e}", plan.size),
    }
    placed.map(|(runs, _)| runs)
}

fn main() {
    let kernel = std::env::var("DMAPLACE_KERNEL").unwrap_or_default();
    let iommu = std::env::var("DMAPLACE_IOMMU").as_deref() == Ok("1");
    let inv = Inventory::probe();
    println!("probe: kernel={kernel} iommu={iommu} in_guest={}", dmaplace_linux::in_guest());
    for line in inv.to_string().lines() {
        println!("probe: {line}");
    }
    let mut r = Report { failures: Vec::new() };
    r.need(kernel == "debian" || kernel == "custom", "DMAPLACE_KERNEL is debian|custom");
    let custom = kernel == "custom";
    let mut be = LinuxBackend::with_inventory(inv.clone()).track_cma(inv.root);

    // dma-heaps: the system heap anywhere; a CMA heap as one run inside its area.
    let anywhere = plan("x86-desktop", "dgpu", Usage::RENDERING, Size::kib(64));
    let system = allocate(&mut be, &Source::Heap("system".into()), &anywhere);
    r.need(system.is_ok(), "dma_heap 'system' allocates");
    let contiguous = plan("rpi4", "unicam", Usage::CAMERA_WRITE, Size::kib(64));
    let cma = inv.heaps.iter().find_map(|h| match &h.kind {
        HeapKind::Cma(area) => Some((h.name.clone(), area.range)),
        _ => None,
    });
    let cma_ok = cma.is_some_and(|(heap, area)| match allocate(&mut be, &Source::Heap(heap), &contiguous) {
        Ok(runs) => runs.len() == 1 && area.is_some_and(|a| a.contains_range(runs[0])),
        Err(e) => {
            println!("probe: CMA heap: {e}");
            false
        }
    });
    if custom {
        r.need(cma_ok, "a CMA dma_heap allocates one contiguous range inside its CMA area");
        r.need(!inv.cma_areas.is_empty(), "the kernel reports a CMA area");
    }

    // udmabuf over a sealed memfd.
    let udmabuf = allocate(&mut be, &Source::Udmabuf, &anywhere);
    if let Err(e) = &udmabuf {
        println!("probe: udmabuf: {e}");
    }
    r.need(udmabuf.is_ok(), "/dev/udmabuf creates a dma-buf from a memfd");

    // DRM drivers and the IOMMU.
    let has = |driver: &str| inv.drm_cards(driver).next().is_some();
    r.need(has("cirrus") || has("cirrus-qemu"), "DRM driver cirrus (qemu -device cirrus-vga)");
    r.need(has("vgem"), "DRM driver vgem");
    if custom {
        r.need(has("vkms"), "DRM driver vkms");
    }
    let iommus = list_dir("/sys/class/iommu");
    let groups = list_dir("/sys/kernel/iommu_groups");
    println!("probe: /sys/class/iommu: {iommus:?}; {} iommu group(s)", groups.len());
    for g in &groups {
        println!(
            "probe:   iommu_group {g}: {:?} type={}",
            list_dir(&format!("/sys/kernel/iommu_groups/{g}/devices")),
            read_trim(format!("/sys/kernel/iommu_groups/{g}/type"))
        );
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
