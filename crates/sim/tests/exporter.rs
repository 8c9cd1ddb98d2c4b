//! The exporter state machine on the simulated machine: deferred allocation, each
//! late-attach branch, move_notify, fences, CPU access, collections and alloc_for.

use std::cell::RefCell;
use std::rc::Rc;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::exporter::{
    AllocationTime, AttachHow, BusyPolicy, Event, ExportError, Exporter, ExporterConfig, LayoutField, MoveNotice,
    MoveNotify,
};
use dmaplace_core::layout::parse_fourcc;
use dmaplace_core::{BufferDesc, ImageDesc, Platform, Size, Usage, builtin};
use dmaplace_sim::{BackgroundLoad, ContentMode, Machine, SimConfig};

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

fn nv12(width: u32, height: u32) -> BufferDesc {
    BufferDesc::Image(ImageDesc { width, height, format: parse_fourcc("NV12").unwrap(), modifiers: vec![] })
}

/// A 1080p frame: gpu and dpu lay it out with 1080 rows; venc needs 16-row padding.
fn frame() -> BufferDesc {
    nv12(1920, 1080)
}

/// A frame of H.264's coded height (1088 rows, a multiple of 16): venc's layout needs are
/// met by the layout gpu and dpu commit, only its placement (below 1 GiB) is not.
fn coded_frame() -> BufferDesc {
    nv12(1920, 1088)
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
    let b = e.export(coded_frame(), "frame").unwrap();
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
    let old_plan = e.plan(b).unwrap().unwrap().clone();
    let old_size = old_plan.size;

    let venc = e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap();
    let new = segments(&e, b);
    assert_ne!(old, new);
    assert!(new[0].end().get() <= GIB && new.len() == 1, "venc: contiguous below 1 GiB: {new:?}");
    // The pages moved; the layout (and so the size) is the one importers were given.
    let plan = e.plan(b).unwrap().unwrap();
    assert_eq!((plan.size, &plan.layout.as_ref().unwrap().layout), (old_size, &old_plan.layout.unwrap().layout));
    assert_eq!((e.stats().migrations, e.stats().bytes_copied, e.generation(b).unwrap()), (1, old_size.bytes(), 1));

    // move_notify reached both importers, naming the mappings the move invalidated.
    let gl = gpu_log.borrow();
    let dl = dpu_log.borrow();
    assert_eq!(gl.len(), 1);
    assert_eq!((gl[0].attachment, gl[0].generation, gl[0].invalidated.clone()), (gpu, 1, vec![gpu_map]));
    assert_eq!((dl[0].attachment, dl[0].invalidated.clone()), (dpu, vec![dpu_map]));
    assert!(gl[0].layout.is_none() && dl[0].layout.is_none(), "a plain move keeps the layout");
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
    let b = e.export(coded_frame(), "frame").unwrap();
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
    let b = e.export(coded_frame(), "frame").unwrap();
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
    // so the buffer is placed and laid out for the first device only: it must move for the
    // display, and the encoder, whose 16-row padding the committed layout lacks, is refused.
    let mut eager = exporter();
    let b = eager.export(frame(), "frame").unwrap();
    for (dev, hints) in [("gpu", Usage::RENDERING), ("dpu", Usage::SCANOUT)] {
        let a = eager.attach(b, dev, hints).unwrap();
        eager.map(a).unwrap();
    }
    let late = eager.attach(b, "venc", Usage::VIDEO_ENCODE);
    assert!(matches!(late, Err(ExportError::LayoutConflict { .. })), "{late:?}");
    assert_eq!(eager.stats().migrations, 1, "placed for gpu, moved for dpu, venc refused");

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
    let rows: Vec<u32> =
        e.plan(b).unwrap().unwrap().layout.as_ref().unwrap().layout.planes.iter().map(|p| p.rows).collect();
    assert_eq!(rows, [1088, 544], "laid out for venc too, before anyone saw the layout");
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
    // Allocated and laid out at export for the CPU alone: general memory, anywhere, 1080
    // rows. The display's needs are met by a move; the encoder's 16-row padding is not,
    // since the layout was committed before it came.
    assert_eq!(ok, [true, true, false]);
    assert_eq!(eager.stats().layout_conflicts, 1);
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

#[test]
fn a_late_attacher_never_changes_the_layout_and_is_refused_naming_the_field() {
    let mut e = exporter();
    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    e.attach(b, "dpu", Usage::SCANOUT).unwrap();
    let (m, _) = e.map(gpu).unwrap();
    e.dma_write(m, 7).unwrap();
    let (before, plan) = (segments(&e, b), e.plan(b).unwrap().unwrap().clone());
    e.take_events();

    let err = e.attach(b, "venc", Usage::VIDEO_ENCODE).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot attach `venc` to buf1: `venc` needs height_align = 16: 1088 rows in plane 0 (height 1080 padded to a multiple of 16), but the committed layout has 1080 rows in plane 0; importers were given the layout at the first allocation, and a move changes where the pages are, never the layout"
    );
    let ExportError::LayoutConflict { device, misfit, .. } = &err else { panic!("{err:?}") };
    assert_eq!(
        (device.as_str(), misfit.field, misfit.committed.as_str()),
        ("venc", LayoutField::HeightAlign, "1080 rows in plane 0")
    );
    assert!(matches!(e.take_events().as_slice(), [Event::Refused { device, .. }] if device == "venc"));
    // Nothing moved, nothing changed.
    assert_eq!((segments(&e, b), e.plan(b).unwrap().unwrap(), e.generation(b).unwrap()), (before, &plan, 0));
    assert_eq!((e.stats().layout_conflicts, e.stats().migrations), (1, 0));
    check(&e);

    // A pitch the committed layout does not meet: 1600 B is a multiple of gpu and dpu's
    // 64 B, not of venc's 128 B.
    let narrow = e.export(nv12(1600, 1088), "narrow").unwrap();
    let a = e.attach(narrow, "gpu", Usage::RENDERING).unwrap();
    e.map(a).unwrap();
    let err = e.attach(narrow, "venc", Usage::VIDEO_ENCODE).unwrap_err();
    let ExportError::LayoutConflict { misfit, .. } = &err else { panic!("{err}") };
    assert_eq!(
        misfit.to_string(),
        "`venc` needs pitch_align = 128: pitches that are multiples of 128 B, but the committed layout has a 1600 B pitch in plane 0"
    );

    // A modifier: the gpu alone lays XR24 out in 16x16 blocks; the dpu scans out LINEAR only.
    let tiled = e
        .export(
            BufferDesc::Image(ImageDesc {
                width: 640,
                height: 480,
                format: parse_fourcc("XR24").unwrap(),
                modifiers: vec![],
            }),
            "tiled",
        )
        .unwrap();
    let a = e.attach(tiled, "gpu", Usage::RENDERING).unwrap();
    e.map(a).unwrap();
    let err = e.attach(tiled, "dpu", Usage::SCANOUT).unwrap_err();
    let ExportError::LayoutConflict { misfit, .. } = &err else { panic!("{err}") };
    assert_eq!(
        misfit.to_string(),
        "`dpu` needs a modifier in [LINEAR] for XR24 (layout.formats), but the committed layout has modifier ARM_16X16_BLOCK_U_INTERLEAVED"
    );
    assert_eq!(e.stats().layout_conflicts, 3);
    check(&e);
}

