//! An x86 desktop with a 32-bit PCIe capture card and a discrete GPU: the card writes
//! frames, the dGPU samples them and renders the output, the iGPU scans it out (PRIME).

use dmaplace_core::Usage;

use super::builder::{MS, S, Shared, image, nth};
use super::video::{frame_period, swapchain};
use super::{Cast, Ctx, ParamSpec, ScenarioError, ScenarioInfo};

pub(super) const CAPTURE: ScenarioInfo = ScenarioInfo {
    name: "x86-capture",
    summary: "a 32-bit PCIe capture card streams frames the discrete GPU samples and renders; the iGPU scans out",
    platform: "x86-desktop",
    roles: &[
        ("capture", "the capture card: writes frames, 32-bit DMA without IOMMU translation (CAMERA_WRITE)"),
        ("gpu", "the discrete GPU: samples the frames and renders the output (TEXTURING, RENDERING)"),
        ("display", "the GPU that drives the monitor (SCANOUT)"),
    ],
    casts: &[Cast { platform: "x86-desktop", roles: &[("capture", "capture"), ("gpu", "dgpu"), ("display", "igpu")] }],
    params: &[
        ParamSpec { name: "sessions", default: "4", help: "capture sessions, each with its own buffers" },
        ParamSpec { name: "session", default: "60s", help: "length of each" },
        ParamSpec { name: "fps", default: "60", help: "frames per second" },
        ParamSpec { name: "pool", default: "6", help: "capture buffers" },
        ParamSpec { name: "sizes", default: "1920x1080,3840x2160", help: "capture resolutions, in turn (NV12)" },
        ParamSpec { name: "panel", default: "2560x1440", help: "monitor resolution (3 XR24 buffers)" },
    ],
    generate: capture,
};

fn capture(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let roles = ["capture", "gpu", "display"].map(|r| c.role(r));
    let [card, gpu, disp] = roles.each_ref().map(String::as_str);
    let sessions = c.count("sessions", 1)?;
    let session = c.duration("session")?;
    let frame = frame_period(c)?;
    let pool = c.count("pool", 2)?;
    let sizes = c.dims_list("sizes")?;
    let panel = c.dims("panel")?;
    let churn = c.count("churn", 0)?;
    let g = &mut c.builder;
    let out = swapchain(g, 0, panel, gpu, disp, "out");
    let mut t0 = 10 * MS;
    let mut k = 0usize;
    for (i, (w, h)) in (0..sessions).zip(sizes.iter().cycle()) {
        let devices = [(card, Usage::CAMERA_WRITE), (gpu, Usage::TEXTURING)];
        let usage = Usage::CAMERA_WRITE | Usage::TEXTURING;
        let frames: Vec<Shared> = (0..pool)
            .map(|j| g.shared(t0, &image(*w, *h, "NV12"), usage, &format!("capture{i}.{j}"), &devices))
            .collect();
        let n = session / frame;
        for f in 0..n {
            let ft = t0 + 10 * MS + f * frame;
            let b = nth(&frames, f);
            let o = &out[k % 3];
            k += 1;
            g.dma(ft, b.map(card), frame * 3 / 4);
            g.dma(ft + frame * 3 / 4, b.map(gpu), frame / 8);
            g.dma(ft + frame * 3 / 4, o.map(gpu), frame / 8);
            g.dma(ft + frame * 7 / 8, o.map(disp), frame);
        }
        let end = t0 + 10 * MS + (n + 2) * frame;
        for b in frames {
            g.release(end, b);
        }
        g.churn(t0, end, churn);
        t0 = end + S / 2;
    }
    for o in out {
        g.release(t0 + 2 * frame, o);
    }
    Ok(())
}
