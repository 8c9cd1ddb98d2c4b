//! Three processes share one buffer through dmaplaced: a producer, a consumer and a
//! late consumer with a tighter placement need.
//!
//! - allocation happens at the first map (not before: `status` says unallocated);
//! - while the producer's device is in DMA (`begin_access`), the late attach is refused
//!   (`--busy refuse`: `busy`) or queued (`--busy queue`: its map is `move_pending` until
//!   the access ends);
//! - once idle, the late consumer forces a move: both earlier holders get `moved`
//!   naming their stale mapping, map again and read back exactly what the producer
//!   wrote (each process checksums its own mmap of the new fd);
//! - the daemon's own view (`inspect`) agrees: one migration, one contiguous segment.
//!
//! Host: the simulated refsoc (gpu, g2d, then dpu with SCANOUT: contiguous, 32-bit).
//! qemu guest (`vm/test-daemon.sh`): the custom kernel's real heaps, with a platform
//! of this guest's RAM and CMA and three devices: two unconstrained, and one that may
//! only use the CMA area, contiguously; the system heap cannot serve it, so it moves.
//! With the kernel module loaded (`vm/test-daemon.sh --boot kmod`, 6 GiB so that RAM
//! extends above 4 GiB): `dmaplaced --backend kmod`, the module is the exporter; the
//! devices are the test importer's fake devices (two 64-bit ones, and a 32-bit display
//! DECLAREd contiguous and 64 KiB aligned), the first placement lands above 4 GiB, and
//! the module moves it below for the display; afterwards the module holds no page of
//! the test's buffers once every process has closed its fds.
//!
//! Runs as its own main (harness = false): it re-executes itself as each client.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::{Agent, Daemon};
use serde_json::Value;

struct Setup {
    daemon_args: Vec<String>,
    /// The kernel module is the exporter (its buffer is checked in debugfs afterwards).
    kmod: bool,
    producer: &'static str,
    consumer: &'static str,
    late: &'static str,
    size: u64,
    /// The late device needs one contiguous segment (checked in `inspect`).
    late_contiguous: bool,
}

fn host_setup() -> Setup {
    Setup {
        daemon_args: ["--backend", "sim", "--platform", "refsoc", "--seed", "7"].map(String::from).to_vec(),
        kmod: false,
        producer: "gpu RENDERING",
        consumer: "g2d -",
        late: "dpu SCANOUT",
        size: 8 << 20,
        late_contiguous: true,
    }
}

/// This guest's platform: RAM and CMA as probed, plus three test devices.
fn guest_setup() -> Result<Setup, String> {
    let probed = dmaplace_linux::probe::probe(&dmaplace_linux::probe::Root::system());
    let cma = probed.cma.first().ok_or("this kernel has no CMA area (the Debian kernel): nothing to move to")?;
    let mut toml = probed.to_toml();
    // Keep the probe's memory; the devices are the test's (what a real platform file
    // would say about a camera, a blitter and a display that scans out of CMA).
    if let Some(i) = toml.find("\n[[device]]") {
        toml.truncate(i);
    }
    toml.push_str(&format!(
        "\n[[device]]\nname = \"gpu64\"\nclass = \"gpu\"\n\n[[device]]\nname = \"blit64\"\nclass = \"dma\"\n\n[[device]]\nname = \"display-cma\"\nclass = \"display\"\n[device.placement]\nregions = [\"{}\"]\nmax_segments = 1\n",
        cma.value.name
    ));
    let path = "/tmp/dmaplace-guest.toml";
    std::fs::write(path, &toml).map_err(|e| e.to_string())?;
    println!("guest platform:\n{toml}");
    Ok(Setup {
        daemon_args: ["--backend", "heaps", "--platform", path].map(String::from).to_vec(),
        kmod: false,
        producer: "gpu64 RENDERING",
        consumer: "blit64 -",
        late: "display-cma SCANOUT",
        size: 8 << 20,
        late_contiguous: true,
    })
}

