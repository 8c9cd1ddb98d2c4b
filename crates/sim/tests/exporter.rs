//! The exporter state machine on the simulated machine: deferred allocation, each
//! late-attach branch, move_notify, fences, CPU access, collections and alloc_for.

use std::cell::RefCell;
use std::rc::Rc;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::exporter::{
    AllocationTime, AttachHow, BusyPolicy, Event, ExportError, Exporter, ExporterConfig, MoveNotice, MoveNotify,
};
use dmaplace_core::layout::parse_fourcc;
use dmaplace_core::{BufferDesc, ImageDesc, Platform, Size, Usage, builtin};
use dmaplace_sim::{BackgroundLoad, Machine, SimConfig};

const GIB: u64 = 1 << 30;

fn refsoc() -> Platform {
    builtin::load("refsoc").unwrap().unwrap()
}

fn exporter_with(config: ExporterConfig, seed: u64) -> Exporter<Machine> {
    let p = refsoc();
    let m = Machine::new(&p, SimConfig::seeded(seed).with_background(BackgroundLoad::FRAGMENTING)).unwrap();
    Exporter::new(p, m, config)
}

fn exporter() -> Exporter<Machine> {
    exporter_with(ExporterConfig::default(), 1)
}

fn frame() -> BufferDesc {
    BufferDesc::Image(ImageDesc { width: 1920, height: 1080, format: parse_fourcc("NV12").unwrap(), modifiers: vec![] })
}

fn check(e: &Exporter<Machine>) {
    e.check_invariants().unwrap();
    e.backend().check().unwrap();
}

fn segments(e: &Exporter<Machine>, b: dmaplace_core::exporter::BufferId) -> Vec<dmaplace_core::PhysRange> {
    let backing = e.backing(b).unwrap().unwrap();
    e.backend().backing(backing).unwrap().segments
}

type Notices = Rc<RefCell<Vec<MoveNotice>>>;

fn recorder() -> (Notices, MoveNotify) {
    let log: Notices = Rc::default();
    let sink = log.clone();
    (log, Box::new(move |n: &MoveNotice| sink.borrow_mut().push(n.clone())))
}

#[test]
fn first_map_allocates_once_for_every_attached_device() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    let dpu = e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    assert!(e.backing(b).unwrap().is_none(), "nothing is allocated before the first map");
    assert_eq!(e.backend().live_buffers(), 0);

    let (_, gpu_sg) = e.map(gpu).unwrap();
    let plan = e.plan(b).unwrap().unwrap().clone();
    assert!(plan.contiguous(), "the display's SCANOUT rule was known at the first map");
    let names: Vec<&str> = plan.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["gpu", "dpu"]);
    let segs = segments(&e, b);
    assert_eq!(segs.len(), 1);
    assert!(segs[0].end().get() <= 4 * GIB, "the dpu's 32-bit mask: {segs:?}");

    let (_, dpu_sg) = e.map(dpu).unwrap();
    assert_eq!(e.stats().allocations, 1, "the second map reuses the backing");
    // No IOMMU: the display sees the physical address. The GPU sees an IOVA of its MMU.
    assert_eq!(dpu_sg.entries.len(), 1);
    assert_eq!(dpu_sg.entries[0].dma_addr.get(), segs[0].start().get());
    assert_eq!(gpu_sg.len(), dpu_sg.len());
    check(&e);
}

#[test]
fn late_attach_that_fits_is_logical() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    e.map(gpu).unwrap();
    let before = segments(&e, b);
    e.take_events();
    // g2d sits behind an SMMU: any page anywhere will do.
    let g2d = e.attach(b, "g2d", Usage::empty()).unwrap();
    assert!(matches!(e.take_events().as_slice(), [Event::Attached { how: AttachHow::Fits, .. }]));
    assert_eq!((e.stats().migrations, e.stats().logical_attaches, e.generation(b).unwrap()), (0, 1, 0));
    e.map(g2d).unwrap();
    assert_eq!(segments(&e, b), before);
    check(&e);
}

