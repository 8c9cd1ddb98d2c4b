//! Placement policy: fragmentation and CMA migration, zone preference, carveout
//! isolation, determinism, content preservation, cache-maintenance counting.

use dmaplace_core::backend::{Backend, CpuAccess};
use dmaplace_core::units::{PageSize, PhysAddr, PhysRange, Size};
use dmaplace_core::window::Window;
use dmaplace_core::{Backing, BufferDesc, Plan, Platform, Request, Usage, solve, verify};
use dmaplace_sim::{
    BackgroundLoad, ContentMode, InvariantViolation, Machine, SimConfig, SimError, SyntheticPlatform, Zone,
};

fn plan(p: &Platform, size: Size, devices: &[(&str, Usage)]) -> Plan {
    let reqs: Vec<Request<'_>> =
        devices.iter().map(|(d, hints)| Request { device: p.device(d).unwrap(), hints: *hints }).collect();
    solve(p, &BufferDesc::Size(size), &reqs).unwrap()
}

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
}

fn inside(b: &Backing, w: &Window) -> bool {
    b.segments.iter().all(|s| w.contains_range(*s))
}

fn overlaps(b: &Backing, r: PhysRange) -> bool {
    b.segments.iter().any(|s| s.intersect(r).is_some())
}

#[test]
fn fragmentation_defeats_contiguity_until_cma_migrates_borrowers() {
    let scanout = |p: &Platform| plan(p, Size::mib(4), &[("display", Usage::SCANOUT)]);
    let load = BackgroundLoad::FRAGMENTING;

    // Without CMA: half the memory is free, but in holes; no 4 MiB block is left.
    let p = SyntheticPlatform::new(Size::mib(256)).with_cma(Size::ZERO).build();
    let mut m = Machine::new(&p, SimConfig::seeded(11).with_background(load)).unwrap();
    let report = m.free_report();
    let dma32 = report.pool("DMA32").unwrap();
    assert!(dma32.free >= Size::mib(100), "{report}");
    assert!(dma32.largest < Size::mib(4), "{report}");
    let err = m.allocate(&scanout(&p), "fb").unwrap_err();
    assert!(matches!(err, SimError::OutOfMemory { contiguous: true, .. }), "{err}");
    assert!(err.to_string().contains("buffer `fb`: out of memory for 4 MiB contiguous"), "{err}");
    // A scattered buffer of the same size still fits.
    let spread = m.allocate(&plan(&p, Size::mib(4), &[("cpu", Usage::RENDERING)]), "spread").unwrap();
    m.free(spread);
    m.check().unwrap();

    // With a 64 MiB CMA area lent to movable pages: the claim migrates them out.
    let p = SyntheticPlatform::new(Size::mib(256)).with_cma(Size::mib(64)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(11).with_background(load)).unwrap();
    let (_, in_cma) = m.background_bytes();
    assert!(in_cma > 0, "the background load borrows CMA");
    let start = m.free_report();
    let digest = m.background_digest();
    let b = m.allocate(&scanout(&p), "fb").unwrap();
    let backing = m.describe(&b).unwrap();
    let cma = p.memory.cma_window();
    assert_eq!(backing.segments.len(), 1);
    assert!(inside(&backing, &cma), "{backing:?} not in {cma}");
    let c = m.counters().clone();
    assert_eq!(c.cma_claims, 1);
    assert!(c.cma_pages_migrated > 0, "{c:?}");
    assert_eq!(c.cma_bytes_migrated, c.cma_pages_migrated * 4096);
    // Migration moved the borrowers' content along.
    assert_eq!(m.background_digest(), digest);
    m.check().unwrap();
    m.free(b);
    m.check().unwrap();
    // Borrowers moved inside the region, so every pool's free count is back.
    assert_eq!(c.cma_migrations_to_zones, 0);
    assert!(m.free_report().same_free(&start), "{}\nvs\n{start}", m.free_report());
}

