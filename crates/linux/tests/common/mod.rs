//! Shared by the in-guest tests: the guest check, plans from the builtin platforms and
//! what each kernel of the rig must have.
#![allow(dead_code)]

use dmaplace_core::{BufferDesc, ImageDesc, Plan, Request, Size, Usage, solve};
use drm_fourcc::DrmFourcc;

/// The kernel the rig booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Debian's 6.12: system heap, udmabuf, vgem and cirrus, no CMA.
    Debian,
    /// The self-built 6.12: system and CMA heaps, udmabuf, vgem, vkms, cirrus.
    Custom,
}

/// The kernel the rig booted. Outside the guest (an ignored test run on the host with
/// `--include-ignored`) the test fails and says why: it can prove nothing here.
pub fn guest(test: &str) -> Kernel {
    assert!(
        dmaplace_linux::in_guest(),
        "{test} runs only in the qemu guest (DMAPLACE_IN_GUEST is unset; this host has no dma-heaps, udmabuf or DRM to test): run vm/test-linux.sh --filter {test}"
    );
    match std::env::var("DMAPLACE_KERNEL").as_deref() {
        Ok("debian") => Kernel::Debian,
        Ok("custom") => Kernel::Custom,
        other => panic!("DMAPLACE_IN_GUEST=1 but DMAPLACE_KERNEL is {other:?}, not debian|custom"),
    }
}

/// Solves a plan on a builtin platform; `devices` are `name:HINT,HINT`.
pub fn plan(platform: &str, devices: &[&str], desc: BufferDesc) -> Plan {
    let p = dmaplace_core::builtin::load(platform).expect("builtin platform").expect("parses");
    let parsed: Vec<(String, Usage)> = devices
        .iter()
        .map(|spec| {
            let (name, hints) = spec.split_once(':').unwrap_or((spec, ""));
            (name.to_owned(), Usage::parse_list(hints).expect("hints parse"))
        })
        .collect();
    let reqs: Vec<Request<'_>> =
        parsed.iter().map(|(n, h)| Request { device: p.device(n).expect("device exists"), hints: *h }).collect();
    solve(&p, &desc, &reqs).unwrap_or_else(|e| panic!("{platform} {devices:?}: {e}"))
}

/// A raw buffer of `size`.
pub fn sized(size: Size) -> BufferDesc {
    BufferDesc::Size(size)
}

/// A linear XR24 image.
pub fn xr24(width: u32, height: u32) -> BufferDesc {
    BufferDesc::Image(ImageDesc { width, height, format: DrmFourcc::Xrgb8888, modifiers: vec![0] })
}

/// The plans every source is tried with: `(label, plan)`.
pub fn plans() -> Vec<(&'static str, Plan)> {
    vec![
        ("contiguous 2 MiB (rpi4 unicam)", plan("rpi4", &["unicam:CAMERA_WRITE"], sized(Size::mib(2)))),
        ("contiguous 6 MiB (rpi4 unicam)", plan("rpi4", &["unicam:CAMERA_WRITE"], sized(Size::mib(6)))),
        (
            "address-limited 4 MiB (x86 capture, 32-bit, no IOMMU)",
            plan("x86-desktop", &["capture:CAMERA_WRITE"], sized(Size::mib(4))),
        ),
        (
            "IOMMU-chunked 8 MiB (x86 igpu + dgpu, VT-d 4K/2M/1G)",
            plan("x86-desktop", &["igpu:RENDERING", "dgpu:TEXTURING"], sized(Size::mib(8))),
        ),
        ("plain 640x480 XR24 (x86 dgpu)", plan("x86-desktop", &["dgpu:RENDERING"], xr24(640, 480))),
    ]
}

/// Reads `/sys/kernel/debug/dma_buf/bufinfo`.
pub fn bufinfo() -> Vec<dmaplace_linux::parse::BufInfo> {
    let text = std::fs::read_to_string("/sys/kernel/debug/dma_buf/bufinfo")
        .expect("debugfs is mounted in the guest and has dma_buf/bufinfo");
    dmaplace_linux::parse::bufinfo(&text)
}
