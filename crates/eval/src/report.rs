//! The comparison of policies on one trace: a plain-text table, the goals
//! measured, and the same as JSON (`serde`).

use std::fmt::Write as _;

use serde::Serialize;

use crate::metrics::{Reason, RunMetrics};
use crate::policy::Policy;

/// Every policy's run of one trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The scenario's name, or the trace file's.
    pub scenario: String,
    /// The platform.
    pub platform: String,
    /// The seed.
    pub seed: u64,
    /// Events in the trace.
    pub events: u64,
    /// Simulated time, ns.
    pub sim_time_ns: u64,
    /// The scenario's parameters, from the trace header.
    pub params: Vec<(String, String)>,
    /// One run per policy, in the order asked.
    pub runs: Vec<RunMetrics>,
}

/// One of the goals, measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Goal {
    /// What is compared.
    pub goal: String,
    /// `deferred`'s value.
    pub deferred: f64,
    /// The bound it must not exceed (from the baseline's value).
    pub bound: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// Whether the goal holds (`None` when it does not apply: nothing to compare).
    pub met: Option<bool>,
    /// A sentence with the numbers.
    pub text: String,
}

/// `1.5 GiB`, `120.0 MiB`, `512 KiB`, `0 B`.
pub fn bytes(n: u64) -> String {
    // CAST: a display value.
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    match n {
        0 => "0 B".into(),
        n if n >= 1 << 30 => format!("{:.1} GiB", f / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", f / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.0} KiB", f / 1024.0),
        n => format!("{n} B"),
    }
}

