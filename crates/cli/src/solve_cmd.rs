//! `dmaplace solve`.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use dmaplace_core::layout::{parse_fourcc, parse_modifier};
use dmaplace_core::{BufferDesc, Conflict, ImageDesc, Plan, Platform, Request, Size, SolveError, Usage, solve};
use serde::Serialize;

use crate::{Outcome, load, report};

#[derive(Args, Debug)]
pub struct SolveArgs {
    /// Platform name (built in, or platforms/<name>.toml) or path to a TOML file.
    #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
    platform: String,
    /// A device and its usage hints: `dss:scanout` or `sgx:rendering,texturing`. Repeat.
    #[arg(long = "device", short = 'd', required = true)]
    devices: Vec<String>,
    /// Buffer size for a raw buffer: `8MiB`, `4096`, `0x1000`.
    #[arg(long, conflicts_with_all = ["image", "format", "modifier"], required_unless_present = "image")]
    size: Option<String>,
    /// Image dimensions, `WIDTHxHEIGHT`.
    #[arg(long, requires = "format")]
    image: Option<String>,
    /// DRM fourcc of the image: XR24, NV12, P010, ...
    #[arg(long, requires = "image")]
    format: Option<String>,
    /// Acceptable modifier (name or number); repeat. Default: any.
    #[arg(long, requires = "image")]
    modifier: Vec<String>,
    /// Emit JSON (schema: docs/JSON.md).
    #[arg(long)]
    json: bool,
}

/// The JSON document `dmaplace solve --json` prints (docs/JSON.md).
#[derive(Serialize)]
pub struct SolveReport<'a> {
    schema: &'static str,
    platform: &'a str,
    request: RequestReport<'a>,
    #[serde(flatten)]
    result: ResultReport<'a>,
}

#[derive(Serialize)]
struct RequestReport<'a> {
    buffer: &'a BufferDesc,
    devices: Vec<DeviceRequest<'a>>,
}

#[derive(Serialize)]
struct DeviceRequest<'a> {
    device: &'a str,
    hints: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum ResultReport<'a> {
    Plan { plan: &'a Plan },
    Conflict { conflict: &'a Conflict },
}

/// The schema identifier of `dmaplace solve --json`.
pub const SCHEMA: &str = "dmaplace.solve/v1";

/// Parses `dev:hint,hint`.
pub fn parse_device_spec(p: &Platform, spec: &str) -> Result<(String, Usage)> {
    let (name, hints) = spec.split_once(':').unwrap_or((spec, ""));
    p.require_device(name)?;
    let hints = Usage::parse_list(hints).map_err(|e| anyhow!("--device {spec}: {e}"))?;
    Ok((name.to_owned(), hints))
}

fn parse_desc(args: &SolveArgs, p: &Platform) -> Result<BufferDesc> {
    if let Some(size) = &args.size {
        let size: Size = size.parse().with_context(|| "--size")?;
        return Ok(BufferDesc::Size(size));
    }
    let image = args.image.as_deref().ok_or_else(|| anyhow!("give --size or --image"))?;
    let (w, h) = image
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow!("--image {image:?}: expected WIDTHxHEIGHT, e.g. 1920x1080"))?;
    let dim = |t: &str, what: &str| {
        t.trim().parse::<u32>().map_err(|_| anyhow!("--image {image:?}: {what} {t:?} is not a number"))
    };
    let format = args.format.as_deref().ok_or_else(|| anyhow!("--image needs --format"))?;
    let format = parse_fourcc(format).map_err(|e| anyhow!("--format: {e}"))?;
    let modifiers = args
        .modifier
        .iter()
        .map(|m| parse_modifier(m, &p.modifiers).map_err(|e| anyhow!("--modifier: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(BufferDesc::Image(ImageDesc { width: dim(w, "width")?, height: dim(h, "height")?, format, modifiers }))
}

pub fn run(args: &SolveArgs) -> Result<Outcome> {
    let p = load::platform(&args.platform)?;
    let specs = args.devices.iter().map(|d| parse_device_spec(&p, d)).collect::<Result<Vec<_>>>()?;
    let desc = parse_desc(args, &p)?;
    let requests: Vec<Request<'_>> = specs
        .iter()
        .map(|(name, hints)| Request { device: p.device(name).expect("checked by parse_device_spec"), hints: *hints })
        .collect();
    let result = solve(&p, &desc, &requests);
    let devices = specs
        .iter()
        .map(|(n, h)| DeviceRequest { device: n, hints: h.iter_names().map(|(n, _)| n).collect() })
        .collect();
    let (outcome, result) = match &result {
        Ok(plan) => (Outcome::Ok, ResultReport::Plan { plan }),
        Err(SolveError::Conflict(c)) => (Outcome::Unsatisfiable, ResultReport::Conflict { conflict: c }),
        Err(SolveError::Invalid(e)) => bail!("{e}"),
    };
    if args.json {
        let doc = SolveReport {
            schema: SCHEMA,
            platform: &p.name,
            request: RequestReport { buffer: &desc, devices },
            result,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match result {
            ResultReport::Plan { plan } => print!("{}", report::plan(&p, plan)),
            ResultReport::Conflict { conflict } => print!("{}", report::conflict(conflict)),
        }
    }
    Ok(outcome)
}