#[test]
fn contiguous_over_the_largest_block_comes_from_cma() {
    let p = SyntheticPlatform::new(Size::mib(512)).with_cma(Size::mib(64)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(5)).unwrap();
    assert_eq!(m.max_order(), 10);
    let big = plan(&p, Size::mib(24), &[("display", Usage::SCANOUT)]);
    let b = m.allocate(&big, "big").unwrap();
    let backing = m.describe(&b).unwrap();
    assert!(inside(&backing, &p.memory.cma_window()));
    assert_eq!(backing.runs().len(), 1);
    // A second fits in what is left of the 64 MiB area, a third does not, and the zones
    // cannot hold a 24 MiB run at all.
    let b2 = m.allocate(&big, "big2").unwrap();
    let err = m.allocate(&big, "big3").unwrap_err();
    assert!(matches!(err, SimError::OutOfMemory { .. }), "{err}");
    m.free(b);
    m.free(b2);
    m.check().unwrap();
    assert_eq!(m.counters().failed_allocations, 1);
}

#[test]
fn zones_prefer_normal_and_keep_dma32_for_devices_that_need_it() {
    let p = SyntheticPlatform::new(Size::gib(8)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(3)).unwrap();
    let low = Window::below(1 << 32);
    let high = Window::from_ranges([range(1 << 32, 8 << 30)]);
    let any = plan(&p, Size::mib(256), &[("cpu", Usage::RENDERING)]);
    let dma32 = plan(&p, Size::mib(16), &[("capture", Usage::CAMERA_WRITE)]);

    let b = m.allocate(&any, "any").unwrap();
    assert!(inside(&m.describe(&b).unwrap(), &high), "unconstrained buffers go to Normal first");
    let c = m.allocate(&dma32, "capture").unwrap();
    assert!(inside(&m.describe(&c).unwrap(), &low));
    // Fill Normal (4 GiB): 15 more 256 MiB buffers.
    let mut held = vec![b];
    for i in 0..15 {
        let x = m.allocate(&any, &format!("fill{i}")).unwrap();
        assert!(inside(&m.describe(&x).unwrap(), &high));
        held.push(x);
    }
    assert_eq!(m.free_report().pool("Normal").unwrap().free, Size::ZERO);
    // Then the zone list falls back to DMA32.
    let spill = m.allocate(&any, "spill").unwrap();
    assert!(inside(&m.describe(&spill).unwrap(), &low));
    held.push(spill);
    for x in held {
        m.free(x);
    }
    m.free(c);
    m.check().unwrap();
    assert_eq!(m.free_report().pool("Normal").unwrap().free, Size::gib(4));
    assert!(matches!(m.free_report().pools[0].kind, dmaplace_sim::PoolKind::Zone(Zone::Normal)));
}

#[test]
fn carveouts_are_used_only_when_named() {
    let p = SyntheticPlatform::new(Size::mib(512))
        .with_cma(Size::mib(32))
        .with_carveout("isp", Size::mib(32), false)
        .with_carveout("secure-video", Size::mib(16), true)
        .build();
    let isp = p.memory.region("isp").unwrap().range;
    let secure = p.memory.region("secure-video").unwrap().range;
    let mut m = Machine::new(&p, SimConfig::seeded(9)).unwrap();
    let start = m.free_report();

    // Exhaust everything an unnamed plan can use: no chunk lands in a carveout.
    let any = plan(&p, Size::mib(16), &[("cpu", Usage::RENDERING)]);
    let mut held = Vec::new();
    while let Ok(b) = m.allocate(&any, "filler") {
        let backing = m.describe(&b).unwrap();
        assert!(!overlaps(&backing, isp) && !overlaps(&backing, secure), "{backing:?}");
        held.push(b);
    }
    assert!(held.len() >= 28, "{} buffers", held.len());
    assert_eq!(m.free_report().pool("isp").unwrap().free, Size::mib(32));

    // The device that names the carveout gets it.
    let named = plan(&p, Size::mib(8), &[("isp-user", Usage::CAMERA_WRITE)]);
    let b = m.allocate(&named, "isp-frame").unwrap();
    let backing = m.describe(&b).unwrap();
    assert!(backing.segments.iter().all(|s| isp.contains_range(*s)) && !backing.protected);

    // Protected memory comes from the protected carveout only.
    let sec = plan(&p, Size::mib(4), &[("secure", Usage::VIDEO_DECODE)]);
    let s = m.allocate(&sec, "secure-frame").unwrap();
    let sb = m.describe(&s).unwrap();
    assert!(sb.protected && sb.segments.iter().all(|x| secure.contains_range(*x)));
    verify(&sec, &sec.devices, &sb).unwrap();
    m.check().unwrap();

    held.extend([b, s]);
    for b in held {
        m.free(b);
    }
    m.check().unwrap();
    assert!(m.free_report().same_free(&start));
}

