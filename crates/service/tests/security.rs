//! Limits, policy and robustness: quotas, the uid/gid allow-policy, token secrecy,
//! garbage and control-message errors, timeouts, slow readers, SIGTERM.

mod common;

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Agent, Daemon};
use dmaplace::{Client, Desc, Error, ErrorCode, Token, hints};
use dmaplace_proto::{Body, Message, Request};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

fn sim(tag: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--backend", "sim", "--platform", "refsoc"];
    args.extend_from_slice(extra);
    Daemon::start(tag, &args)
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a daemon error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn quotas_on_bytes_buffers_and_fds() {
    let d = sim("quota", &["--max-bytes", "1MiB", "--max-buffers", "2", "--max-fds", "1"]);
    let mut c = Client::connect(&d.socket, "q").unwrap();
    assert_eq!(c.hello().quota.bytes, 1 << 20);
    let over = c.create(Desc::Size(2 << 20), "big");
    assert_eq!(code(over), ErrorCode::Quota);
    let a = c.create(Desc::Size(512 << 10), "a").unwrap();
    let b = c.create(Desc::Size(256 << 10), "b").unwrap();
    let e = c.create(Desc::Size(4096), "c").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Quota));
    assert!(e.to_string().contains("holds 2 buffers"), "{e}");
    let aa = c.attach(&a.token, "gpu", hints::RENDERING).unwrap();
    let ba = c.attach(&b.token, "gpu", hints::RENDERING).unwrap();
    let _m = c.map(aa.attachment).unwrap();
    assert_eq!(code(c.map(ba.attachment)), ErrorCode::Quota);
    // Releasing gives the room back.
    c.release(a.buffer).unwrap();
    let again = c.create(Desc::Size(512 << 10), "again").unwrap();
    let st = c.status().unwrap();
    assert_eq!(st.bytes, (512 + 256) << 10);
    assert_eq!(st.buffers.len(), 2);
    assert_eq!(st.fds, 0);
    let _ = again;
}

#[test]
fn no_token_no_attach_and_handles_are_per_client() {
    let d = sim("token", &["--admin-uid", "4242"]);
    let mut a = Client::connect(&d.socket, "owner").unwrap();
    let mut b = Client::connect(&d.socket, "stranger").unwrap();
    let buf = a.create(Desc::Size(65536), "secret").unwrap();
    let att = a.attach(&buf.token, "gpu", 0).unwrap();
    let _m = a.map(att.attachment).unwrap();
    // A guessed token, or one that is one bit off, names nothing.
    let mut near = buf.token.0;
    near[0] ^= 1;
    for t in [Token([0; 16]), Token(near)] {
        let e = b.attach(&t, "gpu", 0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::BadToken));
        assert_eq!(e.to_string(), "dmaplaced: bad_token: no buffer has this token");
    }
    // A's handles mean nothing to B.
    assert_eq!(code(b.map(att.attachment)), ErrorCode::NoSuchHandle);
    assert_eq!(code(b.release(buf.buffer)), ErrorCode::NoSuchHandle);
    assert!(b.status().unwrap().buffers.is_empty(), "B sees no buffer it holds no token for");
    // Not an administrator: no inspect.
    assert_eq!(code(b.inspect()), ErrorCode::Permission);
    // With the token, B attaches and sees the same bytes.
    let battach = b.attach(&buf.token, "g2d", 0).unwrap();
    assert_eq!(b.status().unwrap().buffers.len(), 1);
    let _bm = b.map(battach.attachment).unwrap();
    // Tokens never show in Debug output (logs).
    assert_eq!(format!("{:?}", buf.token), "Token(..)");
    assert!(!d.log().contains(&buf.token.to_hex()), "the daemon's log holds no token");
}

