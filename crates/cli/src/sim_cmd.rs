//! `dmaplace sim`: replay a built-in scenario or a trace file on a simulated platform
//! under one or more policies, and report (text, JSON, SVG plots).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use dmaplace_core::Platform;
use dmaplace_eval::report::{self, Comparison};
use dmaplace_eval::run::{RunOptions, machine_for, replay, seed_of};
use dmaplace_eval::trace::Trace;
use dmaplace_eval::{Policy, plot, scenario};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::{Outcome, load};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// A built-in scenario (`dmaplace sim --list` shows them), or give --trace.
    scenario: Option<String>,
    /// Replay this trace file (docs/TRACE.md) instead of a scenario.
    #[arg(long, value_name = "FILE", conflicts_with = "scenario")]
    trace: Option<PathBuf>,
    /// Platform (built in, platforms/<name>.toml, a path, or refsoc-cam); default: the
    /// scenario's, or the trace's `platform` line.
    #[arg(long, short = 'p')]
    platform: Option<String>,
    /// A policy to run (repeat for several); default: all five.
    #[arg(long = "policy", value_name = "POLICY")]
    policies: Vec<String>,
    /// A scenario parameter or role, `name=value` (repeat).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Seed of the scenario and the machine's background load (a trace's `seed` line when
    /// replaying a trace and none is given).
    #[arg(long)]
    seed: Option<u64>,
    /// Print JSON (schema `dmaplace.sim/v1`).
    #[arg(long)]
    json: bool,
    /// Write SVG plots into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// Write the scenario's trace to this file.
    #[arg(long, value_name = "FILE")]
    write_trace: Option<PathBuf>,
    /// List the scenarios, their roles and parameters, and the policies.
    #[arg(long)]
    list: bool,
}

/// The seed when none is given.
const DEFAULT_SEED: u64 = 1;

#[derive(Serialize)]
struct SimJson<'a> {
    schema: &'static str,
    #[serde(flatten)]
    comparison: &'a Comparison,
    goals: Vec<report::Goal>,
    /// Wall-clock speed of this run (not deterministic).
    speed: Vec<Speed>,
}

/// Wall-clock speed of one replay: simulator events are the trace's events plus the
/// blocks the other users of memory allocated and freed.
#[derive(Serialize)]
struct Speed {
    policy: Policy,
    trace_events: u64,
    background_events: u64,
    seconds: f64,
    events_per_second: f64,
    trace_events_per_second: f64,
}

fn platform(name: &str) -> Result<Platform> {
    match dmaplace_eval::platforms::load(name) {
        Some(p) => Ok(p?),
        None => load::platform(name),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn list() -> Result<()> {
    let mut o = String::from("scenarios:\n");
    for s in scenario::all() {
        let _ = writeln!(o, "\n  {} (default platform {}): {}", s.name, s.platform, s.summary);
        for (role, what) in s.roles {
            let casts: Vec<String> = s
                .casts
                .iter()
                .filter_map(|c| c.roles.iter().find(|(r, _)| r == role).map(|(_, d)| format!("{}: {d}", c.platform)))
                .collect();
            let _ = writeln!(o, "    role {role:<10} {what} [{}]", casts.join(", "));
        }
        for p in s.params {
            let _ = writeln!(o, "    {:<16} = {:<28} {}", p.name, p.default, p.help);
        }
    }
    let _ = writeln!(o, "\n  every scenario also takes:");
    for p in scenario::COMMON {
        let _ = writeln!(o, "    {:<16} = {:<28} {}", p.name, p.default, p.help);
    }
    let _ = writeln!(o, "\npolicies: {}", Policy::ALL.map(|p| p.name()).join(", "));
    emit(&o)
}

fn params(args: &SimArgs) -> Result<Vec<(String, String)>> {
    args.params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--param {p:?}: expected NAME=VALUE"),
        })
        .collect()
}