/// The kernel module's devices: the test importer's fake devices, the display DECLAREd.
fn kmod_setup() -> Result<Setup, String> {
    use dmaplace_linux::kmod::{Dmaplace, FakeDevice, TestDev};
    let td = TestDev::open().map_err(|e| format!("{}: {e}", dmaplace_linux::kmod::DEV_TESTDEV))?;
    let dp = Dmaplace::open().map_err(|e| format!("{}: {e}", dmaplace_linux::kmod::DEV_DMAPLACE))?;
    for (name, bits) in [("svc-gpu64", 64), ("svc-blit64", 64), ("svc-display32", 32)] {
        td.ensure_device(&FakeDevice::new(name, bits)).map_err(|e| format!("creating {name}: {e}"))?;
    }
    // A display: one contiguous range, 64 KiB aligned (the proposed device_dma_parameters).
    dp.declare("svc-display32", 1, 64 << 10).map_err(|e| format!("DECLARE svc-display32: {e}"))?;
    Ok(Setup {
        daemon_args: ["--backend", "kmod"].map(String::from).to_vec(),
        kmod: true,
        producer: "svc-gpu64 RENDERING",
        consumer: "svc-blit64 -",
        late: "svc-display32 SCANOUT",
        size: 4 << 20,
        late_contiguous: true,
    })
}

/// The module's record of the test's buffers (`frame`), from debugfs.
fn module_frames() -> Vec<dmaplace_linux::kmod::BufferInfo> {
    let snap = dmaplace_linux::kmod::Snapshot::read().expect("the module's debugfs");
    snap.buffers.into_iter().filter(|b| b.name == "frame").collect()
}