#[test]
fn late_attach_migrates_when_idle_and_notifies_every_importer() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let (gpu_log, gpu_cb) = recorder();
    let (dpu_log, dpu_cb) = recorder();
    let gpu = e.attach_dynamic(b, "gpu", Usage::RENDERING, gpu_cb).unwrap();
    let dpu = e.attach_dynamic(b, "dpu", Usage::SCANOUT, dpu_cb).unwrap();
    let (gpu_map, _) = e.map(gpu).unwrap();
    let (dpu_map, _) = e.map(dpu).unwrap();
    e.dma_write(gpu_map, 0xfeed).unwrap();
    let before = e.dma_read(dpu_map).unwrap();
    let old = segments(&e, b);
    assert!(old[0].end().get() > GIB, "the first placement is not yet below 1 GiB: {old:?}");
    let old_size = e.plan(b).unwrap().unwrap().size;

    let venc = e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap();
    let new = segments(&e, b);
    assert_ne!(old, new);
    assert!(new[0].end().get() <= GIB && new.len() == 1, "venc: contiguous below 1 GiB: {new:?}");
    // venc pads to 16 rows, so the new backing is larger; the old contents are copied.
    assert!(e.plan(b).unwrap().unwrap().size > old_size);
    assert_eq!((e.stats().migrations, e.stats().bytes_copied, e.generation(b).unwrap()), (1, old_size.bytes(), 1));

    // move_notify reached both importers, naming the mappings the move invalidated.
    let gl = gpu_log.borrow();
    let dl = dpu_log.borrow();
    assert_eq!(gl.len(), 1);
    assert_eq!((gl[0].attachment, gl[0].generation, gl[0].invalidated.clone()), (gpu, 1, vec![gpu_map]));
    assert_eq!((dl[0].attachment, dl[0].invalidated.clone()), (dpu, vec![dpu_map]));
    drop((gl, dl));

    // Using an old mapping is an error, never a stale read.
    assert!(matches!(e.dma_read(dpu_map), Err(ExportError::StaleMapping { mapped: 0, current: 1, .. })));
    assert!(matches!(e.sg_table(gpu_map), Err(ExportError::StaleMapping { .. })));
    check(&e);

    // Importers re-map and see the same contents at the new place.
    e.unmap(dpu_map).unwrap();
    let (dpu_map, dpu_sg) = e.map(dpu).unwrap();
    assert_eq!(dpu_sg.entries[0].dma_addr.get(), new[0].start().get());
    assert_eq!(e.dma_read(dpu_map).unwrap(), before);
    let (venc_map, _) = e.map(venc).unwrap();
    assert_eq!(e.dma_read(venc_map).unwrap(), before);
    check(&e);
}

#[test]
fn late_attach_while_dma_in_flight_is_refused_with_the_reason() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    let (gpu_map, _) = e.map(gpu).unwrap();
    let fence = e.fence(gpu_map).unwrap();
    let before = segments(&e, b);

    let err = e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap_err();
    let ExportError::Busy { device, reason, .. } = &err else { panic!("expected Busy, got {err}") };
    assert_eq!(device, "venc");
    assert!(reason.contains("cannot move while `gpu` has 1 unsignalled fence(s)"), "{reason}");
    assert_eq!((segments(&e, b), e.stats().migrations, e.stats().busy_refusals), (before.clone(), 0, 1));
    check(&e);

    // Once the GPU's DMA completes, the same attach moves the buffer.
    e.signal(fence).unwrap();
    e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap();
    assert_eq!(e.stats().migrations, 1);
    assert_ne!(segments(&e, b), before);
    check(&e);
}

#[test]
fn late_attach_while_busy_can_queue_the_move_until_the_last_fence() {
    let mut e = exporter_with(ExporterConfig { busy: BusyPolicy::Queue, ..ExporterConfig::default() }, 1);
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    let (gpu_map, _) = e.map(gpu).unwrap();
    let f1 = e.fence(gpu_map).unwrap();
    let f2 = e.fence(gpu_map).unwrap();
    let before = segments(&e, b);

    let venc = e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap();
    assert!(matches!(e.map(venc), Err(ExportError::MovePending { fences: 2, .. })));
    e.signal(f1).unwrap();
    assert_eq!((e.stats().migrations, segments(&e, b)), (0, before.clone()), "one fence is still unsignalled");
    e.signal(f2).unwrap();
    assert_eq!(e.stats().migrations, 1, "the last fence released the queued move");
    let (_, sg) = e.map(venc).unwrap();
    assert!(sg.entries[0].dma_addr.get() + sg.len().bytes() <= GIB);
    check(&e);
}

