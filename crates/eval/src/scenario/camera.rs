//! Camera preview and recording: ISP -> GPU + display, and the encoder from the moment
//! recording starts.

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::{Size, Usage};

use super::builder::{Gen, MS, S, Shared, bytes, nth};
use super::video::{frame_period, frame_pool, swapchain};
use super::{Cast, Ctx, ParamSpec, ScenarioError, ScenarioInfo};
use crate::trace::Op;

pub(super) const RECORD: ScenarioInfo = ScenarioInfo {
    name: "camera-record",
    summary: "camera preview on an overlay plane and through the GPU; recording attaches the encoder to the streaming camera buffers",
    platform: "refsoc-cam",
    roles: &[
        ("camera", "writes the frames (CAMERA_WRITE)"),
        ("gpu", "samples each frame (effects, analysis) and renders the UI (TEXTURING, RENDERING)"),
        ("display", "shows the preview on an overlay plane and the UI (SCANOUT)"),
        ("encoder", "reads the frames while recording (VIDEO_ENCODE) and writes the bitstream"),
    ],
    casts: &[Cast {
        platform: "refsoc-cam",
        roles: &[("camera", "csi"), ("gpu", "gpu"), ("display", "dpu"), ("encoder", "venc")],
    }],
    params: &[
        ParamSpec { name: "sessions", default: "3", help: "times the camera is opened" },
        ParamSpec { name: "session", default: "120s", help: "how long each stays open" },
        ParamSpec { name: "record-at", default: "20s", help: "when recording starts in each session" },
        ParamSpec { name: "record", default: "60s", help: "how long it records" },
        ParamSpec { name: "fps", default: "30", help: "camera frames per second" },
        ParamSpec { name: "pool", default: "6", help: "camera buffers" },
        ParamSpec {
            name: "size",
            default: "1280x720",
            help: "camera resolution (NV12; 1080 rows would need 1088 for the encoder: a layout change, not a move)",
        },
        ParamSpec { name: "panel", default: "1920x1080", help: "display resolution (UI swapchain, 3 XR24 buffers)" },
        ParamSpec { name: "bitstream", default: "2MiB", help: "size of each of the encoder's 4 output buffers" },
    ],
    generate: record,
};

/// The encoder's output buffers, read by the CPU (the muxer) after each frame.
fn bitstream(g: &mut Gen, t: u64, size: Size, enc: &str, session: u64) -> Vec<Shared> {
    let usage = Usage::VIDEO_ENCODE | Usage::CPU_READ_OFTEN;
    (0..4)
        .map(|i| g.shared(t, &bytes(size), usage, &format!("bits{session}.{i}"), &[(enc, Usage::VIDEO_ENCODE)]))
        .collect()
}

fn record(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let roles = ["camera", "gpu", "display", "encoder"].map(|r| c.role(r));
    let [cam, gpu, disp, enc] = roles.each_ref().map(String::as_str);
    let sessions = c.count("sessions", 1)?;
    let session = c.duration("session")?;
    let (record_at, record) = (c.duration("record-at")?, c.duration("record")?);
    let frame = frame_period(c)?;
    let pool = c.count("pool", 2)?;
    let (size, panel) = (c.dims("size")?, c.dims("panel")?);
    let bits = c.text("bitstream").parse::<Size>().map_err(|e| c.bad("bitstream", e.to_string()))?;
    if bits.is_zero() || bits > Size::mib(64) {
        return Err(c.bad("bitstream", "expected 4KiB to 64MiB"));
    }
    if record_at + record + 2 * frame > session {
        return Err(c.bad("record", "recording must end a frame before the session does"));
    }
    let churn = c.count("churn", 0)?;
    let g = &mut c.builder;
    let mut t0 = 10 * MS;
    for i in 0..sessions {
        let ui = swapchain(g, t0, panel, gpu, disp, &format!("ui{i}."));
        let devices = [(cam, Usage::CAMERA_WRITE), (gpu, Usage::TEXTURING), (disp, Usage::SCANOUT)];
        let mut frames = frame_pool(g, t0, pool, size, &format!("camera{i}"), &devices);
        let start = t0 + 10 * MS;
        let boundary = |t: u64| start + t.div_ceil(frame) * frame - frame / 8;
        let (rec_start, rec_end) = (boundary(record_at), boundary(record_at + record));
        for b in frames.iter_mut() {
            g.join(rec_start, b, enc, Usage::VIDEO_ENCODE);
        }
        let out = bitstream(g, rec_start, bits, enc, i);
        let n = session / frame;
        let mut e = 0usize;
        for f in 0..n {
            let ft = start + f * frame;
            let b = nth(&frames, f);
            g.dma(ft, b.map(cam), frame / 2);
            g.dma(ft + frame / 2, b.map(gpu), frame / 8);
            g.dma(ft + frame / 2, b.map(disp), frame);
            if f % 10 == 0 {
                let s = nth(&ui, f / 10);
                g.dma(ft, s.map(gpu), frame / 4);
                g.dma(ft + frame / 2, s.map(disp), 10 * frame);
            }
            if (rec_start..rec_end).contains(&ft) {
                let o = &out[e % 4];
                e += 1;
                g.dma(ft + frame / 2, b.map(enc), frame / 3);
                g.dma(ft + frame / 2, o.map(enc), frame / 3);
                g.at(ft + frame / 2 + frame / 3 + 1, Op::CpuBegin { buf: o.buf, access: CpuAccess::Read });
                g.at(ft + frame / 2 + frame / 3 + 2, Op::CpuEnd { buf: o.buf });
            }
        }
        for b in frames.iter_mut() {
            g.leave(rec_end, b, enc);
        }
        for o in out {
            g.release(rec_end, o);
        }
        let end = start + (n + 11) * frame;
        for b in ui.into_iter().chain(frames) {
            g.release(end, b);
        }
        g.churn(t0, end, churn);
        t0 = end + S;
    }
    Ok(())
}
