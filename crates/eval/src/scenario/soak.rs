//! A long soak: hours of video playback with clips of changing resolution, a screen
//! recorder that comes and goes, GPU thumbnails made and dropped, and memory pressure in
//! waves.

use dmaplace_core::Usage;
use rand::RngExt;

use super::builder::{MS, S, Shared, image, nth};
use super::video::{composite, frame_period, frame_pool, swapchain};
use super::{Cast, Ctx, ParamSpec, ScenarioError, ScenarioInfo};
use crate::trace::Op;

pub(super) const SOAK: ScenarioInfo = ScenarioInfo {
    name: "soak",
    summary: "hours of playback with changing resolutions, a recorder that comes and goes, thumbnails, and memory pressure in waves",
    platform: "refsoc",
    roles: &[
        ("decoder", "writes decoded frames (VIDEO_DECODE)"),
        ("gpu", "composites, renders thumbnails (TEXTURING, RENDERING)"),
        ("display", "scans out (SCANOUT)"),
        ("scaler", "2D engine: scales thumbnails, converts the screen for the recorder"),
        ("encoder", "the recorder's encoder (VIDEO_ENCODE)"),
    ],
    casts: &[Cast {
        platform: "refsoc",
        roles: &[("decoder", "vdec"), ("gpu", "gpu"), ("display", "dpu"), ("scaler", "g2d"), ("encoder", "venc")],
    }],
    params: &[
        ParamSpec { name: "duration", default: "2h", help: "simulated time" },
        ParamSpec { name: "fps", default: "30", help: "frames per second" },
        ParamSpec { name: "clip", default: "300s", help: "length of each clip (a new pool of frames each)" },
        ParamSpec { name: "pool", default: "8", help: "decoded frames per pool" },
        ParamSpec {
            name: "sizes",
            default: "1920x1080,3840x2160,1280x720",
            help: "clip resolutions, picked at random (NV12)",
        },
        ParamSpec { name: "panel", default: "1920x1080", help: "display resolution (3 XR24 buffers)" },
        ParamSpec { name: "record-every", default: "1200s", help: "time between the starts of recordings" },
        ParamSpec { name: "record", default: "120s", help: "length of each recording" },
        ParamSpec {
            name: "thumbnail-every",
            default: "2s",
            help: "time between thumbnails (512x512 XR24, GPU + 2D engine)",
        },
        ParamSpec { name: "thumbnail-life", default: "20s", help: "how long each thumbnail lives" },
        ParamSpec { name: "wave", default: "600s", help: "period of the memory-pressure wave" },
        ParamSpec {
            name: "wave-fill",
            default: "0.25",
            help: "how far the other users' share rises above `fill` at the wave's top",
        },
    ],
    generate: soak,
};

fn soak(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let roles = ["decoder", "gpu", "display", "scaler", "encoder"].map(|r| c.role(r));
    let [dec, gpu, disp, scaler, enc] = roles.each_ref().map(String::as_str);
    let duration = c.duration("duration")?;
    let frame = frame_period(c)?;
    let clip = c.duration("clip")?;
    let pool = c.count("pool", 2)?;
    let sizes = c.dims_list("sizes")?;
    let panel = c.dims("panel")?;
    let (every, record) = (c.duration("record-every")?, c.duration("record")?);
    if every <= record + frame {
        return Err(c.bad("record-every", "recordings must not overlap: it must exceed `record` by a frame"));
    }
    let (thumb_every, thumb_life) = (c.duration("thumbnail-every")?, c.duration("thumbnail-life")?);
    let wave = c.duration("wave")?;
    let (fill, amplitude) = (c.fraction("fill")?, c.fraction("wave-fill")?);
    let high = (fill + amplitude).min(0.95);
    let wave_steps = c.pressure_steps(fill, high)?;
    let churn = c.count("churn", 0)?;
    let g = &mut c.builder;
    let start = 10 * MS;
    let mut swap = swapchain(g, 0, panel, gpu, disp, "swap");
    let frames_per_clip = (clip / frame).max(1);
    let n = duration / frame;
    let recording = |ft: u64| ft >= every && (ft - every) % every < record;
    let mut frames: Vec<Shared> = Vec::new();
    let mut recorder_on = false;
    let mut clip_no = 0;
    for f in 0..n {
        let ft = start + f * frame;
        let before = ft - frame / 8;
        let rec = recording(ft);
        if rec != recorder_on {
            for b in swap.iter_mut() {
                if rec { g.join(before, b, scaler, Usage::empty()) } else { g.leave(before, b, scaler) }
            }
            for b in frames.iter_mut() {
                if rec { g.join(before, b, enc, Usage::VIDEO_ENCODE) } else { g.leave(before, b, enc) }
            }
            recorder_on = rec;
        }
        if f % frames_per_clip == 0 {
            for b in std::mem::take(&mut frames) {
                g.release(before, b);
            }
            let size = sizes[g.rng.random_range(0..sizes.len())];
            let mut devices = vec![(dec, Usage::VIDEO_DECODE), (gpu, Usage::TEXTURING)];
            if recorder_on {
                devices.push((enc, Usage::VIDEO_ENCODE));
            }
            frames = frame_pool(g, before, pool, size, &format!("clip{clip_no}"), &devices);
            clip_no += 1;
        }
        // The clip's frames were all decoded a frame ago at the latest: the new pool is
        // used from this frame; the old one's last DMA ended before `before`.
        let in_clip = f % frames_per_clip;
        let (b, s) = (nth(&frames, in_clip), nth(&swap, f));
        composite(g, ft, frame, b, s, [dec, gpu, disp]);
        if recorder_on {
            g.dma(ft + frame / 2 + frame / 8, s.map(scaler), frame / 5);
            g.dma(ft + frame / 2 + frame / 8, b.map(enc), frame / 5);
        }
    }
    let end = start + (n + 2) * frame;
    // Thumbnails, on their own clock.
    let mut t = start;
    let mut i = 0;
    while t + thumb_life < end {
        let usage = Usage::RENDERING | Usage::TEXTURING;
        let devices = [(scaler, Usage::empty()), (gpu, Usage::TEXTURING)];
        let th = g.shared(t, &image(512, 512, "XR24"), usage, &format!("thumb{i}"), &devices);
        g.dma(t, th.map(scaler), 2 * MS);
        g.dma(t + 2 * MS, th.map(gpu), MS);
        g.release(t + thumb_life, th);
        t += thumb_every;
        i += 1;
    }
    // Memory pressure in waves: up for half a period, down for the other half.
    let mut t = wave / 2;
    let mut up = true;
    while t < end {
        g.at(t, Op::OtherFill { fill: if up { high } else { fill } });
        g.at(t, Op::OtherChurn { steps: wave_steps });
        up = !up;
        t += wave / 2;
    }
    g.churn(0, end, churn);
    for b in frames.into_iter().chain(swap) {
        g.release(end + S / 10, b);
    }
    Ok(())
}