fn run_script(seed: u64) -> (Vec<Backing>, dmaplace_sim::Counters, u64) {
    let p = SyntheticPlatform::new(Size::mib(256)).with_cma(Size::mib(64)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(seed).with_background(BackgroundLoad::FRAGMENTING)).unwrap();
    let plans = [
        plan(&p, Size::mib(3), &[("cpu", Usage::RENDERING)]),
        plan(&p, Size::mib(8), &[("display", Usage::SCANOUT)]),
        plan(&p, Size::kib(200), &[("gpu", Usage::RENDERING)]),
        plan(&p, Size::mib(5), &[("capture", Usage::CAMERA_WRITE)]),
    ];
    let mut out = Vec::new();
    let mut held = Vec::new();
    for i in 0..24 {
        let b = m.allocate(&plans[i % plans.len()], &format!("b{i}")).unwrap();
        out.push(m.describe(&b).unwrap());
        held.push(b);
        if i % 3 == 2 {
            m.free(held.remove(0));
        }
        m.background_step(20);
    }
    for b in held {
        m.free(b);
    }
    m.check().unwrap();
    (out, m.counters().clone(), m.background_digest())
}

#[test]
fn same_seed_same_placements_and_counters() {
    let a = run_script(42);
    let b = run_script(42);
    assert_eq!(a, b);
    let c = run_script(43);
    assert_ne!(a.0, c.0, "a different seed fragments memory differently");
}