fn send_with_fd(c: &Client, bytes: &[u8]) {
    let extra = rustix::fs::memfd_create("extra", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [extra.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(c, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).unwrap();
}

#[test]
fn garbage_gets_error_replies_then_disconnection() {
    let d = sim("garbage", &["--max-malformed", "3"]);
    let mut c = Client::connect(&d.socket, "noisy").unwrap();
    let fds_before = d.fd_count();
    // 1: not a message.
    c.send_raw(b"hello?").unwrap();
    let (m, _) = c.recv_raw(Duration::from_secs(5)).unwrap();
    match m.body {
        Body::Error(e) => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.message.contains("shorter than the 16-byte header"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    // 2: a valid request carrying an fd: refused, the fd closed by the daemon.
    let status = Message { seq: 5, body: Body::Request(Request::Status) }.encode().unwrap();
    send_with_fd(&c, &status);
    let (m, _) = c.recv_raw(Duration::from_secs(5)).unwrap();
    assert_eq!(m.seq, 5);
    assert!(
        matches!(&m.body, Body::Error(e) if e.code == ErrorCode::Control && e.message.contains("carried 1 fd")),
        "{m:?}"
    );
    assert_eq!(d.fd_count(), fds_before, "the fd the client passed was closed");
    // 3: over the size limit.
    c.send_raw(&vec![0u8; dmaplace::MAX_MESSAGE + 100]).unwrap();
    let (m, _) = c.recv_raw(Duration::from_secs(5)).unwrap();
    assert!(matches!(&m.body, Body::Error(e) if e.code == ErrorCode::TooLarge), "{m:?}");
    // The third strike closes the connection.
    let end = c.recv_raw(Duration::from_secs(5));
    assert!(matches!(end, Err(Error::Closed)), "{end:?}");
    // The daemon is fine.
    let mut other = Client::connect(&d.socket, "calm").unwrap();
    other.status().unwrap();
}

#[test]
fn silent_clients_time_out_and_slow_readers_stall_nobody() {
    let d = sim("slow", &["--timeout", "0.5"]);
    // Connected, never says hello.
    let silent = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::connect(&silent, &rustix::net::SocketAddrUnix::new(&d.socket).unwrap()).unwrap();
    // A slow reader floods requests and reads nothing.
    let slow = Client::connect(&d.socket, "slow").unwrap();
    let req = Message { seq: 1, body: Body::Request(Request::Status) }.encode().unwrap();
    let flood = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut sent = 0;
            while slow.send_raw(&req).is_ok() && sent < 100_000 {
                sent += 1;
            }
            sent
        });
        // Meanwhile another client works normally, with bounded latency.
        let mut fast = Client::connect(&d.socket, "fast").unwrap();
        let mut worst = Duration::ZERO;
        for _ in 0..200 {
            let t = Instant::now();
            let b = fast.create(Desc::Size(4096), "f").unwrap();
            fast.release(b.buffer).unwrap();
            worst = worst.max(t.elapsed());
        }
        println!("fast client: worst create+release {worst:?}");
        assert!(worst < Duration::from_secs(1), "a slow reader stalled another client: {worst:?}");
        h.join().unwrap()
    });
    println!("the slow reader got {flood} requests in before the daemon hung up");
    assert!(flood < 100_000, "the daemon disconnected the client that never reads");
    let t0 = Instant::now();
    let mut b = [0u8; 64];
    // The silent one is closed within the timeout (read returns 0 or an error).
    let n = loop {
        match rustix::net::recv(&silent, &mut b, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => break Ok(0),
            Ok(_) => continue,
            Err(rustix::io::Errno::AGAIN) if t0.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => break Err(e),
        }
    };
    assert!(n.is_ok() || n == Err(rustix::io::Errno::CONNRESET), "{n:?}");
    assert!(d.log().contains("no hello within"), "{}", d.log());
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_socket_is_0660() {
    let mut d = sim("term", &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut c = Client::connect(&d.socket, "c").unwrap();
    let b = c.create(Desc::Size(4096), "b").unwrap();
    let a = c.attach(&b.token, "gpu", 0).unwrap();
    let _m = c.map(a.attachment).unwrap();
    let status = d.stop();
    assert!(status.success(), "dmaplaced exited with {status}:\n{}", d.log());
    assert!(!d.socket.exists(), "the socket file is removed");
    assert!(d.log().contains("shut down"), "{}", d.log());
    assert!(matches!(c.status(), Err(Error::Closed | Error::Io { .. })));
}

/// Runs a client agent as `nobody` (uid and gid 65534) through `setpriv`.
#[test]
fn the_uid_gid_policy_decides_who_may_connect() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root to run a client as another user");
        return;
    }
    if std::process::Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: setpriv (util-linux) is missing");
        return;
    }
    let nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"];
    for (allow, expect_ok) in [(None, false), (Some("65534"), true)] {
        let mut args = vec!["--socket-group", "65534"];
        if let Some(g) = allow {
            args.extend(["--allow-gid", g]);
        }
        let d = sim("uid", &args);
        std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut agent = Agent::spawn("nobody", &d.socket, &nobody);
        let v = agent.cmd("status");
        if expect_ok {
            assert_eq!(v["ok"], true, "{v}");
        } else {
            assert_eq!(v["code"], "permission", "{v}");
            assert!(v["message"].as_str().unwrap().contains("uid 65534 gid 65534 may not use this daemon"), "{v}");
        }
    }
}

#[test]
fn agent_role_hook() {
    // When this binary is re-executed as an agent, serve and exit (see common::Agent).
    if common::agent_role() {
        std::process::exit(0);
    }
}

#[test]
fn truncated_control_data_is_an_error_and_no_fd_leaks() {
    let d = sim("ctrunc", &["--max-malformed", "10"]);
    let mut c = Client::connect(&d.socket, "fds").unwrap();
    let before = d.fd_count();
    // More fds than the daemon makes room for (8): the kernel truncates (MSG_CTRUNC).
    let memfds: Vec<_> =
        (0..16).map(|_| rustix::fs::memfd_create("extra", rustix::fs::MemfdFlags::CLOEXEC).unwrap()).collect();
    let fds: Vec<_> = memfds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let status = Message { seq: 8, body: Body::Request(Request::Status) }.encode().unwrap();
    rustix::net::sendmsg(&c, &[IoSlice::new(&status)], &mut control, SendFlags::NOSIGNAL).unwrap();
    let (m, _) = c.recv_raw(Duration::from_secs(5)).unwrap();
    assert_eq!(m.seq, 8);
    assert!(
        matches!(&m.body, Body::Error(e) if e.code == ErrorCode::Control && e.message.contains("MSG_CTRUNC")),
        "{m:?}"
    );
    assert_eq!(d.fd_count(), before, "the fds that did arrive were closed");
    c.status().unwrap();
}