#[test]
fn a_detach_never_shrinks_the_committed_layout() {
    let mut e = exporter();
    let a = e
        .alloc_for(
            &[("gpu", Usage::RENDERING), ("dpu", Usage::SCANOUT), ("venc", Usage::VIDEO_ENCODE)],
            frame(),
            "frame",
        )
        .unwrap();
    let committed = e.plan(a.buffer).unwrap().unwrap().clone();
    assert_eq!(committed.layout.as_ref().unwrap().layout.planes[0].rows, 1088);
    let before = segments(&e, a.buffer);
    e.unmap(a.mappings[2]).unwrap();
    e.detach(a.attachments[2]).unwrap();
    // gpu and dpu alone would lay it out with 1080 rows; importers keep the 1088 they got.
    let plan = e.plan(a.buffer).unwrap().unwrap();
    assert_eq!(
        (&plan.layout.as_ref().unwrap().layout, plan.size),
        (&committed.layout.as_ref().unwrap().layout, committed.size)
    );
    assert_eq!((segments(&e, a.buffer), e.stats().migrations), (before, 0));
    // So venc can come back without a move.
    e.attach(a.buffer, "venc", Usage::VIDEO_ENCODE).unwrap();
    assert_eq!(e.stats().migrations, 0);
    check(&e);
}

fn bytes_exporter() -> Exporter<Machine> {
    let p = refsoc();
    let cfg = SimConfig { content: ContentMode::Bytes, ..SimConfig::seeded(1) };
    let m = Machine::new(&p, cfg.with_background(BackgroundLoad::FRAGMENTING)).unwrap();
    Exporter::new(p, m, ExporterConfig::default())
}

/// The image rows of `layout` in `backing`, plane by plane.
fn image(
    e: &Exporter<Machine>,
    b: dmaplace_core::exporter::BufferId,
    rows: &[u32; 2],
    row_bytes: usize,
) -> Vec<Vec<u8>> {
    let plan = e.plan(b).unwrap().unwrap();
    let layout = &plan.layout.as_ref().unwrap().layout;
    let backing = e.backing(b).unwrap().unwrap();
    let mut out = Vec::new();
    for (p, n) in layout.planes.iter().zip(rows) {
        for r in 0..*n {
            let at = u64::from(p.offset) + u64::from(r) * u64::from(p.pitch);
            out.push(e.backend().read(backing, at, row_bytes).unwrap());
        }
    }
    out
}

