//! Helpers for the daemon's tests: a `dmaplaced` child process on a private socket, and
//! client agents (this test binary re-executed with `DMAPLACE_ROLE=agent`) driven over
//! their stdin/stdout, one JSON answer per command.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The daemon binary: `$DMAPLACED` (the qemu guest), else the one cargo built.
pub fn daemon_binary() -> PathBuf {
    match std::env::var_os("DMAPLACED") {
        Some(p) => PathBuf::from(p),
        // The qemu rig copies `--file .../dmaplaced` to /dmaplaced.
        None if std::env::var("DMAPLACE_IN_GUEST").as_deref() == Ok("1") => PathBuf::from("/dmaplaced"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_dmaplaced")),
    }
}

/// A fresh private directory under the temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("dmaplace-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running daemon, stopped (SIGTERM) on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts `dmaplaced --socket <dir>/d.sock ARGS` and waits for its socket.
    pub fn start(tag: &str, args: &[&str]) -> Daemon {
        let dir = scratch(tag);
        let socket = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(daemon_binary())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", daemon_binary().display()));
        let mut d = Daemon { child, socket, dir };
        let t0 = Instant::now();
        while !d.socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dmaplaced exited with {status} before listening:\n{}", d.log());
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "dmaplaced did not listen within 60 s:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open fds of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("dmaplaced did not exit within 20 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client process driven by text commands (`dmaplace::agent`).
pub struct Agent {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Agent {
    /// Re-executes this test binary as an agent connected to `socket`; `wrap` prefixes
    /// the command (e.g. `setpriv ...` to run as another user).
    pub fn spawn(name: &str, socket: &Path, wrap: &[&str]) -> Agent {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        // Under libtest, run only the hook test that turns into the agent.
        let mut child = cmd
            .args(["agent_role_hook", "--exact", "--nocapture", "--quiet", "--test-threads=1"])
            .env("DMAPLACE_ROLE", "agent")
            .env("DMAPLACE_SOCKET", socket)
            .env("DMAPLACE_AGENT_NAME", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Agent { name: name.to_owned(), child, stdin: Some(stdin), stdout }
    }

    /// Sends one command; returns its JSON answer.
    pub fn cmd(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("open until drop");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        // Skip what libtest prints before the agent starts.
        let mut answer = String::new();
        while !answer.starts_with('{') {
            answer.clear();
            if self.stdout.read_line(&mut answer).unwrap() == 0 {
                panic!("{}: the agent exited before answering `{line}`", self.name);
            }
        }
        let v: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{}: `{line}` answered {answer:?}: {e}", self.name));
        let mut shown = v.to_string();
        if shown.len() > 240 {
            let mut end = 240;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str(" ...");
        }
        println!("  {:<9} {line:<44} -> {shown}", self.name);
        v
    }

    /// A command that must succeed.
    pub fn ok(&mut self, line: &str) -> Value {
        let v = self.cmd(line);
        assert_eq!(v["ok"], true, "{}: `{line}` failed: {v}", self.name);
        v
    }

    /// A command that must fail with `code`.
    pub fn fails(&mut self, line: &str, code: &str) -> Value {
        let v = self.cmd(line);
        assert_eq!(v["code"], code, "{}: `{line}` should fail with {code}: {v}", self.name);
        v
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        } // closed here: the agent sees the end of its input
        let _ = self.child.wait();
    }
}

/// The agent role: when this binary runs as one, serves commands and exits.
pub fn agent_role() -> bool {
    if std::env::var("DMAPLACE_ROLE").as_deref() != Ok("agent") {
        return false;
    }
    let socket = std::env::var("DMAPLACE_SOCKET").expect("DMAPLACE_SOCKET");
    let name = std::env::var("DMAPLACE_AGENT_NAME").unwrap_or_else(|_| "agent".into());
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    match dmaplace::Client::connect(&socket, &name) {
        Ok(mut c) => dmaplace::agent::run(&mut c, stdin.lock(), stdout.lock()).unwrap(),
        Err(e) => {
            // Answer every command with the connection's failure.
            let code = e.code().map_or("client", |c| c.name());
            for line in stdin.lock().lines() {
                if line.as_deref().map(str::trim).is_ok_and(|l| l == "quit") {
                    break;
                }
                println!("{}", serde_json::json!({"ok": false, "code": code, "message": e.to_string()}));
            }
        }
    }
    true
}

/// A tiny seeded generator (splitmix64), so randomized tests replay from their seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
