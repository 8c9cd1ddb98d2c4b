//! The `dmaplace` binary end to end: reports (insta snapshots), JSON, exit codes, errors.

use assert_cmd::Command;

fn dmaplace(args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("dmaplace").unwrap().args(args).output().unwrap();
    let code = out.status.code().expect("exited");
    (code, String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn solve_report_omap3_scanout_is_contiguous() {
    let (code, out, err) = dmaplace(&[
        "solve",
        "-p",
        "omap3",
        "-d",
        "dss:scanout",
        "-d",
        "sgx:rendering",
        "--image",
        "1024x768",
        "--format",
        "XR24",
    ]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn solve_report_x86_pitch_and_chunks() {
    let (code, out, err) = dmaplace(&[
        "solve",
        "-p",
        "x86-desktop",
        "-d",
        "igpu:rendering",
        "-d",
        "dgpu:rendering",
        "--image",
        "1920x1080",
        "--format",
        "XR24",
    ]);
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
}

#[test]
fn solve_conflict_exits_2_naming_the_devices() {
    let (code, out, _) = dmaplace(&[
        "solve",
        "-p",
        "refsoc",
        "-d",
        "dpu:scanout",
        "-d",
        "gpu",
        "-d",
        "isp:camera_write",
        "--size",
        "8MiB",
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("Conflicting devices (minimal set): dpu, isp"), "{out}");
    insta::assert_snapshot!(out);
}

#[test]
fn solve_json_is_the_documented_schema() {
    let (code, out, _) = dmaplace(&[
        "solve",
        "-p",
        "x86-desktop",
        "-d",
        "igpu",
        "-d",
        "dgpu",
        "--image",
        "1920x1080",
        "--format",
        "XR24",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schema"], "dmaplace.solve/v1");
    assert_eq!(v["result"], "plan");
    assert_eq!(v["plan"]["layout"]["pitch_align"]["value"], 256);
    assert_eq!(v["plan"]["layout"]["planes"][0]["pitch"], 7680);
    let causes: Vec<&str> = v["plan"]["layout"]["pitch_align"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["device"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["igpu", "dgpu"]);
    let (code, out, _) =
        dmaplace(&["solve", "-p", "refsoc", "-d", "dpu:scanout", "-d", "isp", "--size", "1MiB", "--json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "conflict");
    assert_eq!(v["conflict"]["devices"], serde_json::json!(["dpu", "isp"]));
    assert_eq!(v["conflict"]["kind"], "no_common_memory");
}

#[test]
fn bad_input_exits_1_with_a_message_that_names_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["solve", "-p", "omap3", "-d", "nope", "--size", "1M"],
            "platform `omap3` has no device `nope`; its devices are: dss, sgx, isp",
        ),
        (&["solve", "-p", "atari", "-d", "x", "--size", "1M"], "unknown platform `atari`"),
        (&["solve", "-p", "omap3", "-d", "dss", "--size", "0"], "buffer size must be at least one byte"),
        (&["solve", "-p", "omap3", "-d", "dss", "--size", "1PiB"], "unknown suffix"),
        (&["solve", "-p", "omap3", "-d", "dss", "--size", "512TiB"], "over the 256 TiB limit"),
        (&["solve", "-p", "omap3", "-d", "dss", "--image", "10x", "--format", "XR24"], "height \"\" is not a number"),
        (&["solve", "-p", "omap3", "-d", "dss", "--image", "0x10", "--format", "XR24"], "outside 1..=65536"),
        (&["solve", "-p", "omap3", "-d", "dss", "--image", "10x10", "--format", "QQQQ"], "not a DRM fourcc"),
        (&["solve", "-p", "omap3", "-d", "dss:warp", "--size", "1M"], "unknown usage hint \"warp\""),
        (
            &["solve", "-p", "omap3", "-d", "dss", "--image", "10x10", "--format", "XR24", "--modifier", "WAVY"],
            "unknown modifier \"WAVY\"",
        ),
        (
            &["solve", "-p", "/nonexistent/x.toml", "-d", "dss", "--size", "1M"],
            "cannot read platform file /nonexistent/x.toml",
        ),
        (&["solve", "-p", "omap3", "--size", "1M"], "--device"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let (code, _, err) = dmaplace(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected {needle:?} in:\n{err}");
    }
}

#[test]
fn a_malformed_platform_file_is_located() {
    let dir = std::env::temp_dir().join(format!("dmaplace-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../platforms/omap3.toml")).unwrap();
    std::fs::write(&path, text.replacen("dma_mask = 32", "dma_mask = 65", 1)).unwrap();
    let (code, _, err) = dmaplace(&["devices", "-p", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    let line = text.lines().position(|l| l.contains("dma_mask = 32")).unwrap() + 1;
    let expected = format!(
        "broken.toml:{line}:12: field `device[0].placement.dma_mask`: DMA mask width must be 1..=64 bits, got 65"
    );
    assert!(err.contains(&expected), "expected {expected:?} in {err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn demo_tells_the_story_deterministically() {
    let (code, out, err) = dmaplace(&["demo"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "No memory is allocated",
        "solves over every attachment",
        "layout committed: NV12 1920x1080 LINEAR, plane 0 at 0 pitch 1920 (1080 rows), plane 1 at 2073600 pitch 1920 (540 rows)",
        "`venc` needs height_align = 16: 1088 rows in plane 0 (height 1080 padded to a multiple of 16), but the committed layout has 1080 rows in plane 0",
        "a move changes where the pages are, never the layout",
        "cannot while `gpu` has 1 unsignalled fence(s)",
        "plane 1 at 2088960 pitch 1920 (544 rows); 3133440 B",
        "plane 1: 540 rows of 1920 B copied from offset 2073600 (pitch 1920) to offset 2088960 (pitch 1920)",
        "move_notify -> dpu (att3): map5 invalid, re-map; new layout attached",
        "is stale",
        "the re-layout preserved the image",
        "no memory satisfies both",
        "[B",
    ] {
        assert!(out.contains(needle), "missing {needle:?}");
    }
    assert!(!out.contains("preserved the content"), "no 1:1 copy is called content-preserving across a layout change");
    insta::assert_snapshot!(out);
    let (code, json, _) = dmaplace(&["demo", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["schema"], "dmaplace.demo/v1");
    let events: Vec<&serde_json::Value> =
        v["steps"].as_array().unwrap().iter().flat_map(|s| s["events"].as_array().unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for e in ["exported", "attached", "allocated", "mapped", "refused", "relaid", "move_notify", "released"] {
        assert!(kinds.contains(&e), "no {e} event");
    }
    assert!(!kinds.contains(&"migrated"), "the move that changed the layout is a re-layout, said so");
    let refused = events.iter().find(|e| e["event"] == "refused").unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("height_align = 16"), "{refused}");
    let relaid = events.iter().find(|e| e["event"] == "relaid").unwrap();
    assert_eq!(relaid["old_layout"]["planes"][1]["offset"], 2_073_600);
    assert_eq!(relaid["new_layout"]["planes"][1]["offset"], 2_088_960);
    assert_eq!(relaid["planes"][1]["rows"], 540);
    let notices: Vec<_> = events.iter().filter(|e| e["event"] == "move_notify").collect();
    assert_eq!(notices.len(), 3);
    assert!(notices.iter().all(|n| n["layout"] == relaid["new_layout"]), "every importer is told the new layout");
}

/// x86-desktop's late attacher (the 32-bit capture card) needs only another placement:
/// the pages move, the layout and the bytes do not, and the notices say no new layout.
#[test]
fn demo_moves_the_pages_not_the_layout_for_a_placement_only_late_attacher() {
    let (code, out, err) = dmaplace(&["demo", "-p", "x86-desktop"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("The committed layout meets it but the backing does not"), "{out}");
    assert!(out.contains("the move preserved the content and the layout"), "{out}");
    let (code, json, _) = dmaplace(&["demo", "-p", "x86-desktop", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let events: Vec<&serde_json::Value> =
        v["steps"].as_array().unwrap().iter().flat_map(|s| s["events"].as_array().unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "migrated"));
    assert!(!events.iter().any(|e| e["event"] == "relaid"));
    let notices: Vec<_> = events.iter().filter(|e| e["event"] == "move_notify").collect();
    assert!(!notices.is_empty() && notices.iter().all(|n| n["layout"].is_null()), "{notices:?}");
}

#[test]
fn demo_runs_on_every_platform_with_a_display_and_a_gpu() {
    for p in ["omap3", "omap4", "rpi4", "rk3399", "kayla", "x86-desktop"] {
        let (code, out, err) = dmaplace(&["demo", "-p", p]);
        assert_eq!(code, 0, "{p}: {err}");
        assert!(out.contains("as at the start"), "{p}: memory must return at release");
    }
}

#[test]
fn platforms_and_devices_list() {
    let (code, out, _) = dmaplace(&["platforms"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(out);
    let (code, out, _) = dmaplace(&["devices", "-p", "refsoc"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(out);
}
