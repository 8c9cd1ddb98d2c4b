//! Any request on a shipped platform is solved or explained; a plan admits its own
//! contiguous first-fit backing only if every device accepts it.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use dmaplace_core::{BufferDesc, ImageDesc, Platform, Request, Size, SolveError, Usage, builtin, solve};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    platform: u8,
    devices: Vec<(u8, u16)>,
    size: Option<u64>,
    width: u16,
    height: u16,
    format: u8,
}

fn platforms() -> &'static [Platform] {
    static ALL: OnceLock<Vec<Platform>> = OnceLock::new();
    ALL.get_or_init(|| builtin::names().map(|n| builtin::load(n).unwrap().unwrap()).collect())
}

fuzz_target!(|input: Input| {
    let all = platforms();
    let p = &all[usize::from(input.platform) % all.len()];
    let requests: Vec<Request<'_>> = input
        .devices
        .iter()
        .take(8)
        .map(|(d, h)| Request { device: &p.devices[usize::from(*d) % p.devices.len()], hints: Usage::from_bits_truncate(u32::from(*h)) })
        .collect();
    let formats = dmaplace_core::layout::FORMATS;
    let desc = match input.size {
        Some(s) => BufferDesc::Size(Size::new(s)),
        None => BufferDesc::Image(ImageDesc {
            width: input.width.into(),
            height: input.height.into(),
            format: formats[usize::from(input.format) % formats.len()].fourcc,
            modifiers: vec![],
        }),
    };
    match solve(p, &desc, &requests) {
        Ok(plan) => {
            assert!(plan.size.bytes() > 0);
            assert!(!plan.placement.is_empty());
            // A plan means a placement exists: its witness backing satisfies every device.
            let w = plan.witness(p).expect("every plan has a backing");
            dmaplace_core::verify(&plan, &plan.devices, &w).unwrap();
            assert!(plan.admits(&w));
            if let Some(r) = plan.placement.first_fit(plan.size, plan.requirements.alignment.value) {
                let b = dmaplace_core::Backing { segments: vec![r], cache_mode: plan.cache_mode.value, protected: plan.requirements.protected.value };
                if plan.admits(&b) {
                    dmaplace_core::verify(&plan, &plan.devices, &b).unwrap();
                }
            }
        }
        Err(SolveError::Conflict(c)) => {
            assert!(!c.devices.is_empty() && c.devices.len() <= requests.len());
            assert!(!c.message.is_empty());
        }
        Err(SolveError::Invalid(e)) => {
            let _ = e.to_string();
        }
    }
});