#[test]
fn an_explicit_relayout_copies_row_by_row_and_tells_every_importer() {
    let mut e = bytes_exporter();
    let b = e.export(frame(), "frame").unwrap();
    let (gpu_log, gpu_cb) = recorder();
    let (dpu_log, dpu_cb) = recorder();
    let gpu = e.attach_dynamic(b, "gpu", Usage::RENDERING, gpu_cb).unwrap();
    let dpu = e.attach_dynamic(b, "dpu", Usage::SCANOUT, dpu_cb).unwrap();
    let (gpu_map, _) = e.map(gpu).unwrap();
    let (dpu_map, _) = e.map(dpu).unwrap();
    e.dma_write(gpu_map, 0xfeed).unwrap();
    let picture = image(&e, b, &[1080, 540], 1920);
    e.take_events();

    let venc = e.attach_relayout(b, "venc", Usage::VIDEO_ENCODE, None).unwrap();
    let events = e.take_events();
    let Some(Event::Relaid { old_layout, new_layout, planes, to, .. }) =
        events.iter().find(|ev| matches!(ev, Event::Relaid { .. }))
    else {
        panic!("no Relaid event in {events:?}")
    };
    // NV12 1920x1080: luma 1080 -> 1088 rows, so chroma moves from 1920 x 1080 to 1920 x 1088.
    let offsets =
        |l: &dmaplace_core::layout::Layout| l.planes.iter().map(|p| (p.offset, p.pitch, p.rows)).collect::<Vec<_>>();
    assert_eq!(offsets(old_layout), [(0, 1920, 1080), (2_073_600, 1920, 540)]);
    assert_eq!(offsets(new_layout), [(0, 1920, 1088), (2_088_960, 1920, 544)]);
    let copied: Vec<_> = planes.iter().map(|p| (p.plane, p.rows, p.row_bytes, p.from, p.to)).collect();
    assert_eq!(copied, [(0, 1080, 1920, (0, 1920), (0, 1920)), (1, 540, 1920, (2_073_600, 1920), (2_088_960, 1920))]);
    assert!(to.len() == 1 && to[0].end().get() <= GIB, "venc's placement too: {to:?}");
    // The same picture, row for row, at the new offsets.
    assert_eq!(image(&e, b, &[1080, 540], 1920), picture);
    assert_eq!(e.plan(b).unwrap().unwrap().layout.as_ref().unwrap().layout, *new_layout);
    // Every importer hears the new layout with its move notice; old mappings are stale.
    for (log, att, map) in [(&gpu_log, gpu, gpu_map), (&dpu_log, dpu, dpu_map)] {
        let l = log.borrow();
        assert_eq!((l.len(), l[0].attachment, l[0].layout.as_ref()), (1, att, Some(new_layout)));
        assert_eq!(l[0].invalidated, [map]);
    }
    assert!(matches!(e.dma_read(gpu_map), Err(ExportError::StaleMapping { .. })));
    assert_eq!((e.stats().relayouts, e.stats().migrations, e.generation(b).unwrap()), (1, 1, 1));
    e.map(venc).unwrap();
    check(&e);
}

#[test]
fn relayout_is_refused_for_tiled_layouts_and_while_dma_is_in_flight() {
    let mut e = bytes_exporter();
    let xr24 = |w, h| {
        BufferDesc::Image(ImageDesc { width: w, height: h, format: parse_fourcc("XR24").unwrap(), modifiers: vec![] })
    };
    let tiled = e.export(xr24(640, 480), "tiled").unwrap();
    let a = e.attach(tiled, "gpu", Usage::RENDERING).unwrap();
    e.map(a).unwrap();
    let err = e.attach_relayout(tiled, "dpu", Usage::SCANOUT, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot re-lay out buf1 for `dpu`: re-layout copies rows, so both layouts must be LINEAR; they are ARM_16X16_BLOCK_U_INTERLEAVED and LINEAR"
    );

    let b = e.export(frame(), "frame").unwrap();
    let gpu = e.attach(b, "gpu", Usage::RENDERING).unwrap();
    let (m, _) = e.map(gpu).unwrap();
    let fence = e.fence(m).unwrap();
    let err = e.attach_relayout(b, "venc", Usage::VIDEO_ENCODE, None).unwrap_err();
    let ExportError::Busy { reason, .. } = &err else { panic!("{err}") };
    assert!(
        reason.starts_with("the layout must change for it and cannot while `gpu` has 1 unsignalled fence(s)"),
        "{reason}"
    );
    assert_eq!((e.stats().relayouts, e.stats().busy_refusals), (0, 1));
    e.signal(fence).unwrap();
    e.attach_relayout(b, "venc", Usage::VIDEO_ENCODE, None).unwrap();
    assert_eq!(e.stats().relayouts, 1);
    // When the committed layout already meets the device, it is a plain attach.
    let g2d = e.attach_relayout(b, "g2d", Usage::empty(), None).unwrap();
    e.map(g2d).unwrap();
    assert_eq!((e.stats().relayouts, e.stats().logical_attaches), (1, 1));
    check(&e);
}
