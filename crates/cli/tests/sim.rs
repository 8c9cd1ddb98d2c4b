//! `dmaplace sim` end to end: scenarios, trace files, JSON, plots, errors and exit codes.

use std::path::PathBuf;

use assert_cmd::Command;

fn dmaplace(args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("dmaplace").unwrap().args(args).output().unwrap();
    let code = out.status.code().expect("exited");
    (code, String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sim-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SHORT: &[&str] = &["sim", "video-playback", "--param", "clips=1", "--param", "clip=2s"];

#[test]
fn lists_scenarios_roles_parameters_and_policies() {
    let (code, out, _) = dmaplace(&["sim", "--list"]);
    assert_eq!(code, 0);
    for name in ["video-playback", "camera-record", "screen-record", "app-churn", "x86-capture", "soak", "role decoder"]
    {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    assert!(
        out.contains("policies: deferred, deferred-no-migrate, eager-system, eager-contiguous, hint-heap"),
        "{out}"
    );
}

#[test]
fn text_report_prints_the_seed_the_table_and_the_speed() {
    let args = [SHORT, &["--seed", "5", "--policy", "deferred", "--policy", "eager-system"]].concat();
    let (code, out, err) = dmaplace(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("video-playback on refsoc, seed 5: "), "{out}");
    assert!(out.contains("\ndeferred ") && out.contains("\neager-system "), "{out}");
    assert!(!out.contains("\nhint-heap "), "{out}");
    assert!(out.contains("goals (deferred):"), "{out}");
    assert!(out.contains("events/s"), "{out}");
    // Not a terminal: no progress bar.
    assert!(err.is_empty(), "{err}");
}

#[test]
fn json_and_a_written_trace_replay_to_the_same_numbers() {
    let dir = scratch("replay");
    let trace = dir.join("short.trace");
    let args = [SHORT, &["--json", "--policy", "deferred", "--write-trace", trace.to_str().unwrap()]].concat();
    let (code, out, err) = dmaplace(&args);
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["schema"], "dmaplace.sim/v1");
    assert_eq!(first["seed"], 1);
    assert_eq!(first["runs"][0]["policy"], "deferred");
    assert!(first["goals"].is_array());
    let (code, out, err) = dmaplace(&["sim", "--trace", trace.to_str().unwrap(), "--json", "--policy", "deferred"]);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["runs"], first["runs"]);
    assert_eq!(again["scenario"], "video-playback");
}

#[test]
fn plots_are_written() {
    let dir = scratch("plots");
    let args = [SHORT, &["--policy", "deferred", "--policy", "hint-heap", "--plot", dir.to_str().unwrap()]].concat();
    let (code, _, err) = dmaplace(&args);
    assert_eq!(code, 0, "{err}");
    for f in ["failures-cma.svg", "over-time.svg", "iotlb.svg", "heatmap-deferred.svg", "heatmap-hint-heap.svg"] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(svg.starts_with("<svg"), "{f}");
    }
}

#[test]
fn bad_input_is_named_and_exits_1() {
    let dir = scratch("bad");
    let bad = dir.join("bad.trace");
    std::fs::write(&bad, "dmaplace-trace 1\nplatform refsoc\ncreate b1 size=1MiB\nmap m1 a1\n").unwrap();
    let (code, _, err) = dmaplace(&["sim", "--trace", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.trace:4: map: attachment a1 was never created"), "{err}");
    let (code, _, err) = dmaplace(&["sim", "juggling"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown scenario `juggling`; scenarios: video-playback"), "{err}");
    let (code, _, err) = dmaplace(&["sim", "video-playback", "--policy", "lazy"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown policy `lazy`; policies: deferred"), "{err}");
    let (code, _, err) = dmaplace(&["sim", "video-playback", "--param", "clips"]);
    assert_eq!(code, 1);
    assert!(err.contains("--param \"clips\": expected NAME=VALUE"), "{err}");
    let (code, _, err) = dmaplace(&["sim"]);
    assert_eq!(code, 1);
    assert!(err.contains("name a scenario (dmaplace sim --list) or give --trace FILE"), "{err}");
    // A trace that attaches a device the platform does not have.
    let other = dir.join("other.trace");
    std::fs::write(&other, "dmaplace-trace 1\nplatform rpi4\ncreate b1 size=1MiB\nattach a1 b1 gpu\n").unwrap();
    let (code, _, err) = dmaplace(&["sim", "--trace", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("attaches `gpu`, which platform `rpi4` does not have; its devices: hvs, v3d, unicam"),
        "{err}"
    );
}
