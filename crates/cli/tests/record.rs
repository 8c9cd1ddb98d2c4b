//! A session recorded by the daemon (`dmaplaced --record`'s recorder) replays under
//! `dmaplace sim --trace` with the same outcome: three `dmaplace client shell`
//! processes (producer, consumer, late consumer) share a buffer through a daemon on the
//! simulated refsoc (`--busy queue`, as the replay's `deferred` policy): the first map
//! allocates; the late display's attach during DMA is queued and moves the buffer when
//! the DMA ends; a camera that can use only its carveout is refused (conflict); the
//! consumer dies holding a mapping; everyone else lets go. The daemon's counters
//! (allocations, moves, refusals) must equal the replay's.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use dmaplace_core::exporter::BusyPolicy;
use dmaplace_eval::trace::Header;
use dmaplace_service::{Server, ServerConfig, Service, ServiceConfig, SimPlacer, TraceRecorder};
use serde_json::Value;

const SEED: u64 = 7;

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("record-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `dmaplace client shell` process.
struct Shell {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Shell {
    fn spawn(name: &'static str, socket: &Path) -> Shell {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dmaplace"))
            .args(["client", "shell", "--socket"])
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Shell { name, child, stdin, stdout }
    }

    fn cmd(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        assert!(self.stdout.read_line(&mut answer).unwrap() > 0, "{}: exited before answering `{line}`", self.name);
        println!("  {:<9} {line:<44} -> {}", self.name, answer.trim());
        serde_json::from_str(&answer).unwrap()
    }

    fn ok(&mut self, line: &str) -> Value {
        let v = self.cmd(line);
        assert_eq!(v["ok"], true, "{}: `{line}`: {v}", self.name);
        v
    }

    fn fails(&mut self, line: &str, code: &str) {
        let v = self.cmd(line);
        assert_eq!(v["code"], code, "{}: `{line}`: {v}", self.name);
    }

    /// Dies without a word (SIGKILL): the daemon cleans up after it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stdin = None;
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "quit");
        }
        let _ = self.child.wait();
    }
}

/// A daemon on its own thread, recording to `trace`; returns its socket, the stop
/// stream, and the thread, which returns the daemon's counters when stopped.
fn daemon(dir: &Path, trace: &Path) -> (PathBuf, UnixStream, std::thread::JoinHandle<Value>) {
    let socket = dir.join("d.sock");
    let (stop_write, stop_read) = UnixStream::pair().unwrap();
    let (path, trace) = (socket.clone(), trace.to_owned());
    let (ready, wait) = std::sync::mpsc::channel();
    // The exporter is not Send: the daemon is built on its thread.
    let thread = std::thread::spawn(move || {
        let platform = dmaplace_core::builtin::load("refsoc").unwrap().unwrap();
        let placer = SimPlacer::new(&platform, SEED).unwrap();
        let config = ServiceConfig { busy: BusyPolicy::Queue, ..ServiceConfig::default() };
        let mut service = Service::new(platform, placer, config);
        let header = Header {
            platform: Some("refsoc".into()),
            seed: Some(SEED),
            meta: vec![("recorder".into(), "dmaplaced".into()), ("busy".into(), "queue".into())],
            ..Header::default()
        };
        service.set_recorder(Box::new(TraceRecorder::create(&trace, &header).unwrap()));
        let mut server = Server::bind(service, ServerConfig::new(&path)).unwrap();
        ready.send(()).unwrap();
        server.run(stop_read.as_fd()).unwrap();
        server.service().inspect_json()["stats"].clone()
    });
    wait.recv().unwrap();
    (socket, stop_write, thread)
}

fn session(socket: &Path) {
    let mut p = Shell::spawn("producer", socket);
    let mut c = Shell::spawn("consumer", socket);
    let mut l = Shell::spawn("late", socket);
    let token = p.ok("create size 8388608 frame")["token"].as_str().unwrap().to_owned();
    let pa = p.ok(&format!("attach {token} gpu RENDERING"))["attachment"].clone();
    let ca = c.ok(&format!("attach {token} g2d -"))["attachment"].clone();
    let pm = p.ok(&format!("map {pa}"))["mapping"].clone();
    p.ok(&format!("write {pm} 99"));
    let cm = c.ok(&format!("map {ca}"))["mapping"].clone();
    std::thread::sleep(Duration::from_millis(20));
    p.ok(&format!("begin {pm}"));
    let la = l.ok(&format!("attach {token} dpu SCANOUT"));
    assert_eq!(la["how"], "Queued");
    l.fails(&format!("map {}", la["attachment"]), "move_pending");
    std::thread::sleep(Duration::from_millis(20));
    p.ok(&format!("end {pm}"));
    for (s, m) in [(&mut p, &pm), (&mut c, &cm)] {
        assert_eq!(s.ok("wait-moved 5000")["moved"]["generation"], 1);
        s.ok(&format!("unmap {m}"));
    }
    let pm = p.ok(&format!("map {pa}"))["mapping"].clone();
    c.ok(&format!("map {ca}"));
    l.ok(&format!("map {}", la["attachment"]));
    // A camera that can use only its carveout, above the display's 4 GiB: refused.
    l.fails(&format!("attach {token} isp -"), "conflict");
    // The consumer dies holding its mapping; the others let go.
    c.kill();
    std::thread::sleep(Duration::from_millis(50));
    p.ok(&format!("unmap {pm}"));
    l.ok("release 1");
    p.ok("release 1");
}

#[test]
fn a_recorded_session_replays_with_the_same_allocations_moves_and_refusals() {
    let dir = scratch("three");
    let trace = dir.join("session.trace");
    let (socket, mut stop, thread) = daemon(&dir, &trace);
    session(&socket);
    stop.write_all(b"x").unwrap();
    let stats = thread.join().unwrap();
    let text = std::fs::read_to_string(&trace).unwrap();
    println!("{text}");
    println!("daemon: {stats}");
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dmaplace"))
        .args(["sim", "--trace"])
        .arg(&trace)
        .args(["--policy", "deferred", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("replayed in {:?}", t0.elapsed());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &doc["runs"][0];
    let failures: u64 = run["failures"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    println!(
        "replay: allocations {} migrations {} failures {} skipped {}",
        run["allocations"], run["migrations"], run["failures"], run["skipped"]
    );
    // What happened, once: one allocation at the first map, one move, one conflict.
    assert_eq!((stats["allocations"].as_u64(), stats["migrations"].as_u64()), (Some(2), Some(1)), "{stats}");
    assert_eq!((stats["conflicts"].as_u64(), stats["busy_refusals"].as_u64()), (Some(1), Some(0)), "{stats}");
    assert_eq!(run["allocations"], stats["allocations"], "allocations");
    assert_eq!(run["migrations"], stats["migrations"], "moves");
    assert_eq!(run["failures"]["conflict"], stats["conflicts"], "{}", run["failures"]);
    assert_eq!(failures, stats["conflicts"].as_u64().unwrap() + stats["busy_refusals"].as_u64().unwrap(), "refusals");
}
