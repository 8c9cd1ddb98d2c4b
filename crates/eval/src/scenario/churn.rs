//! Android-like app churn under memory pressure: the foreground app changes every few
//! seconds, each new foreground window gets a fresh swapchain, the compositor either
//! composites it with the GPU or puts it on an overlay plane, and cached apps press on
//! memory until the low-memory killer ends one.

use dmaplace_core::Usage;
use rand::RngExt;

use super::builder::{MS, Shared, image, nth};
use super::video::{frame_period, swapchain};
use super::{Cast, Ctx, ParamSpec, ScenarioError, ScenarioInfo};
use crate::trace::Op;

pub(super) const APP_CHURN: ScenarioInfo = ScenarioInfo {
    name: "app-churn",
    summary: "foreground apps come and go, each with a fresh swapchain; some windows go to an overlay plane; cached apps fill memory",
    platform: "rpi4",
    roles: &[
        ("gpu", "apps render (RENDERING), the compositor samples their windows (TEXTURING)"),
        ("display", "scans out the composition, or an app window promoted to an overlay plane (SCANOUT)"),
    ],
    casts: &[
        Cast { platform: "rpi4", roles: &[("gpu", "v3d"), ("display", "hvs")] },
        Cast { platform: "refsoc", roles: &[("gpu", "gpu"), ("display", "dpu")] },
        Cast { platform: "kayla", roles: &[("gpu", "gr3d"), ("display", "dc")] },
        Cast { platform: "rk3399", roles: &[("gpu", "gpu"), ("display", "vop")] },
    ],
    params: &[
        ParamSpec { name: "switches", default: "60", help: "foreground changes" },
        ParamSpec { name: "period", default: "10s", help: "time each app stays in the foreground" },
        ParamSpec { name: "fps", default: "60", help: "frames per second of the foreground app" },
        ParamSpec {
            name: "overlay",
            default: "0.5",
            help: "chance that the compositor puts the foreground window on an overlay plane",
        },
        ParamSpec { name: "new", default: "0.6", help: "chance that a switch starts an app that was not cached" },
        ParamSpec { name: "cached", default: "6", help: "cached apps the low-memory killer allows" },
        ParamSpec {
            name: "app-fill",
            default: "0.05",
            help: "share of memory each cached app holds (anonymous memory, its GPU heap)",
        },
        ParamSpec {
            name: "sizes",
            default: "1920x1080,1280x720,720x1280,1920x1080",
            help: "window sizes, picked at random (XR24)",
        },
        ParamSpec {
            name: "panel",
            default: "1920x1080",
            help: "display resolution (the composition target, 3 XR24 buffers)",
        },
    ],
    generate: app_churn,
};

fn app_churn(c: &mut Ctx<'_>) -> Result<(), ScenarioError> {
    let (gpu, disp) = (c.role("gpu"), c.role("display"));
    let (gpu, disp) = (gpu.as_str(), disp.as_str());
    let switches = c.count("switches", 1)?;
    let period = c.duration("period")?;
    let frame = frame_period(c)?;
    if period < 10 * frame {
        return Err(c.bad("period", "expected at least 10 frames"));
    }
    let (overlay, new, app_fill) = (c.fraction("overlay")?, c.fraction("new")?, c.fraction("app-fill")?);
    let max_cached = c.count("cached", 0)?;
    let sizes = c.dims_list("sizes")?;
    let panel = c.dims("panel")?;
    let (base, churn) = (c.fraction("fill")?, c.count("churn", 0)?);
    let fill_at = |cached: u64| {
        // CAST: a count of apps, tiny.
        #[allow(clippy::cast_precision_loss)]
        let f = base + app_fill * cached as f64;
        f.min(0.95)
    };
    // Steps to move the other users between every pair of cached counts, computed before
    // the builder is borrowed.
    let steps: Vec<u32> =
        (0..=max_cached + 1).map(|n| c.pressure_steps(fill_at(n), fill_at(n + 1))).collect::<Result<_, _>>()?;
    let g = &mut c.builder;
    let target = swapchain(g, 0, panel, gpu, disp, "target");
    let wallpaper_usage = Usage::TEXTURING | Usage::RENDERING;
    let wallpaper =
        g.shared(0, &image(panel.0, panel.1, "XR24"), wallpaper_usage, "wallpaper", &[(gpu, Usage::TEXTURING)]);
    let window_usage = Usage::SCANOUT | Usage::RENDERING | Usage::TEXTURING;
    let (app, comp) = (Usage::RENDERING, Usage::TEXTURING);
    let mut cached = 0u64;
    let mut k = 0usize;
    for s in 0..switches {
        let tl = 10 * MS + s * period;
        if g.rng.random_bool(new) {
            g.at(tl, Op::OtherFill { fill: fill_at(cached + 1) });
            g.at(tl, Op::OtherChurn { steps: *nth(&steps, cached) });
            cached += 1;
            if cached > max_cached {
                // The low-memory killer ends the least recently used cached app.
                cached -= 1;
                g.at(tl + 5 * MS, Op::OtherFill { fill: fill_at(cached) });
                g.at(tl + 5 * MS, Op::OtherChurn { steps: *nth(&steps, cached) });
            }
        }
        let size = sizes[g.rng.random_range(0..sizes.len())];
        let devices = [(gpu, app), (gpu, comp)];
        let window: Vec<Shared> = (0..3)
            .map(|i| g.shared(tl, &image(size.0, size.1, "XR24"), window_usage, &format!("app{s}.{i}"), &devices))
            .collect();
        let mut window = window;
        let on_overlay = g.rng.random_bool(overlay);
        let first = tl + 50 * MS;
        if on_overlay {
            for b in window.iter_mut() {
                g.join(first, b, disp, Usage::SCANOUT);
            }
        }
        let next = tl + period;
        let mut j = 0usize;
        let mut ft = first + frame / 4;
        while ft + 3 * frame < next {
            let b = &window[j % 3];
            g.dma(ft, b.map_with(gpu, app), frame / 2);
            if on_overlay {
                g.dma(ft + frame / 2, b.map(disp), frame);
            } else {
                let t = &target[k % 3];
                g.dma(ft + frame / 2, b.map_with(gpu, comp), frame / 8);
                g.dma(ft + frame / 2, t.map(gpu), frame / 8);
                g.dma(ft + frame / 2 + frame / 8, t.map(disp), frame);
                k += 1;
            }
            g.dma(ft + frame / 2, wallpaper.map(gpu), frame / 8);
            j += 1;
            ft += frame;
        }
        for b in window {
            g.release(next - frame, b);
        }
    }
    let end = 10 * MS + switches * period;
    g.churn(0, end, churn);
    for b in target.into_iter().chain([wallpaper]) {
        g.release(end + 2 * frame, b);
    }
    Ok(())
}
