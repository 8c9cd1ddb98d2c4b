//! The simulator's speed: events replayed per second, per policy, on ten minutes of
//! video playback (refsoc, seed 1, two clips of 300 s: about 210,000 trace events).
//!
//! An event is a trace event or a block the other users of memory allocate or free (their
//! churn, 300 steps per simulated second by default); `quiet` is the same trace with no
//! churn, so every event is a trace event. The machine is built outside the timed part,
//! and the final invariant check (which costs in proportion to memory, not to events) is
//! off. `ItemsCount` makes divan report events per second.

use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::ItemsCount;
use dmaplace_core::{Platform, builtin};
use dmaplace_eval::run::{RunOptions, machine_for, replay};
use dmaplace_eval::trace::Trace;
use dmaplace_eval::{Policy, scenario};

fn main() {
    divan::main();
}

struct Input {
    platform: Platform,
    trace: Trace,
    /// Simulator events per policy: the trace's plus the other users' blocks.
    events: Vec<(Policy, u64)>,
}

fn opts() -> RunOptions {
    RunOptions { check: false, ..RunOptions::default() }
}

fn input(churn: &str) -> Input {
    let platform = builtin::load("refsoc").expect("built in").expect("parses");
    let params = [("clips", "2"), ("clip", "300s"), ("churn", churn)].map(|(k, v)| (k.to_owned(), v.to_owned()));
    let trace = scenario::generate("video-playback", &platform, &params, 1).expect("scenario");
    let events = Policy::ALL
        .map(|p| {
            let m = machine_for(&trace, &platform, 1).expect("machine");
            let r = replay(&trace, &platform, p, m, &opts(), &mut |_| {}).expect("run");
            (p, r.events + r.background_events)
        })
        .to_vec();
    Input { platform, trace, events }
}

static CHURN: LazyLock<Input> = LazyLock::new(|| input("300"));
static QUIET: LazyLock<Input> = LazyLock::new(|| input("0"));

fn bench(bencher: Bencher, input: &Input, policy: Policy) {
    let events = input.events.iter().find(|(p, _)| *p == policy).map_or(0, |(_, n)| *n);
    bencher
        .counter(ItemsCount::new(events))
        .with_inputs(|| machine_for(&input.trace, &input.platform, 1).expect("machine"))
        .bench_values(|m| replay(&input.trace, &input.platform, policy, m, &opts(), &mut |_| {}).expect("run"));
}

#[divan::bench(args = Policy::ALL, sample_count = 10)]
fn video_playback(bencher: Bencher, policy: Policy) {
    bench(bencher, &CHURN, policy);
}

#[divan::bench(args = Policy::ALL, sample_count = 10)]
fn video_playback_quiet(bencher: Bencher, policy: Policy) {
    bench(bencher, &QUIET, policy);
}
