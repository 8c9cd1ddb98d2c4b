//! `dmaplace solve`.

use anyhow::{Result, bail};
use clap::Args;
use dmaplace_core::PlanOn;
use dmaplace_core::{BufferDesc, Conflict, SolveError, solve};
use serde::Serialize;

use crate::out::{out, outln};
use crate::request::RequestArgs;
use crate::{Outcome, report};

#[derive(Args, Debug)]
pub struct SolveArgs {
    #[command(flatten)]
    request: RequestArgs,
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
    Plan { plan: PlanOn<'a> },
    Conflict { conflict: &'a Conflict },
}

/// The schema identifier of `dmaplace solve --json`.
pub const SCHEMA: &str = "dmaplace.solve/v1";

pub fn run(args: &SolveArgs) -> Result<Outcome> {
    let parsed = args.request.parse()?;
    let (p, desc) = (&parsed.platform, &parsed.desc);
    let requests = parsed.requests();
    let result = solve(p, desc, &requests);
    let devices = parsed
        .devices
        .iter()
        .map(|(n, h)| DeviceRequest { device: n, hints: h.iter_names().map(|(n, _)| n).collect() })
        .collect();
    let (outcome, result) = match &result {
        Ok(plan) => (Outcome::Ok, ResultReport::Plan { plan: plan.on(p) }),
        Err(SolveError::Conflict(c)) => (Outcome::Unsatisfiable, ResultReport::Conflict { conflict: c }),
        Err(SolveError::Invalid(e)) => bail!("{e}"),
    };
    if args.json {
        let doc =
            SolveReport { schema: SCHEMA, platform: &p.name, request: RequestReport { buffer: desc, devices }, result };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match result {
            ResultReport::Plan { plan } => out!("{}", report::plan(p, plan.plan())),
            ResultReport::Conflict { conflict } => out!("{}", report::conflict(conflict)),
        }
    }
    Ok(outcome)
}