fn policies(args: &SimArgs) -> Result<Vec<Policy>> {
    if args.policies.is_empty() {
        return Ok(Policy::ALL.to_vec());
    }
    let mut out: Vec<Policy> = Vec::new();
    for p in &args.policies {
        let p: Policy = p.parse().map_err(anyhow::Error::msg)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The trace, its platform and the name it goes by in reports.
fn input(args: &SimArgs, seed: u64) -> Result<(Trace, Platform, String)> {
    if let Some(path) = &args.trace {
        if !args.params.is_empty() {
            bail!("--param sets scenario parameters; a trace file has none");
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read trace {}", path.display()))?;
        let trace = Trace::parse(&path.display().to_string(), &text)?;
        let name = match (&args.platform, &trace.header.platform) {
            (Some(p), _) | (None, Some(p)) => p.clone(),
            (None, None) => bail!("{}: the trace names no platform; give --platform", path.display()),
        };
        let label = trace.meta("scenario").map_or_else(|| path.display().to_string(), str::to_owned);
        return Ok((trace, platform(&name)?, label));
    }
    let Some(name) = &args.scenario else {
        bail!("name a scenario (dmaplace sim --list) or give --trace FILE");
    };
    let info = scenario::find(name)?;
    let p = platform(args.platform.as_deref().unwrap_or(info.platform))?;
    let trace = scenario::generate(name, &p, &params(args)?, seed)?;
    Ok((trace, p, name.clone()))
}

fn bar(total: u64) -> ProgressBar {
    // Quiet when stdout is not a terminal (scripts, pipes, CI).
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:30}] {human_pos}/{human_len} events, {eta} left")
        .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

pub fn run(args: &SimArgs) -> Result<Outcome> {
    if args.list {
        list()?;
        return Ok(Outcome::Ok);
    }
    let seed = args.seed.unwrap_or(DEFAULT_SEED);
    let (trace, platform, label) = input(args, seed)?;
    let seed = if args.trace.is_some() { args.seed.or(trace.header.seed).unwrap_or(DEFAULT_SEED) } else { seed };
    if let Some(path) = &args.write_trace {
        std::fs::write(path, trace.to_text()).with_context(|| format!("cannot write trace {}", path.display()))?;
    }
    let policies = policies(args)?;
    let opts = RunOptions { seed: Some(seed), heatmap: args.plot.is_some(), ..RunOptions::default() };
    let mut runs = Vec::new();
    let mut speed = Vec::new();
    let events = trace.ops.len() as u64;
    for policy in &policies {
        let machine = machine_for(&trace, &platform, seed_of(&trace, &opts))?;
        let pb = bar(events);
        pb.set_prefix(policy.name());
        let start = Instant::now();
        let mut shown = false;
        let mut progress = |done: u64| {
            if !shown && start.elapsed() > Duration::from_secs(1) {
                pb.set_draw_target(ProgressDrawTarget::stderr());
                shown = true;
            }
            pb.set_position(done);
        };
        let metrics = replay(&trace, &platform, *policy, machine, &opts, &mut progress)?;
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        pb.finish_and_clear();
        // CAST: event counts, display values.
        #[allow(clippy::cast_precision_loss)]
        let (all, traced) = ((events + metrics.background_events) as f64, events as f64);
        speed.push(Speed {
            policy: *policy,
            trace_events: events,
            background_events: metrics.background_events,
            seconds,
            events_per_second: all / seconds,
            trace_events_per_second: traced / seconds,
        });
        runs.push(metrics);
    }
    let comparison = Comparison {
        scenario: label,
        platform: platform.name.clone(),
        seed,
        events,
        sim_time_ns: trace.duration_ns(),
        params: trace.header.meta.iter().filter(|(k, _)| k != "scenario").cloned().collect(),
        runs,
    };
    if let Some(dir) = &args.plot {
        write_plots(dir, &comparison)?;
    }
    let text = if args.json {
        let doc =
            SimJson { schema: "dmaplace.sim/v1", comparison: &comparison, goals: report::goals(&comparison), speed };
        serde_json::to_string_pretty(&doc)? + "\n"
    } else {
        let mut t = report::text(&comparison);
        t += "\nsimulator speed (wall clock, this machine; events = trace events + other users' block allocations and frees):\n";
        for s in &speed {
            t += &format!(
                "  {:<20} {} + {} events in {:.3} s: {:.0} events/s ({:.0} trace events/s)\n",
                s.policy.name(),
                s.trace_events,
                s.background_events,
                s.seconds,
                s.events_per_second,
                s.trace_events_per_second
            );
        }
        t
    };
    emit(&text)?;
    Ok(Outcome::Ok)
}

fn write_plots(dir: &Path, c: &Comparison) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, svg: String| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("cannot write {}", path.display()))
    };
    write("failures-cma.svg", plot::failures_and_cma(c)?)?;
    write("over-time.svg", plot::over_time(c)?)?;
    write("iotlb.svg", plot::iotlb(c)?)?;
    for r in &c.runs {
        if let Some(svg) = plot::heatmap(c, r.policy)? {
            write(&format!("heatmap-{}.svg", r.policy.name()), svg)?;
        }
    }
    Ok(())
}
