//! 1,000 clients disconnect abruptly at random points (before hello, after create,
//! attached to a shared buffer, holding mappings, in the middle of DMA, with a request
//! sent and its reply unread); afterwards the daemon holds exactly what the one
//! surviving client holds: no leaked buffer, backing, mapping or fd. The other holder
//! of the shared buffer keeps it, mapped and readable, throughout.

mod common;

use std::io::IoSlice;
use std::time::{Duration, Instant};

use common::{Daemon, Rng};
use dmaplace::{Client, Desc, hints};
use dmaplace_proto::{Body, Message, Request};
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use serde_json::Value;

const SEED: u64 = 0x00d1_5c0e_c7ed;
const CLIENTS: u64 = 1000;
const THREADS: u64 = 4;

fn inspect(c: &mut Client) -> Value {
    serde_json::from_str(&c.inspect().unwrap()).unwrap()
}

/// Connects without the client library and sends `request` (if any), then closes at
/// once: the daemon sees a connection die mid-handshake or mid-request.
fn raw_and_close(socket: &std::path::Path, request: Option<Request>) {
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::connect(&fd, &SocketAddrUnix::new(socket).unwrap()).unwrap();
    if let Some(r) = request {
        let bytes = Message { seq: 1, body: Body::Request(r) }.encode().unwrap();
        let _ = rustix::net::sendmsg(
            &fd,
            &[IoSlice::new(&bytes)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        );
    }
}

/// One client: goes `steps` steps into a life, then vanishes without a word.
fn doomed(socket: &std::path::Path, shared: &dmaplace::Token, rng: &mut Rng) -> u64 {
    let steps = rng.below(10);
    if steps == 0 {
        raw_and_close(socket, None);
        return steps;
    }
    if steps == 1 {
        raw_and_close(socket, Some(Request::Hello { min_version: 1, max_version: 1, name: "half".into() }));
        return steps;
    }
    let Ok(mut c) = Client::connect(socket, "doomed") else { panic!("connect") };
    let size = 4096 * (1 + rng.below(256));
    let own = c.create(Desc::Size(size), "doomed").unwrap();
    if steps == 2 {
        return steps;
    }
    let a = c.attach(&own.token, "gpu", hints::RENDERING).unwrap();
    let s = c.attach(shared, "g2d", 0).unwrap();
    if steps == 3 {
        return steps;
    }
    let m = c.map(a.attachment).unwrap();
    if steps == 4 {
        return steps;
    }
    let sm = c.map(s.attachment).unwrap();
    drop(m.fd);
    if steps == 5 {
        return steps;
    }
    c.begin_access(sm.mapping).unwrap();
    if steps == 6 {
        return steps; // dies in the middle of DMA on the shared buffer
    }
    c.begin_access(m.mapping).unwrap();
    if steps == 7 {
        return steps;
    }
    // A request sent, its reply never read.
    c.send_raw(
        &Message { seq: 99, body: Body::Request(Request::Create { desc: Desc::Size(4096), name: "x".into() }) }
            .encode()
            .unwrap(),
    )
    .unwrap();
    if steps == 8 {
        return steps;
    }
    // Garbage, then gone.
    let _ = c.send_raw(b"DMPL garbage that is not a message");
    steps
}

#[test]
fn a_thousand_abrupt_disconnects_leak_nothing() {
    println!("seed {SEED:#x}, {CLIENTS} clients in {THREADS} threads");
    let d = Daemon::start("fault", &["--backend", "sim", "--platform", "refsoc", "--seed", "3"]);
    let mut holder = Client::connect(&d.socket, "holder").unwrap();
    let shared = holder.create(Desc::Size(1 << 20), "shared").unwrap();
    let ha = holder.attach(&shared.token, "gpu", hints::RENDERING).unwrap();
    let hm = holder.map(ha.attachment).unwrap();
    let written = {
        let mut bytes = vec![0u8; 1 << 20];
        dmaplace_linux::backend::fill_pattern(&mut bytes, 77);
        rustix::io::pwrite(&hm.fd, &bytes, 0).unwrap();
        dmaplace_linux::backend::digest(&bytes)
    };
    let before = inspect(&mut holder);
    let baseline_fds = d.fd_count();
    println!("baseline: daemon fds {baseline_fds}, accounting {}", before["accounting"]);

    let mut histogram = [0u64; 10];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let socket = d.socket.clone();
                let token = shared.token;
                s.spawn(move || {
                    let mut rng = Rng(SEED ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let mut h = [0u64; 10];
                    for _ in 0..CLIENTS / THREADS {
                        h[usize::try_from(doomed(&socket, &token, &mut rng)).unwrap()] += 1;
                    }
                    h
                })
            })
            .collect();
        for h in handles {
            for (i, n) in h.join().unwrap().iter().enumerate() {
                histogram[i] += n;
            }
        }
    });
    println!("clients by the step they died after: {histogram:?}");
    assert_eq!(histogram.iter().sum::<u64>(), CLIENTS);
    assert!(histogram.iter().all(|n| *n > 0), "every point of death was exercised: {histogram:?}");

    // The daemon notices each death on its own time: wait until only the holder is left.
    let t0 = Instant::now();
    let after = loop {
        let v = inspect(&mut holder);
        if v["clients"].as_array().map(Vec::len) == Some(1) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "clients still connected after 60 s: {}", v["clients"]);
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("after: daemon fds {}, accounting {}", d.fd_count(), after["accounting"]);
    assert_eq!(after["accounting"], before["accounting"], "backings, mappings and bytes are back to the holder's");
    assert_eq!(after["accounting"]["backings"], 1);
    assert_eq!(after["accounting"]["mappings"], 1);
    let buffers = after["buffers"].as_array().unwrap();
    assert_eq!(buffers.len(), 1, "only the shared buffer is left: {buffers:?}");
    assert_eq!(buffers[0]["holders"], 1);
    assert_eq!(buffers[0]["attachments"].as_array().unwrap().len(), 1);
    assert_eq!(d.fd_count(), baseline_fds, "the daemon's open fds are back to the baseline");
    assert!(after["stats"]["allocations"].as_u64().unwrap() > 100, "the clients really allocated: {}", after["stats"]);

    // The surviving holder's buffer kept its bytes and still works.
    let mut back = vec![0u8; 1 << 20];
    rustix::io::pread(&hm.fd, &mut back, 0).unwrap();
    assert_eq!(dmaplace_linux::backend::digest(&back), written);
    holder.begin_access(hm.mapping).unwrap();
    holder.end_access(hm.mapping).unwrap();
    holder.release(shared.buffer).unwrap();
    assert_eq!(inspect(&mut holder)["accounting"]["backings"], 0);
}