#[test]
fn content_survives_copy_to_a_different_layout() {
    let p = SyntheticPlatform::new(Size::mib(256)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    assert!(m.keeps_bytes());
    let scattered = plan(&p, Size::mib(2), &[("v3d", Usage::TEXTURING)]);
    let contiguous = plan(&p, Size::mib(2), &[("display", Usage::SCANOUT)]);
    let a = m.allocate(&scattered, "a").unwrap();
    m.write(&a, 4090, b"across a page boundary").unwrap();
    m.fill(&a, 7).unwrap();
    m.write(&a, 10, b"hello").unwrap();
    let sum = m.checksum(&a).unwrap();
    let b = m.allocate(&contiguous, "b").unwrap();
    assert_ne!(m.checksum(&b).unwrap(), sum);
    assert_eq!(m.copy(&a, &b, Size::mib(2)).unwrap(), Size::mib(2));
    assert_eq!(m.checksum(&b).unwrap(), sum);
    assert_eq!(m.read(&b, 10, 5).unwrap(), b"hello");
    assert!(matches!(m.write(&b, (2 << 20) - 2, b"xyz"), Err(SimError::OutOfBounds { .. })));
    m.free(a);
    m.free(b);
    assert_eq!(m.content_frames(), 0, "freed frames forget their content");

    // Checksum mode: no bytes, same guarantees.
    let cfg = SimConfig { content: ContentMode::Checksum, ..SimConfig::seeded(1) };
    let mut m = Machine::new(&p, cfg).unwrap();
    let a = m.allocate(&scattered, "a").unwrap();
    m.fill(&a, 99).unwrap();
    let b = m.allocate(&contiguous, "b").unwrap();
    m.copy(&a, &b, Size::mib(2)).unwrap();
    assert_eq!(m.checksum(&a).unwrap(), m.checksum(&b).unwrap());
    assert!(matches!(m.read(&a, 0, 1), Err(SimError::NoBytes { .. })));
    m.free(a);
    m.free(b);
    m.check().unwrap();
}

#[test]
fn cache_maintenance_follows_the_documented_rule() {
    let p = SyntheticPlatform::new(Size::mib(256)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    // Cached (the synthetic platform prefers cached), V3D is not coherent, cpu is.
    let cached = plan(&p, Size::mib(1), &[("v3d", Usage::TEXTURING), ("cpu", Usage::RENDERING)]);
    assert_eq!(cached.cache_mode.value, dmaplace_core::CacheMode::Cached);
    let b = m.allocate(&cached, "tex").unwrap();
    let runs = m.describe(&b).unwrap().runs().len() as u64;
    let devs: Vec<&dmaplace_core::Effective> = cached.devices.iter().collect();
    assert_eq!(m.cpu_sync(&b, &devs, CpuAccess::Read, true).unwrap(), runs, "begin read: invalidate, V3D only");
    assert_eq!(m.cpu_sync(&b, &devs, CpuAccess::Write, true).unwrap(), runs, "begin write: clean");
    assert_eq!(m.cpu_sync(&b, &devs, CpuAccess::ReadWrite, true).unwrap(), 2 * runs);
    assert_eq!(m.cpu_sync(&b, &devs, CpuAccess::Read, false).unwrap(), runs, "end: clean");
    assert_eq!(m.cpu_sync(&b, &devs[1..], CpuAccess::ReadWrite, true).unwrap(), 0, "coherent device: nothing");
    let c = m.counters().clone();
    assert_eq!((c.cache_cleans, c.cache_invalidates, c.wc_flushes), (3 * runs, 2 * runs, 0));

    // Write-combined (the display asks for it): one WC flush at the end of a write.
    let wc = plan(&p, Size::mib(1), &[("display", Usage::SCANOUT)]);
    let w = m.allocate(&wc, "fb").unwrap();
    let wdev: Vec<&dmaplace_core::Effective> = wc.devices.iter().collect();
    assert_eq!(m.cpu_sync(&w, &wdev, CpuAccess::Write, true).unwrap(), 0);
    assert_eq!(m.cpu_sync(&w, &wdev, CpuAccess::Write, false).unwrap(), 1);
    assert_eq!(m.cpu_sync(&w, &wdev, CpuAccess::Read, false).unwrap(), 0);
    m.free(b);
    m.free(w);
    m.check().unwrap();
}

#[test]
fn misuse_is_reported_by_the_checker() {
    let p = SyntheticPlatform::new(Size::mib(64)).build();
    let mut m1 = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    let mut m2 = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    let pl = plan(&p, Size::mib(1), &[("cpu", Usage::RENDERING)]);
    let b = m1.allocate(&pl, "mine").unwrap();
    assert!(matches!(m2.describe(&b), Err(SimError::StaleHandle { .. })));
    // Freeing m1's buffer on m2 is recorded there.
    m2.free(b);
    let err = m2.check().unwrap_err();
    assert!(matches!(err.0[0], InvariantViolation::Misuse(_)), "{err}");
    // And m1 still holds the buffer: its frames are not free.
    assert_eq!(m1.live_buffers(), 1);
    // Freeing a mapped buffer is reported too.
    let gpu = plan(&p, Size::mib(1), &[("gpu", Usage::RENDERING)]);
    let g = m1.allocate(&gpu, "mapped").unwrap();
    let (_map, _) = m1.map(&gpu.devices[0], &g).unwrap();
    m1.free(g);
    let err = m1.check().unwrap_err();
    assert!(err.to_string().contains("freed while"), "{err}");
}

#[test]
fn unreachable_and_segment_limits_fail_the_map() {
    let p = SyntheticPlatform::new(Size::gib(8)).build();
    let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    let any = plan(&p, Size::mib(8), &[("cpu", Usage::RENDERING)]);
    let b = m.allocate(&any, "high").unwrap();
    // The capture device reaches only 32 bits: it cannot map a buffer in Normal.
    let cap = plan(&p, Size::mib(8), &[("capture", Usage::CAMERA_WRITE)]);
    let err = m.map(&cap.devices[0], &b).unwrap_err();
    assert!(matches!(err, SimError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("device `capture` cannot reach segment"), "{err}");
    // Its own buffer maps with sg entries split at 1 MiB.
    let c = m.allocate(&cap, "cap").unwrap();
    let (cm, sg) = m.map(&cap.devices[0], &c).unwrap();
    assert!(sg.entries.iter().all(|e| e.len <= Size::mib(1)));
    assert_eq!(sg.len(), Size::mib(8));
    assert!(sg.entries.len() <= 64);
    m.unmap(&cap.devices[0], cm);
    m.free(b);
    m.free(c);
    m.check().unwrap();
    let _ = PageSize::SZ_4K;
}