/// `6 min 30 s`, `2 h 0 min`, `850 ms`.
pub fn duration(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{} ms", ns / 1_000_000),
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn run_of(c: &Comparison, p: Policy) -> Option<&RunMetrics> {
    c.runs.iter().find(|r| r.policy == p)
}

/// Bound check `value <= baseline * factor`; "n/a" when both are zero and `na_if_zero`.
fn goal(name: String, value: f64, baseline: f64, factor: f64, unit: &dyn Fn(f64) -> String, na_if_zero: bool) -> Goal {
    let bound = baseline * factor;
    let met = if na_if_zero && value == 0.0 && baseline == 0.0 { None } else { Some(value <= bound) };
    let verdict = match met {
        None => "n/a (both zero)".to_owned(),
        Some(true) => "met".to_owned(),
        Some(false) if bound > 0.0 => format!("NOT met: {:.2}x the bound", value / bound),
        Some(false) => "NOT met: the bound is 0".to_owned(),
    };
    let text = format!("{name}: {} vs bound {} (baseline {}): {verdict}", unit(value), unit(bound), unit(baseline));
    Goal { goal: name, deferred: value, bound, baseline, met, text }
}

/// The goals, for the policies present: contiguous failures at most a tenth of
/// `eager-system`'s and `hint-heap`'s; CMA peak at most half of `eager-contiguous`'s;
/// IOMMU entries per MiB within 1.1x of ideal for every device behind an IOMMU.
pub fn goals(c: &Comparison) -> Vec<Goal> {
    let Some(d) = run_of(c, Policy::Deferred) else { return Vec::new() };
    let count = |v: f64| if v == v.trunc() { format!("{v:.0}") } else { format!("{v:.1}") };
    // CAST: report values.
    #[allow(clippy::cast_precision_loss)]
    let f = |n: u64| n as f64;
    let mut out = Vec::new();
    for base in [Policy::EagerSystem, Policy::HintHeap] {
        if let Some(b) = run_of(c, base) {
            let name = format!("contiguous failures <= 1/10 of {base}");
            out.push(goal(name, f(d.contiguous_failures), f(b.contiguous_failures), 0.1, &count, false));
        }
    }
    if let Some(b) = run_of(c, Policy::EagerContiguous) {
        // CAST: report values.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let mib = |v: f64| bytes(v as u64);
        out.push(goal(
            "CMA peak <= 1/2 of eager-contiguous".into(),
            f(d.cma_peak_bytes),
            f(b.cma_peak_bytes),
            0.5,
            &mib,
            true,
        ));
    }
    for dev in d.devices.iter().filter(|x| x.ideal_ptes > 0) {
        let ratio = dev.ratio_to_ideal().unwrap_or(0.0);
        let name = format!("IOMMU entries/MiB of `{}` within 1.1x of ideal", dev.device);
        let per_mib = |v: f64| format!("{v:.3}/MiB");
        let mut g = goal(name, dev.ptes_per_mib(), dev.ideal_per_mib(), 1.1, &per_mib, false);
        let _ = write!(g.text, " (ratio {ratio:.3})");
        out.push(g);
    }
    out
}

fn reasons(r: &RunMetrics) -> String {
    if r.failures.is_empty() {
        return "none".into();
    }
    r.failures.iter().map(|(k, v)| format!("{} {v}", Reason::name(*k))).collect::<Vec<_>>().join(", ")
}

/// The plain-text report.
pub fn text(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} on {}, seed {}: {} events, {} simulated",
        c.scenario,
        c.platform,
        c.seed,
        c.events,
        duration(c.sim_time_ns)
    );
    if !c.params.is_empty() {
        let p: Vec<String> = c.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "  {}", p.join(" "));
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<20} {:>8} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6} {:>10}",
        "policy",
        "failures",
        "contig",
        "skipped",
        "moves",
        "copied",
        "CMA peak",
        "contig pk",
        "borrowers",
        "frag",
        "zeroed"
    );
    for r in &c.runs {
        let _ = writeln!(
            o,
            "{:<20} {:>8} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6.3} {:>10}",
            r.policy.name(),
            r.total_failures(),
            r.contiguous_failures,
            r.skipped,
            r.migrations,
            bytes(r.migrated_bytes),
            bytes(r.cma_peak_bytes),
            bytes(r.contiguous_peak_bytes),
            bytes(r.cma_borrowers_migrated_bytes),
            r.frag_mean,
            bytes(r.zeroing.on_path_bytes),
        );
    }
    let _ = writeln!(o, "\nfailures by reason:");
    for r in &c.runs {
        let extra = if r.cache_mode_mismatches > 0 {
            format!("; cache-mode mismatches (not failures) {}", r.cache_mode_mismatches)
        } else {
            String::new()
        };
        let waits = if r.waits > 0 { format!("; maps that waited for a move {}", r.waits) } else { String::new() };
        let _ = writeln!(o, "  {:<20} {}{extra}{waits}", r.policy.name(), reasons(r));
    }
    device_table(c, &mut o);
    let goals = goals(c);
    if !goals.is_empty() {
        let _ = writeln!(o, "\ngoals (deferred):");
        for g in goals {
            let _ = writeln!(o, "  {}", g.text);
        }
    }
    o.lines().map(str::trim_end).fold(String::new(), |acc, l| acc + l + "\n")
}

fn device_table(c: &Comparison, o: &mut String) {
    let mut names: Vec<&str> = c.runs.iter().flat_map(|r| r.devices.iter()).map(|d| d.device.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nper device: IOMMU entries/MiB (ideal), IOTLB misses/MiB; `-` no IOMMU, blank: never mapped");
    let _ = write!(o, "  {:<10}", "device");
    for r in &c.runs {
        let _ = write!(o, " {:>24}", r.policy.name());
    }
    let _ = writeln!(o);
    for name in names {
        let _ = write!(o, "  {name:<10}");
        for r in &c.runs {
            let cell = match r.device(name) {
                None => String::new(),
                Some(d) if d.iommu.is_none() => "-".into(),
                Some(d) => format!("{:.2} ({:.2}), {:.2}", d.ptes_per_mib(), d.ideal_per_mib(), d.misses_per_mib()),
            };
            let _ = write!(o, " {cell:>24}");
        }
        let _ = writeln!(o);
    }
}
