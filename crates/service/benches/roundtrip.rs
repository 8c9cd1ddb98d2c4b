//! dmaplaced round trips on the simulated backend: create + attach + map + release of a
//! small (4 KiB) buffer, through the socket, against an in-process daemon thread.
//!
//! `cargo bench -p dmaplace-service --bench roundtrip` prints divan's table for one
//! client (and the state machine alone), then:
//!
//! - **closed loop**: 1 and 64 clients, each starting its next round trip as soon as the
//!   last one ended: the aggregate rate, and the latency of each **round trip** (the four
//!   requests create, attach, map, release, from sending the first to receiving the
//!   last reply) and of each **request** (one send to its reply), p50, p99, max. With N
//!   clients always waiting, the mean round trip is at least N / rate (Little's law),
//!   which the output prints next to it;
//! - **paced**: 64 clients, each starting a round trip every 64/R seconds (R round trips/s
//!   offered in all, at 25, 50 and 75% of the closed-loop rate); latency is measured
//!   from when each round trip was due, so a late start counts against it.
//!
//! Goals (issue 10): >= 20,000 round trips/s, p99 <= 1 ms.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dmaplace::{Client, Desc, hints};
use dmaplace_service::{Server, ServerConfig, Service, ServiceConfig, SimPlacer};

fn daemon() -> &'static PathBuf {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dmaplace-bench-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let socket = dir.join("d.sock");
        let (ready, wait) = std::sync::mpsc::channel();
        let path = socket.clone();
        // The exporter is not Send (move_notify callbacks): the daemon is built on its thread.
        std::thread::spawn(move || {
            let platform = dmaplace_core::builtin::load("refsoc").unwrap().unwrap();
            let placer = SimPlacer::new(&platform, 1).unwrap();
            let mut config = ServiceConfig::default();
            config.limits.buffers = 1 << 20;
            let service = Service::new(platform, placer, config);
            let mut server = Server::bind(service, ServerConfig::new(&path)).unwrap();
            let (stop, _keep) = rustix::pipe::pipe().unwrap(); // never written: runs for the whole process
            ready.send(()).unwrap();
            server.run(stop.as_fd()).unwrap();
        });
        wait.recv().unwrap();
        socket
    })
}

fn round_trip(c: &mut Client) {
    let b = c.create(Desc::Size(4096), "bench").unwrap();
    let a = c.attach(&b.token, "gpu", hints::RENDERING).unwrap();
    let m = c.map(a.attachment).unwrap();
    drop(m.fd);
    c.release(b.buffer).unwrap();
}

/// The round trip, timing each request: `(round trip, [create, attach, map, release])`.
fn timed_round_trip(c: &mut Client) -> (Duration, [Duration; 4]) {
    let t0 = Instant::now();
    let b = c.create(Desc::Size(4096), "bench").unwrap();
    let t1 = Instant::now();
    let a = c.attach(&b.token, "gpu", hints::RENDERING).unwrap();
    let t2 = Instant::now();
    let m = c.map(a.attachment).unwrap();
    let t3 = Instant::now();
    drop(m.fd);
    c.release(b.buffer).unwrap();
    let t4 = Instant::now();
    (t4 - t0, [t1 - t0, t2 - t1, t3 - t2, t4 - t3])
}

/// One client, one round trip per iteration.
#[divan::bench]
fn create_attach_map_release(bencher: divan::Bencher) {
    let mut c = Client::connect(daemon(), "bench").unwrap();
    bencher.bench_local(|| round_trip(&mut c));
}

/// The transport alone: four 64-byte datagrams echoed by another thread over a
/// `SOCK_SEQPACKET` socket pair (one `sendmsg` and one blocking `recvmsg` on each side
/// per message, as the client and the daemon do): the floor under any round trip of
/// four requests on this machine, whatever the daemon does.
#[divan::bench]
fn transport_only(bencher: divan::Bencher) {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
    let (a, b) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            match rustix::net::recv(&b, &mut buf, RecvFlags::empty()) {
                Ok((0, _)) | Err(_) => return,
                Ok((n, _)) => {
                    rustix::net::send(&b, &buf[..n], SendFlags::NOSIGNAL).unwrap();
                }
            }
        }
    });
    let msg = [7u8; 64];
    let mut buf = [0u8; 256];
    bencher.bench_local(|| {
        for _ in 0..4 {
            rustix::net::send(&a, &msg, SendFlags::NOSIGNAL).unwrap();
            rustix::net::recv(&a, &mut buf, RecvFlags::empty()).unwrap();
        }
    });
    drop(a);
    echo.join().unwrap();
}

