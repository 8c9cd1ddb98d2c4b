//! Built-in scenarios: deterministic for a seed, well-formed (they round-trip through the
//! trace format), runnable under every policy, and refusing bad parameters by name.

use dmaplace_core::{Platform, builtin};
use dmaplace_eval::scenario::{self, ScenarioError};
use dmaplace_eval::trace::{Op, Trace};
use dmaplace_eval::{Policy, RunOptions, platforms, run};

/// Each scenario, shortened so a test runs it in well under a second.
const SHORT: &[(&str, &[(&str, &str)])] = &[
    ("video-playback", &[("clips", "2"), ("clip", "2s")]),
    ("camera-record", &[("sessions", "1"), ("session", "6s"), ("record-at", "1s"), ("record", "3s")]),
    ("screen-record", &[("duration", "8s"), ("recordings", "2"), ("first", "1s"), ("every", "3s"), ("record", "1s")]),
    ("app-churn", &[("switches", "4"), ("period", "1s")]),
    ("x86-capture", &[("sessions", "2"), ("session", "2s"), ("fill", "0.3"), ("prefill", "0.5")]),
    (
        "soak",
        &[
            ("duration", "20s"),
            ("clip", "6s"),
            ("record-every", "8s"),
            ("record", "3s"),
            ("thumbnail-every", "1s"),
            ("thumbnail-life", "3s"),
            ("wave", "8s"),
        ],
    ),
];

fn platform(name: &str) -> Platform {
    match platforms::load(name) {
        Some(p) => p.unwrap(),
        None => builtin::load(name).unwrap().unwrap(),
    }
}

fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn short(name: &str, seed: u64) -> (Platform, Trace) {
    let info = scenario::find(name).unwrap();
    let p = platform(info.platform);
    let list = SHORT.iter().find(|(n, _)| *n == name).unwrap().1;
    let trace = scenario::generate(name, &p, &params(list), seed).unwrap();
    (p, trace)
}

#[test]
fn every_scenario_is_listed_and_tested() {
    let names: Vec<&str> = scenario::all().iter().map(|s| s.name).collect();
    let tested: Vec<&str> = SHORT.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, tested);
}

#[test]
fn scenarios_are_deterministic_and_round_trip() {
    for (name, _) in SHORT {
        let (_, a) = short(name, 7);
        let (_, b) = short(name, 7);
        assert_eq!(a, b, "{name}");
        assert!(a.ops.iter().any(|op| matches!(op, Op::Map { .. })), "{name} maps nothing");
        assert_eq!(a.meta("scenario"), Some(*name));
        assert_eq!(a.header.seed, Some(7));
        let back = Trace::parse(name, &a.to_text()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, a, "{name}");
    }
}

#[test]
fn random_choices_follow_the_seed() {
    // app-churn picks window sizes, overlays and app starts at random.
    assert_ne!(short("app-churn", 1).1.ops, short("app-churn", 2).1.ops);
    // video-playback has no random choice: only the header's seed (the machine's
    // background) differs.
    let (a, b) = (short("video-playback", 1).1, short("video-playback", 2).1);
    assert_eq!(a.ops, b.ops);
    assert_ne!(a.header.seed, b.header.seed);
}

#[test]
fn every_scenario_runs_under_every_policy_the_same_way_twice() {
    for (name, _) in SHORT {
        let (p, trace) = short(name, 3);
        for policy in Policy::ALL {
            let once = run(&trace, &p, policy, &RunOptions::default(), &mut |_| {}).unwrap();
            assert_eq!(once.events, trace.ops.len() as u64);
            if policy == Policy::Deferred {
                let again = run(&trace, &p, policy, &RunOptions::default(), &mut |_| {}).unwrap();
                assert_eq!(once, again, "{name} under {policy}");
            }
        }
    }
}

#[test]
fn bad_parameters_are_named() {
    let refsoc = platform("refsoc");
    let err = |name: &str, p: &Platform, list: &[(&str, &str)]| {
        scenario::generate(name, p, &params(list), 1).unwrap_err().to_string()
    };
    assert_eq!(
        scenario::generate("juggling", &refsoc, &[], 1).unwrap_err(),
        ScenarioError::Unknown(
            "juggling".into(),
            "video-playback, camera-record, screen-record, app-churn, x86-capture, soak".into()
        )
    );
    let e = err("video-playback", &refsoc, &[("clipz", "3")]);
    assert!(e.starts_with("scenario `video-playback` has no parameter `clipz`; parameters: clips, clip, fps"), "{e}");
    let e = err("video-playback", &refsoc, &[("clip", "soon")]);
    assert!(e.starts_with("scenario `video-playback`: parameter `clip` = `soon`: a duration is"), "{e}");
    let e = err("video-playback", &refsoc, &[("fps", "1000")]);
    assert_eq!(e, "scenario `video-playback`: parameter `fps` = `1000`: expected 1 to 240");
    let e = err("video-playback", &refsoc, &[("sizes", "1920x1080,big")]);
    assert!(e.contains("parameter `sizes` = `1920x1080,big`: expected WIDTHxHEIGHT"), "{e}");
    let e = err("video-playback", &refsoc, &[("fill", "1.5")]);
    assert_eq!(e, "scenario `video-playback`: parameter `fill` = `1.5`: expected a number from 0 to 1");
    let e = err("video-playback", &refsoc, &[("decoder", "npu")]);
    assert!(e.starts_with("scenario `video-playback`: role `decoder` = `npu` is not a device of `refsoc`"), "{e}");
    let e = err("screen-record", &refsoc, &[("every", "10s"), ("record", "20s")]);
    assert!(e.contains("recordings must not overlap"), "{e}");
    let rpi4 = platform("rpi4");
    let e = err("video-playback", &rpi4, &[]);
    assert!(
        e.starts_with("scenario `video-playback` needs a device for role `decoder` on platform `rpi4`; give one with --param decoder=DEVICE (devices: hvs, v3d, unicam)"),
        "{e}"
    );
    // A role given on the command line casts a platform without a default cast.
    let cast = [("decoder", "unicam"), ("gpu", "v3d"), ("display", "hvs"), ("clips", "1"), ("clip", "1s")];
    assert!(scenario::generate("video-playback", &rpi4, &params(&cast), 1).is_ok());
}