/// Waits (10 s at most) until the module holds none of the test's buffers.
fn module_frames_gone() {
    let t0 = std::time::Instant::now();
    while !module_frames().is_empty() {
        assert!(t0.elapsed().as_secs() < 10, "the module still holds the buffer: {:#?}", module_frames());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn moved(a: &mut Agent, generation: u64, stale: &Value) {
    let v = a.ok("wait-moved 5000");
    let m = &v["moved"];
    assert!(m.is_object(), "{}: no moved event: {v}", a.name);
    assert_eq!(m["generation"], generation, "{}", a.name);
    assert_eq!(m["invalidated"], serde_json::json!([stale]), "{}: the stale mapping", a.name);
}

fn scenario(s: &Setup, queue: bool) {
    let mut args: Vec<&str> = s.daemon_args.iter().map(String::as_str).collect();
    args.extend(["--busy", if queue { "queue" } else { "refuse" }]);
    let d = Daemon::start("three", &args);
    let mut p = Agent::spawn("producer", &d.socket, &[]);
    let mut c = Agent::spawn("consumer", &d.socket, &[]);
    let mut l = Agent::spawn("late", &d.socket, &[]);

    let created = p.ok(&format!("create size {} frame", s.size));
    let token = created["token"].as_str().unwrap().to_owned();
    let pa = p.ok(&format!("attach {token} {}", s.producer));
    assert_eq!(pa["how"], "BeforeAllocation");
    let ca = c.ok(&format!("attach {token} {}", s.consumer));
    assert_eq!(ca["how"], "BeforeAllocation");
    let st = p.ok("status");
    assert_eq!(st["buffers"][0]["allocated"], false, "nothing is allocated before the first map");

    // The first map allocates, for both attachments.
    let pm = p.ok(&format!("map {}", pa["attachment"]));
    assert_eq!(pm["generation"], 0);
    assert_eq!(p.ok("status")["buffers"][0]["allocated"], true);
    let written = p.ok(&format!("write {} 4242", pm["mapping"]))["checksum"].clone();
    if s.kmod {
        // The 64-bit devices' pages must not already suit the display, or nothing moves.
        let b = module_frames();
        assert_eq!(b.len(), 1, "{b:#?}");
        assert!(
            b[0].segments.len() > 1 || b[0].segments.iter().any(|x| x.phys + x.len > 1 << 32),
            "the first placement already suits a 32-bit contiguous display: the test proves nothing: {b:#?}"
        );
        println!("first placement (module): {:?}", b[0].segments);
    }
    let cm = c.ok(&format!("map {}", ca["attachment"]));
    assert_eq!(c.ok(&format!("read {}", cm["mapping"]))["checksum"], written, "the consumer sees the producer's bytes");

    // DMA in flight: a move now is refused or queued.
    p.ok(&format!("begin {}", pm["mapping"]));
    let late_att;
    if queue {
        let la = l.ok(&format!("attach {token} {}", s.late));
        assert_eq!(la["how"], "Queued");
        late_att = la["attachment"].clone();
        l.fails(&format!("map {late_att}"), "move_pending");
        assert_eq!(p.ok("wait-moved 300")["timeout"], true, "no move while DMA is in flight");
        p.ok(&format!("end {}", pm["mapping"]));
    } else {
        let refused = l.fails(&format!("attach {token} {}", s.late), "busy");
        assert!(refused["message"].as_str().unwrap().contains("unsignalled fence"), "{refused}");
        p.ok(&format!("end {}", pm["mapping"]));
        let la = l.ok(&format!("attach {token} {}", s.late));
        assert_eq!(la["how"], "Migrated", "idle: the late attach moves the buffer");
        late_att = la["attachment"].clone();
    }

    // Both earlier holders are told, map again, and find the same bytes.
    moved(&mut p, 1, &pm["mapping"]);
    moved(&mut c, 1, &cm["mapping"]);
    p.fails(&format!("begin {}", pm["mapping"]), "stale");
    for (a, old, att) in [(&mut p, &pm, &pa), (&mut c, &cm, &ca)] {
        a.ok(&format!("unmap {}", old["mapping"]));
        let m = a.ok(&format!("map {}", att["attachment"]));
        assert_eq!(m["generation"], 1);
        assert_eq!(a.ok(&format!("read {}", m["mapping"]))["checksum"], written, "{}: contents preserved", a.name);
    }
    let lm = l.ok(&format!("map {late_att}"));
    assert_eq!(l.ok(&format!("read {}", lm["mapping"]))["checksum"], written);

    // The daemon's own account.
    let view = p.ok("inspect")["inspect"].clone();
    assert_eq!(view["stats"]["migrations"], 1, "{view}");
    let buffer = &view["buffers"][0];
    assert_eq!(buffer["generation"], 1);
    if s.late_contiguous {
        assert_eq!(buffer["backing"]["segments"].as_array().map(Vec::len), Some(1), "{buffer}");
    }
    assert_eq!(view["accounting"]["backings"], 1, "the old backing was freed");

    if s.kmod {
        let b = module_frames();
        assert_eq!((b.len(), b[0].migrations, b[0].segments.len()), (1, 1, 1), "{b:#?}");
        assert!(b[0].segments[0].phys + b[0].segments[0].len <= 1 << 32, "moved, but not below 4 GiB: {b:#?}");
        println!("after the move (module): {:?}", b[0].segments);
    }

    // Everyone lets go: the buffer is freed.
    for a in [&mut p, &mut c, &mut l] {
        a.ok("release 1");
    }
    let view = p.ok("inspect")["inspect"].clone();
    assert_eq!(view["buffers"], serde_json::json!([]));
    assert_eq!(view["accounting"]["backings"], 0);
    if s.kmod {
        // The clients still hold their fds (the agents keep what they mapped): the
        // module frees the pages when the last one is closed.
        drop((p, c, l));
        module_frames_gone();
    }
}

/// Kernel module only: a driver outside the daemon (the test importer, in this process)
/// imports a holder's fd and maps it for a device the backing does not serve; the
/// module moves the buffer, and the daemon, polling the module's record, tells the
/// holder (`moved`, its mapping stale).
fn kmod_move_by_a_driver_outside_the_daemon() {
    use std::os::fd::AsFd;
    let d = Daemon::start("outside", &["--backend", "kmod"]);
    let mut c = dmaplace::Client::connect(&d.socket, "holder").unwrap();
    let b = c.create(dmaplace::Desc::Size(4 << 20), "frame").unwrap();
    let a = c.attach(&b.token, "svc-gpu64", 0).unwrap();
    let m = c.map(a.attachment).unwrap();
    let first = module_frames();
    assert!(first[0].segments.iter().any(|x| x.phys + x.len > 1 << 32), "already below 4 GiB: {first:#?}");
    let td = dmaplace_linux::kmod::TestDev::open().unwrap();
    let h = td.attach(m.fd.as_fd(), "svc-display32", true).expect("the driver attaches");
    td.map(h).expect("the driver maps: the module moves the buffer");
    td.unmap(h).unwrap();
    match c.next_event(std::time::Duration::from_secs(5)).unwrap() {
        Some(dmaplace::Event::Moved { generation, invalidated, .. }) => {
            assert_eq!((generation, invalidated), (1, vec![m.mapping]));
        }
        None => panic!("no moved event within 5 s:\n{}", d.log()),
    }
    let view: Value = serde_json::from_str(&c.inspect().unwrap()).unwrap();
    assert_eq!(view["stats"]["outside_moves"], 1, "{view}");
    td.detach(h).unwrap();
    c.release(b.buffer).unwrap();
    drop(m);
    module_frames_gone();
}

/// The C example (`examples/c/scanout.c`, static, copied to /scanout-static by
/// vm/test-daemon.sh) against a daemon on this guest's probed platform and real heaps:
/// a scanout buffer for cirrus through the daemon, imported into KMS with ADDFB2.
fn c_example_addfb2() {
    let probed = dmaplace_linux::probe::probe(&dmaplace_linux::probe::Root::system());
    let cirrus = probed.devices.iter().find(|d| d.ids == "1013:00b8").expect("cirrus-vga");
    let card = cirrus.nodes.iter().find(|n| n.starts_with("/dev/dri/card")).expect("cirrus has a DRM card");
    let d = Daemon::start("c-example", &["--backend", "heaps", "--platform", "probe"]);
    let out = std::process::Command::new("/scanout-static")
        .args([d.socket.to_str().unwrap(), &cirrus.name, "1024x768", card])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scanout exited with {}:\n{}", out.status, d.log());
    assert!(
        text.contains("layout: 1024x768 fourcc XR24 modifier 0x0 size 3145728 planes 1 pitch 4096 offset 0"),
        "{text}"
    );
    assert!(text.contains(&format!("ADDFB2 {card}: framebuffer ")), "{text}");
    assert!(text.lines().any(|l| l == "PASS"), "{text}");
}

fn main() {
    if common::agent_role() {
        return;
    }
    let in_guest = std::env::var("DMAPLACE_IN_GUEST").as_deref() == Ok("1");
    let module = in_guest && dmaplace_linux::kmod::modules_loaded();
    let setup = if module {
        match kmod_setup() {
            Ok(s) => Some(s),
            Err(why) => panic!("the kernel module is loaded but unusable: {why}"),
        }
    } else if in_guest {
        match guest_setup() {
            Ok(s) => Some(s),
            Err(why) => {
                println!("three_process: the move scenarios are skipped in this guest: {why}");
                None
            }
        }
    } else {
        Some(host_setup())
    };
    let (mut passed, mut failed) = (0, 0);
    type Run<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let mut runs: Vec<Run<'_>> = Vec::new();
    if let Some(s) = &setup {
        runs.push(("move_when_idle_busy_refused", Box::new(move || scenario(s, false))));
        runs.push(("move_when_idle_busy_queued", Box::new(move || scenario(s, true))));
    }
    if module {
        runs.push(("kmod_move_by_a_driver_outside_the_daemon", Box::new(kmod_move_by_a_driver_outside_the_daemon)));
    }
    if in_guest && !module && std::path::Path::new("/scanout-static").exists() {
        runs.push(("c_example_scanout_addfb2", Box::new(c_example_addfb2)));
    }
    for (name, run) in runs {
        println!("--- {name}");
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(()) => {
                println!("--- {name}: ok");
                passed += 1;
            }
            Err(_) => {
                println!("--- {name}: FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
