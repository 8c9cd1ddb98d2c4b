//! Platforms the evaluation adds to the built-in set, clearly illustrative.
//!
//! `refsoc-cam` is `refsoc` (itself illustrative, `docs/PLATFORMS.md`) with one more
//! device: `csi`, an ordinary camera receiver. refsoc's own camera, `isp`, may only use
//! its carveout above 4 GiB, which no display or encoder of refsoc can reach, so a camera
//! pipeline to the display and the encoder cannot exist there by design (the solver
//! refuses it, naming both devices). The camera scenario needs a camera that can share.
//! `csi` is modelled on the Raspberry Pi 4 Unicam and the OMAP4 ISS (both in
//! `shared/platform-facts.md` and `platforms/`): no IOMMU, writes through
//! videobuf2-dma-contig, so physically contiguous, 32-bit DMA.

use dmaplace_core::{Platform, PlatformError, builtin};

/// The device `refsoc-cam` adds to `refsoc`.
const CSI: &str = r#"
# ILLUSTRATIVE (dmaplace-eval): a CSI-2 camera receiver without IOMMU, modelled on the
# Pi 4 Unicam and the OMAP4 ISS: videobuf2-dma-contig (contiguous), 32-bit DMA.
[[device]]
name = "csi"
class = "camera"
description = "ILLUSTRATIVE camera receiver (Unicam/OMAP4 ISS-like): no IOMMU, contiguous, 32-bit"
[device.placement]
dma_mask = 32
max_segments = 1
[device.layout]
pitch_align = 32
formats = [
  { fourcc = "NV12" },
  { fourcc = "YUYV" },
]
"#;

/// The names of the evaluation's own platforms.
pub const NAMES: &[&str] = &["refsoc-cam"];

/// The evaluation's platform `name`, if it is one: `None` for every other name.
pub fn load(name: &str) -> Option<Result<Platform, PlatformError>> {
    match name {
        "refsoc-cam" => Some(refsoc_cam()),
        _ => None,
    }
}

fn refsoc_cam() -> Result<Platform, PlatformError> {
    let base = builtin::BUILTIN.iter().find(|(n, _)| *n == "refsoc").map(|(_, t)| *t).unwrap_or_default();
    let text = base.replacen("name = \"refsoc\"", "name = \"refsoc-cam\"", 1).replacen(
        "description = \"Illustrative reference SoC",
        "description = \"refsoc plus an illustrative csi camera; Illustrative reference SoC",
        1,
    );
    Platform::from_toml("refsoc-cam.toml", &format!("{text}{CSI}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refsoc_cam_is_refsoc_plus_csi() {
        let cam = load("refsoc-cam").unwrap().unwrap();
        let refsoc = builtin::load("refsoc").unwrap().unwrap();
        assert_eq!(cam.name, "refsoc-cam");
        assert_eq!(cam.memory, refsoc.memory);
        assert_eq!(cam.devices.len(), refsoc.devices.len() + 1);
        let csi = cam.device("csi").unwrap();
        assert_eq!(csi.placement.max_segments.map(|n| n.get()), Some(1));
        assert!(load("refsoc").is_none());
    }
}
