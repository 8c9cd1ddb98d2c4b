//! The simulator's speed: trace events replayed per second, per policy, on a one-minute
//! video-playback trace (refsoc, seed 1). The machine is built outside the timed part;
//! `ItemsCount` makes divan report events per second.

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

static INPUT: LazyLock<(Platform, Trace)> = LazyLock::new(|| {
    let platform = builtin::load("refsoc").expect("built in").expect("parses");
    let params = [("clips", "2"), ("clip", "30s")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    let trace = scenario::generate("video-playback", &platform, &params, 1).expect("scenario");
    (platform, trace)
});

#[divan::bench(args = Policy::ALL, sample_count = 10)]
fn video_playback(bencher: Bencher, policy: Policy) {
    let (platform, trace) = &*INPUT;
    let opts = RunOptions::default();
    bencher
        .counter(ItemsCount::new(trace.ops.len()))
        .with_inputs(|| machine_for(trace, platform, 1).expect("machine"))
        .bench_values(|m| replay(trace, platform, policy, m, &opts, &mut |_| {}).expect("run"));
}