#[test]
fn an_impossible_device_is_refused_with_the_solvers_explanation() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    let (m, _) = e.map(gpu).unwrap();
    e.fence(m).unwrap();
    let err = e.attach(b, "isp", Usage::CAMERA_WRITE).unwrap_err();
    let ExportError::Conflict { conflict, .. } = &err else { panic!("expected a conflict, got {err}") };
    assert_eq!(conflict.devices, ["dpu", "isp"], "gpu is not part of the conflict");
    assert!(conflict.message.contains("isp-carveout"), "{}", conflict.message);
    check(&e);
}

#[test]
fn alloc_for_a_list_of_devices_allocates_once() {
    let mut e = exporter();
    let a = e
        .alloc_for(
            &[("gpu", Usage::RENDERING), ("dpu", Usage::SCANOUT), ("venc", Usage::VIDEO_ENCODE)],
            frame(),
            "frame",
        )
        .unwrap();
    assert_eq!((a.attachments.len(), a.tables.len()), (3, 3));
    assert_eq!((e.stats().allocations, e.stats().migrations), (1, 0));
    let segs = segments(&e, a.buffer);
    assert!(segs.len() == 1 && segs[0].end().get() <= GIB, "{segs:?}");
    check(&e);
    // A failing device unwinds everything acquired so far.
    let free = e.backend().free_report();
    let err = e.alloc_for(
        &[("gpu", Usage::RENDERING), ("dpu", Usage::SCANOUT), ("isp", Usage::CAMERA_WRITE)],
        frame(),
        "bad",
    );
    assert!(matches!(err, Err(ExportError::Conflict { .. })));
    assert_eq!(e.buffers().count(), 1);
    assert!(e.backend().free_report().same_free(&free));
    check(&e);
}

#[test]
fn collections_wait_for_every_participant_instead_of_allocating_early() {
    // The cenalloc pitfall: a driver maps right after attach, before the others attach,
    // so the buffer is placed for the first device only and must move later.
    let mut eager = exporter();
    let b = eager.export(frame(), "frame").unwrap();
    for (dev, hints) in [("gpu", Usage::RENDERING), ("dpu", Usage::SCANOUT), ("venc", Usage::VIDEO_ENCODE)] {
        let a = eager.attach(b, dev, hints).unwrap();
        eager.map(a).unwrap();
    }
    assert_eq!(eager.stats().migrations, 2, "placed for gpu, moved for dpu, moved again for venc");

    let mut e = exporter();
    let (b, t1) = e.collection(frame(), "frame").unwrap();
    let t2 = e.duplicate(t1).unwrap();
    let t3 = e.duplicate(t1).unwrap();
    let gpu = e.declare(t1, "gpu", Usage::RENDERING).unwrap();
    assert!(matches!(e.map(gpu), Err(ExportError::CollectionIncomplete { waiting: 2, .. })));
    assert!(e.backing(b).unwrap().is_none());
    e.declare(t2, "dpu", Usage::SCANOUT).unwrap();
    assert!(e.backing(b).unwrap().is_none());
    e.declare(t3, "venc", Usage::VIDEO_ENCODE).unwrap();
    assert!(e.backing(b).unwrap().is_some(), "the last declaration allocates");
    e.map(gpu).unwrap();
    assert_eq!((e.stats().allocations, e.stats().migrations), (1, 0));
    assert!(matches!(e.declare(t3, "g2d", Usage::empty()), Err(ExportError::NoToken(_))), "a token is used once");
    check(&e);
}