/// The same four requests straight into the state machine (no socket, no fd passing):
/// what the daemon's logic costs, against which the socket round trip compares.
#[divan::bench]
fn service_only(bencher: divan::Bencher) {
    use dmaplace_proto::{Reply, Request};
    let platform = dmaplace_core::builtin::load("refsoc").unwrap().unwrap();
    let placer = SimPlacer::new(&platform, 1).unwrap();
    let mut service = Service::new(platform, placer, ServiceConfig::default());
    service.connect(1, dmaplace_service::Peer { pid: 1, uid: 0, gid: 0 });
    let hello = Request::Hello { min_version: 1, max_version: 1, name: "bench".into() };
    assert!(service.handle(1, 1, &hello).reply.is_ok());
    bencher.bench_local(|| {
        let create = Request::Create { desc: Desc::Size(4096), name: "bench".into() };
        let Ok(Reply::Created { buffer, token, .. }) = service.handle(1, 2, &create).reply else { panic!("create") };
        let attach = Request::Attach { token, device: "gpu".into(), hints: hints::RENDERING };
        let Ok(Reply::Attached { attachment, .. }) = service.handle(1, 3, &attach).reply else { panic!("attach") };
        let mapped = service.handle(1, 4, &Request::Map { attachment });
        assert!(mapped.reply.is_ok() && mapped.fd.is_some());
        assert!(service.handle(1, 5, &Request::Release { buffer }).reply.is_ok());
    });
}

/// `p`-th per-mille quantile: the smallest sample with at least p/1000 of them at or below it.
fn quantile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() * per_mille / 1000).min(sorted.len() - 1)]
}

fn show(what: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!("{what} p50 {:?} p99 {:?} max {:?}", quantile(&v, 500), quantile(&v, 990), v[v.len() - 1])
}

/// Closed loop: every client starts its next round trip at once. Returns the rate.
fn closed_loop(clients: usize, per_client: usize) -> f64 {
    let socket = daemon().clone();
    let t0 = Instant::now();
    let all: Vec<(Duration, [Duration; 4])> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let socket = socket.clone();
                s.spawn(move || {
                    let mut c = Client::connect(&socket, "bench").unwrap();
                    (0..per_client).map(|_| timed_round_trip(&mut c)).collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed();
    let rate = all.len() as f64 / wall.as_secs_f64();
    let trips: Vec<Duration> = all.iter().map(|(t, _)| *t).collect();
    let mean = trips.iter().sum::<Duration>() / u32::try_from(trips.len()).unwrap();
    let requests: Vec<Duration> = all.iter().flat_map(|(_, r)| *r).collect();
    println!(
        "closed loop, {clients:>2} clients x {per_client}: {rate:>7.0} round trips/s ({:.0} requests/s)",
        rate * 4.0
    );
    println!(
        "    {}; mean {mean:?} (Little's law: >= {clients} / rate = {:?})",
        show("round trip", trips),
        Duration::from_secs_f64(clients as f64 / rate)
    );
    println!("    {}", show("request   ", requests));
    rate
}

/// Paced: each of `clients` starts a round trip every `clients / rate` seconds (the
/// clients' phases spread evenly); latency counts from when each round trip was due.
fn paced(clients: usize, rate: f64, seconds: f64) {
    let socket = daemon().clone();
    let period = Duration::from_secs_f64(clients as f64 / rate);
    // CAST: a few thousand round trips per client.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let per_client = (seconds * rate / clients as f64).ceil() as u32;
    let start = Instant::now() + Duration::from_millis(50);
    let all: Vec<(Duration, [Duration; 4])> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|i| {
                let socket = socket.clone();
                s.spawn(move || {
                    let mut c = Client::connect(&socket, "bench").unwrap();
                    let phase = period * u32::try_from(i).unwrap() / u32::try_from(clients).unwrap();
                    (0..per_client)
                        .map(|k| {
                            let due = start + phase + period * k;
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let (_, r) = timed_round_trip(&mut c);
                            (due.elapsed(), r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let trips: Vec<Duration> = all.iter().map(|(t, _)| *t).collect();
    let requests: Vec<Duration> = all.iter().flat_map(|(_, r)| *r).collect();
    println!(
        "paced, {clients} clients, {rate:>6.0} round trips/s offered ({} round trips): {}; {}",
        all.len(),
        show("round trip (from due)", trips),
        show("request", requests)
    );
}

fn main() {
    divan::main();
    println!("\ncreate + attach + map + release of 4 KiB on the simulated refsoc, through the socket:");
    closed_loop(1, 5000);
    let rate = closed_loop(64, 200);
    for share in [0.25, 0.5, 0.75] {
        paced(64, (rate * share).max(64.0), 2.0);
    }
}
