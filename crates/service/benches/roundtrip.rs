//! dmaplaced round trips on the simulated backend: create + attach + map + release of a
//! small (4 KiB) buffer, through the socket, against an in-process daemon thread.
//!
//! `cargo bench -p dmaplace-service --bench roundtrip` prints divan's table for one
//! client, then the latency distribution with 64 concurrent clients (p50, p99, max)
//! and the aggregate rate. Goals (issue 10): >= 20,000 round trips/s, p99 <= 1 ms.

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

/// One client, one round trip per iteration.
#[divan::bench]
fn create_attach_map_release(bencher: divan::Bencher) {
    let mut c = Client::connect(daemon(), "bench").unwrap();
    bencher.bench_local(|| round_trip(&mut c));
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

fn concurrent(clients: usize, per_client: usize) {
    let socket = daemon().clone();
    let t0 = Instant::now();
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let socket = socket.clone();
                s.spawn(move || {
                    let mut c = Client::connect(&socket, "bench").unwrap();
                    (0..per_client)
                        .map(|_| {
                            let t = Instant::now();
                            round_trip(&mut c);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed();
    all.sort();
    // The p-th quantile: the smallest sample with at least p of them at or below it.
    let q = |per_mille: usize| all[(all.len() * per_mille / 1000).min(all.len() - 1)];
    println!(
        "{clients:>3} concurrent clients x {per_client} round trips: {:>8.0} round trips/s; latency p50 {:?}, p99 {:?}, max {:?}",
        all.len() as f64 / wall.as_secs_f64(),
        q(500),
        q(990),
        all[all.len() - 1]
    );
}

fn main() {
    divan::main();
    println!("\ncreate + attach + map + release of 4 KiB on the simulated refsoc, through the socket:");
    concurrent(1, 5000);
    concurrent(64, 200);
}
