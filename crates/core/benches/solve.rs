//! Solve + layout cost against the number of devices.
//!
//! `cargo bench -p dmaplace-core --bench solve`

use std::hint::black_box;
use std::num::NonZeroU32;

use dmaplace_core::layout::{MOD_I915_Y_TILED, MOD_LINEAR};
use dmaplace_core::*;
use drm_fourcc::DrmFourcc;

fn main() {
    divan::main();
}

const MEMORY: &str = r#"
[platform]
name = "bench"
description = "synthetic platform for the solver benchmark"
[memory]
[[memory.bank]]
name = "low"
start = 0
size = "3GiB"
[[memory.bank]]
name = "high"
start = 0x1_0000_0000
size = "13GiB"
[[memory.cma]]
name = "cma"
start = 0x8000_0000
size = "256MiB"
"#;

/// `n` compatible devices: a mix of IOMMU-backed GPUs, 32-bit capture devices, and
/// contiguous displays, all accepting XR24 LINEAR (some also Y-tiled).
fn platform(n: usize) -> Platform {
    let mut p = Platform::from_toml("bench", MEMORY).unwrap();
    let vtd = PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_2M, PageSize::SZ_1G]);
    p.devices = (0..n)
        .map(|i| {
            let mut d = Device::new(format!("d{i}"), DeviceClass::Other);
            match i % 4 {
                0 => {
                    d.placement.iommu = Some(Iommu {
                        name: "VT-d".into(),
                        pgsize_bitmap: vtd,
                        iova_bits: DmaMask::new(48).unwrap(),
                        phys_bits: None,
                    })
                }
                1 => d.placement.dma_mask = DmaMask::BITS_32,
                2 => d.placement.max_segments = NonZeroU32::new(1),
                _ => d.placement.max_segment_size = Some(Size::mib(64)),
            }
            let mods = if i % 2 == 0 { vec![MOD_LINEAR, MOD_I915_Y_TILED] } else { vec![MOD_LINEAR] };
            d.layout.formats = vec![FormatCaps { fourcc: DrmFourcc::Xrgb8888, modifiers: mods }];
            d.layout.pitch_align = [64, 256, 128, 16][i % 4];
            d
        })
        .collect();
    p
}

#[divan::bench(args = [2, 4, 16, 64])]
fn solve_image(bencher: divan::Bencher, n: usize) {
    let p = platform(n);
    let requests: Vec<Request<'_>> = p.devices.iter().map(|d| Request { device: d, hints: Usage::RENDERING }).collect();
    let desc =
        BufferDesc::Image(ImageDesc { width: 1920, height: 1080, format: DrmFourcc::Xrgb8888, modifiers: vec![] });
    assert!(solve(&p, &desc, &requests).is_ok());
    bencher.bench(|| solve(black_box(&p), black_box(&desc), black_box(&requests)));
}
