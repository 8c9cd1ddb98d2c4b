//! `dmaplace demo`: a walkthrough of the solver on one platform.

use anyhow::Result;
use clap::Args;
use dmaplace_core::{BufferDesc, DeviceClass, ImageDesc, Request, SolveError, Usage, solve};

use crate::{Outcome, load, report};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Platform name or path.
    #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
    platform: String,
}

fn hint_for(class: DeviceClass) -> Usage {
    match class {
        DeviceClass::Display => Usage::SCANOUT,
        DeviceClass::Gpu => Usage::RENDERING | Usage::TEXTURING,
        DeviceClass::Camera => Usage::CAMERA_WRITE,
        DeviceClass::Video => Usage::VIDEO_ENCODE,
        _ => Usage::empty(),
    }
}

/// Adds the platform's devices one by one and shows how the plan tightens, until a
/// conflict appears.
pub fn run(args: &DemoArgs) -> Result<Outcome> {
    let p = load::platform(&args.platform)?;
    println!("dmaplace demo on {}: {}\n", p.name, p.description);
    let desc = BufferDesc::Image(ImageDesc { width: 1920, height: 1080, format: drm_fourcc::DrmFourcc::Xrgb8888, modifiers: vec![] });
    let mut order: Vec<_> = p.devices.iter().collect();
    order.sort_by_key(|d| d.class);
    let mut requests: Vec<Request<'_>> = Vec::new();
    for d in order {
        requests.push(Request { device: d, hints: hint_for(d.class) });
        println!("== {} attaches", d.label());
        match solve(&p, &desc, &requests) {
            Ok(plan) => println!("{}", report::plan(&p, &plan)),
            Err(SolveError::Conflict(c)) => {
                println!("{}", report::conflict(&c));
                requests.pop();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Outcome::Ok)
}