#[test]
fn deferred_allocation_succeeds_where_eager_allocation_fails_or_moves() {
    // Same platform, same seed, same buddy state.
    let scenario = |allocation| {
        let mut e = exporter_with(ExporterConfig { allocation, busy: BusyPolicy::Refuse }, 7);
        let b = e.export(frame(), "frame").unwrap();
        let gpu = e.attach(b, "gpu", Usage::RENDERING);
        let dpu = e.attach(b, "dpu", Usage::SCANOUT);
        let venc = e.attach(b, "venc", Usage::VIDEO_ENCODE);
        (e, b, [gpu.is_ok(), dpu.is_ok(), venc.is_ok()])
    };
    let (mut deferred, b, ok) = scenario(AllocationTime::FirstMap);
    assert_eq!(ok, [true; 3]);
    let a = deferred.attach(b, "g2d", Usage::empty()).unwrap();
    deferred.map(a).unwrap();
    assert_eq!((deferred.stats().allocations, deferred.stats().migrations), (1, 0));

    let (eager, _, ok) = scenario(AllocationTime::Export);
    assert_eq!(ok, [true; 3]);
    // Allocated at export for the CPU alone: general memory, not contiguous, anywhere.
    assert!(eager.stats().migrations >= 1, "the eager placement had to move: {:?}", eager.stats());
    assert_eq!(eager.stats().allocations, 1 + eager.stats().migrations);

    // And while the CPU is still filling the eagerly allocated buffer, the display
    // cannot attach at all; deferred allocation never had the problem.
    let mut eager = exporter_with(ExporterConfig { allocation: AllocationTime::Export, busy: BusyPolicy::Refuse }, 7);
    let b = eager.export(frame(), "frame").unwrap();
    eager.begin_cpu_access(b, CpuAccess::Write).unwrap();
    assert!(matches!(eager.attach(b, "dpu", Usage::SCANOUT), Err(ExportError::Busy { .. })));
    check(&deferred);
}

#[test]
fn cpu_access_counts_cache_maintenance_for_non_coherent_devices() {
    let mut e = exporter();
    // The GPU alone: a cached buffer, the GPU does not snoop.
    let b = e.export(BufferDesc::Size(Size::mib(4)), "gpu-only").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    let (m, _) = e.map(gpu).unwrap();
    assert_eq!(e.plan(b).unwrap().unwrap().cache_mode.value, dmaplace_core::CacheMode::Cached);
    let backing = e.backing(b).unwrap().unwrap();
    let runs = e.backend().backing(backing).unwrap().runs().len() as u64;
    let read = e.begin_cpu_access(b, CpuAccess::Read).unwrap();
    assert!(matches!(e.begin_cpu_access(b, CpuAccess::Read), Err(ExportError::CpuAccess { .. })));
    let end = e.end_cpu_access(b).unwrap();
    assert_eq!((read, end), (runs, runs), "invalidate on begin-read, clean on end, per run");
    // A write-combined scanout buffer needs one write-combine flush at the end of a write.
    let s = e.export(frame(), "scanout").unwrap();
    let dpu = e.attach(s, "dpu", Usage::SCANOUT).unwrap();
    let (dm, _) = e.map(dpu).unwrap();
    assert_eq!(e.begin_cpu_access(s, CpuAccess::Write).unwrap(), 0);
    assert_eq!(e.end_cpu_access(s).unwrap(), 1);
    for (map, att, buf) in [(m, gpu, b), (dm, dpu, s)] {
        e.unmap(map).unwrap();
        e.detach(att).unwrap();
        e.release(buf).unwrap();
    }
    check(&e);
}

#[test]
fn lifecycle_errors_name_what_is_wrong_and_release_returns_all_memory() {
    let mut e = exporter();
    let start = e.backend().free_report();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    let (m, _) = e.map(gpu).unwrap();
    let f = e.fence(m).unwrap();
    assert!(matches!(e.unmap(m), Err(ExportError::FencesPending { fences: 1, .. })));
    assert!(matches!(e.detach(gpu), Err(ExportError::StillMapped { mappings: 1, .. })));
    assert!(matches!(e.release(b), Err(ExportError::StillAttached { attachments: 1, .. })));
    assert!(matches!(e.attach(b, "nope", Usage::empty()), Err(ExportError::UnknownDevice(_))));
    assert!(matches!(e.export(BufferDesc::Size(Size::ZERO), "empty"), Err(ExportError::Invalid(_))));
    e.signal(f).unwrap();
    assert!(matches!(e.signal(f), Err(ExportError::NoFence(_))));
    e.unmap(m).unwrap();
    e.detach(gpu).unwrap();
    e.release(b).unwrap();
    assert!(e.backend().free_report().same_free(&start), "all memory is back");
    check(&e);
}
