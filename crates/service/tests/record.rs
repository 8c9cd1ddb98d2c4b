//! `dmaplaced --record FILE`: the session as a trace that parses back, with the header a
//! replay needs (the record-and-replay comparison itself is `crates/cli/tests/record.rs`).

mod common;

use common::Daemon;
use dmaplace::{Client, Desc, hints};
use dmaplace_eval::trace::{Op, Trace};

#[test]
fn dmaplaced_records_a_session_that_parses_back() {
    let dir = common::scratch("record");
    let path = dir.join("s.trace");
    let mut d = Daemon::start(
        "record",
        &["--backend", "sim", "--platform", "refsoc", "--seed", "3", "--record", path.to_str().unwrap()],
    );
    let mut a = Client::connect(&d.socket, "a").unwrap();
    let mut b = Client::connect(&d.socket, "b").unwrap();
    let buf = a.create(Desc::Size(1 << 20), "rec").unwrap();
    let aa = a.attach(&buf.token, "gpu", hints::RENDERING).unwrap();
    let ba = b.attach(&buf.token, "g2d", 0).unwrap();
    let m = a.map(aa.attachment).unwrap();
    a.begin_access(m.mapping).unwrap();
    a.end_access(m.mapping).unwrap();
    let bm = b.map(ba.attachment).unwrap();
    drop((m.fd, bm.fd));
    a.release(buf.buffer).unwrap();
    drop(b); // b disconnects holding its mapping: its cleanup is recorded too
    assert!(d.stop().success(), "{}", d.log());
    let text = std::fs::read_to_string(&path).unwrap();
    println!("{text}");
    let trace = Trace::parse("s.trace", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(trace.header.platform.as_deref(), Some("refsoc"));
    assert_eq!(trace.header.seed, Some(3));
    assert_eq!(trace.meta("recorder"), Some("dmaplaced"));
    let verbs: Vec<&str> = trace.ops.iter().filter(|o| !matches!(o, Op::Advance { .. })).map(Op::verb).collect();
    assert_eq!(
        verbs,
        [
            "create", "attach", "attach", "map", "fence", "signal", "map", "unmap", "detach", "unmap", "detach",
            "release"
        ]
    );
}

#[test]
fn record_is_refused_with_the_kernel_module() {
    let out = std::process::Command::new(common::daemon_binary())
        .args(["--backend", "kmod", "--record", "/nonexistent/x.trace", "--socket", "/nonexistent/s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--record needs --backend sim or heaps"), "{err}");
}
