//! Video playback (decoder -> GPU -> display) and a screen recorder that attaches late to
//! the buffers on the display.

use dmaplace_core::Usage;

use super::builder::{Gen, MS, S, Shared, image, nth};
use super::{Cast, Ctx, ParamSpec, ScenarioError, ScenarioInfo};

pub(super) const PLAYBACK: ScenarioInfo = ScenarioInfo {
    name: "video-playback",
    summary: "clips decoded into pools of NV12 frames; the GPU composites each frame into a swapchain the display scans out",
    platform: "refsoc",
    roles: &[
        ("decoder", "writes decoded frames (VIDEO_DECODE)"),
        ("gpu", "samples each frame and renders the composition (TEXTURING, RENDERING)"),
        ("display", "scans out the composition (SCANOUT)"),
    ],
    casts: &[
        Cast { platform: "refsoc", roles: &[("decoder", "vdec"), ("gpu", "gpu"), ("display", "dpu")] },
        Cast { platform: "rk3399", roles: &[("decoder", "vpu"), ("gpu", "gpu"), ("display", "vop")] },
    ],
    params: &[
        ParamSpec {
            name: "clips",
            default: "6",
            help: "clips played one after another, each with its own pool of frames",
        },
        ParamSpec { name: "clip", default: "60s", help: "length of each clip" },
        ParamSpec { name: "fps", default: "30", help: "frames per second" },
        ParamSpec { name: "pool", default: "8", help: "decoded frames per pool" },
        ParamSpec { name: "sizes", default: "1920x1080,3840x2160,1280x720", help: "clip resolutions, in turn (NV12)" },
        ParamSpec { name: "panel", default: "1920x1080", help: "display resolution (a swapchain of 3 XR24 buffers)" },
    ],
    generate: playback,
};

pub(super) const SCREEN_RECORD: ScenarioInfo = ScenarioInfo {
    name: "screen-record",
    summary: "a video on an overlay plane under a GPU-rendered UI; a recorder attaches late to the buffers on the display, now and then",
    platform: "refsoc",
    roles: &[
        ("gpu", "renders the UI (RENDERING)"),
        ("display", "scans out the UI and the video plane (SCANOUT)"),
        ("decoder", "writes the video frames (VIDEO_DECODE)"),
        ("scaler", "the recorder's 2D engine: reads the UI plane for colour conversion"),
        ("encoder", "the recorder's encoder: reads the video plane (VIDEO_ENCODE)"),
    ],
    casts: &[Cast {
        platform: "refsoc",
        roles: &[("gpu", "gpu"), ("display", "dpu"), ("decoder", "vdec"), ("scaler", "g2d"), ("encoder", "venc")],
    }],
    params: &[
        ParamSpec { name: "duration", default: "240s", help: "simulated time" },
        ParamSpec { name: "fps", default: "30", help: "video frames per second" },
        ParamSpec { name: "ui-every", default: "4", help: "video frames between UI updates" },
        ParamSpec { name: "recordings", default: "3", help: "recording sessions" },
        ParamSpec { name: "first", default: "30s", help: "when the first recording starts" },
        ParamSpec { name: "every", default: "70s", help: "time between the starts of recordings" },
        ParamSpec { name: "record", default: "30s", help: "length of each recording" },
        ParamSpec { name: "pool", default: "8", help: "video frames in the pool" },
        ParamSpec { name: "video", default: "1920x1080", help: "video resolution (NV12)" },
        ParamSpec { name: "panel", default: "1920x1080", help: "display resolution (UI swapchain, 3 XR24 buffers)" },
    ],
    generate: screen_record,
};

/// Frame period for `fps` (1 to 240).
pub(super) fn frame_period(c: &Ctx<'_>) -> Result<u64, ScenarioError> {
    let fps = c.count("fps", 1)?;
    if fps > 240 {
        return Err(c.bad("fps", "expected 1 to 240"));
    }
    Ok(S / fps)
}

/// A swapchain of 3 XR24 buffers the GPU renders and the display scans out.
pub(super) fn swapchain(g: &mut Gen, t: u64, (w, h): (u32, u32), gpu: &str, display: &str, name: &str) -> Vec<Shared> {
    let usage = Usage::SCANOUT | Usage::RENDERING;
    (0..3)
        .map(|i| {
            let devices = [(gpu, Usage::RENDERING), (display, Usage::SCANOUT)];
            g.shared(t, &image(w, h, "XR24"), usage, &format!("{name}{i}"), &devices)
        })
        .collect()
}

/// A pool of `n` NV12 frames.
pub(super) fn frame_pool(
    g: &mut Gen,
    t: u64,
    n: u64,
    (w, h): (u32, u32),
    name: &str,
    devices: &[(&str, Usage)],
) -> Vec<Shared> {
    let usage = devices.iter().fold(Usage::empty(), |u, (_, h)| u | *h);
    (0..n).map(|i| g.shared(t, &image(w, h, "NV12"), usage, &format!("{name}.{i}"), devices)).collect()
}

/// One frame of playback at `ft`: decode into `b`, the GPU samples it and renders into
/// `s`, the display shows `s` until the next flip.
pub(super) fn composite(g: &mut Gen, ft: u64, frame: u64, b: &Shared, s: &Shared, roles: [&str; 3]) {
    let [dec, gpu, disp] = roles;
    g.dma(ft, b.map(dec), frame / 2);
    g.dma(ft + frame / 2, b.map(gpu), frame / 8);
    g.dma(ft + frame / 2, s.map(gpu), frame / 8);
    g.dma(ft + frame / 2 + frame / 8, s.map(disp), frame);
}

fn playback(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let (dec, gpu, disp) = (c.role("decoder"), c.role("gpu"), c.role("display"));
    let clips = c.count("clips", 1)?;
    let clip = c.duration("clip")?;
    let frame = frame_period(c)?;
    let pool = c.count("pool", 2)?;
    let sizes = c.dims_list("sizes")?;
    let panel = c.dims("panel")?;
    let churn = c.count("churn", 0)?;
    let g = &mut c.builder;
    let swap = swapchain(g, 0, panel, &gpu, &disp, "swap");
    let mut t = 10 * MS;
    let mut k = 0usize;
    for (i, size) in (0..clips).zip(sizes.iter().cycle()) {
        let devices = [(dec.as_str(), Usage::VIDEO_DECODE), (gpu.as_str(), Usage::TEXTURING)];
        let frames = frame_pool(g, t, pool, *size, &format!("clip{i}"), &devices);
        let n = (clip / frame).max(1);
        for f in 0..n {
            let ft = t + 10 * MS + f * frame;
            let b = nth(&frames, f);
            composite(g, ft, frame, b, &swap[k % 3], [&dec, &gpu, &disp]);
            k += 1;
        }
        let end = t + 10 * MS + (n + 1) * frame;
        for b in frames {
            g.release(end, b);
        }
        t = end + 100 * MS;
    }
    g.churn(0, t, churn);
    for s in swap {
        g.release(t + 2 * frame, s);
    }
    Ok(())
}

/// Whether `t` lies in one of the recording windows.
fn recording_at(t: u64, windows: &[(u64, u64)]) -> bool {
    windows.iter().any(|(s, e)| (*s..*e).contains(&t))
}

fn screen_record(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let roles = ["gpu", "display", "decoder", "scaler", "encoder"].map(|r| c.role(r));
    let [gpu, disp, dec, scaler, enc] = roles.each_ref().map(String::as_str);
    let duration = c.duration("duration")?;
    let frame = frame_period(c)?;
    let ui_every = c.count("ui-every", 1)?;
    let recordings = c.count("recordings", 0)?;
    let (first, every, record) = (c.duration("first")?, c.duration("every")?, c.duration("record")?);
    let pool = c.count("pool", 2)?;
    let (video, panel) = (c.dims("video")?, c.dims("panel")?);
    let churn = c.count("churn", 0)?;
    if recordings > 1 && every <= record + frame {
        return Err(c.bad("every", "recordings must not overlap: `every` must exceed `record` by a frame"));
    }
    let g = &mut c.builder;
    let start = 10 * MS;
    let mut ui = swapchain(g, 0, panel, gpu, disp, "ui");
    let devices = [(dec, Usage::VIDEO_DECODE), (disp, Usage::SCANOUT)];
    let mut frames = frame_pool(g, 0, pool, video, "video", &devices);
    // Recordings start and stop an eighth of a frame before a frame begins, after the
    // recorder's last DMA of the previous frame.
    let boundary = |t: u64| start + t.div_ceil(frame) * frame - frame / 8;
    let windows: Vec<(u64, u64)> =
        (0..recordings).map(|r| (boundary(first + r * every), boundary(first + r * every + record))).collect();
    let n = duration / frame;
    let mut shown_ui = 0u64;
    for f in 0..n {
        let ft = start + f * frame;
        let just_before = |t: &u64| (ft.saturating_sub(frame)..ft).contains(t);
        if let Some((s, _)) = windows.iter().find(|(s, _)| just_before(s)) {
            for b in ui.iter_mut() {
                g.join(*s, b, scaler, Usage::empty());
            }
            for b in frames.iter_mut() {
                g.join(*s, b, enc, Usage::VIDEO_ENCODE);
            }
        }
        if let Some((_, e)) = windows.iter().find(|(_, e)| just_before(e)) {
            for b in ui.iter_mut().chain(frames.iter_mut()) {
                g.leave(*e, b, scaler);
                g.leave(*e, b, enc);
            }
        }
        let v = nth(&frames, f);
        g.dma(ft, v.map(dec), frame / 2);
        g.dma(ft + frame / 2, v.map(disp), frame);
        if f % ui_every == 0 {
            shown_ui = f / ui_every;
            let u = nth(&ui, shown_ui);
            g.dma(ft, u.map(gpu), frame / 4);
            g.dma(ft + frame / 2, u.map(disp), ui_every * frame);
        }
        if recording_at(ft, &windows) {
            g.dma(ft + frame / 2, nth(&ui, shown_ui).map(scaler), frame / 4);
            g.dma(ft + frame / 2, v.map(enc), frame / 3);
        }
    }
    let end = start + (n + ui_every + 1) * frame;
    g.churn(0, end, churn);
    for b in ui.into_iter().chain(frames) {
        g.release(end, b);
    }
    Ok(())
}
