//! Each policy on one tiny trace, with every metric computed by hand.
//!
//! The platform (`data/tiny.toml`) has twelve 1 MiB banks 2 MiB apart (nothing physically
//! adjacent, no free block over 1 MiB) and two 16 MiB CMA areas: `cma-low` at
//! 0x1000_0000 and `cma` (the default CMA heap) at 0x1_0000_0000. Devices: `gpu` (MMU, 4K
//! and 2M pages, 32-bit IOVA), `disp` (contiguous, 40-bit), `enc` (contiguous, 32-bit).
//!
//! The trace (`data/tiny.trace`, 27 events, 48 ms): an 8 MiB scanout buffer `b1` the GPU
//! renders (gpu, disp attached before the first map), then a late `enc`; then a 2 MiB
//! texture `b2` for the GPU alone.
//!
//! The reasoning for each number is in the comments of each test.

use std::collections::BTreeMap;

use dmaplace_core::Platform;
use dmaplace_eval::trace::Trace;
use dmaplace_eval::{DeviceMetrics, Policy, Reason, RunMetrics, RunOptions, run};

const MIB: u64 = 1 << 20;

fn tiny() -> (Platform, Trace) {
    let platform = Platform::from_toml("tiny.toml", include_str!("data/tiny.toml")).unwrap();
    let trace = Trace::parse("tiny.trace", include_str!("data/tiny.trace")).unwrap();
    (platform, trace)
}

fn replay(policy: Policy) -> RunMetrics {
    let (platform, trace) = tiny();
    let m = run(&trace, &platform, policy, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(m.events, 27);
    assert_eq!(m.sim_time_ns, 48_000_000);
    assert_eq!((m.background_steps, m.background_events, m.cma_borrowers_migrated_bytes), (0, 0, 0));
    // Every free block of the zones is a 1 MiB bank: none serves 2 MiB, at every sample.
    assert_eq!((m.frag_final, m.frag_mean, m.frag_max), (1.0, 1.0, 1.0));
    assert_eq!(m.cache_mode_mismatches, 0);
    m
}

fn failures(list: &[(Reason, u64)]) -> BTreeMap<Reason, u64> {
    list.iter().copied().collect()
}

/// `gpu`'s row: (maps, MiB mapped, entries, ideal entries, peak live entries); a linear
/// pass through a cold IOTLB misses once per entry.
fn assert_gpu(m: &RunMetrics, maps: u64, mib: u64, ptes: u64, ideal: u64, peak: u64) {
    let gpu = m.device("gpu").unwrap();
    let want = DeviceMetrics {
        device: "gpu".into(),
        iommu: Some("gpu-mmu".into()),
        maps,
        mapped_bytes: mib * MIB,
        ptes,
        ideal_ptes: ideal,
        peak_live_ptes: peak,
        iotlb_lookups: ptes,
        iotlb_misses: ptes,
    };
    assert_eq!(gpu, &want, "{}", m.policy);
}

fn maps_of(m: &RunMetrics, device: &str) -> Option<(u64, u64)> {
    m.device(device).map(|d| (d.maps, d.mapped_bytes / MIB))
}

#[test]
fn deferred_allocates_once_for_gpu_and_display_then_moves_for_the_encoder() {
    let m = replay(Policy::Deferred);
    // b1's first map solves gpu + disp: 8 MiB contiguous, over the 1 MiB blocks, so CMA,
    // the highest area first (`cma`), 2 MiB aligned for the GPU: 4 entries of 2 MiB.
    // enc attaches with nothing in flight: the buffer moves below 4 GiB (`cma-low`),
    // 8 MiB copied; gpu and disp re-map (4 more 2 MiB entries). Both backings exist
    // during the copy: 16 MiB of CMA at the peak. b2 (gpu alone, 2 MiB) gets two 1 MiB
    // blocks of banks b0 and b1 (zones before CMA): 2 x 256 entries of 4 KiB.
    assert_eq!(m.failures, failures(&[]));
    assert_eq!((m.contiguous_failures, m.skipped, m.waits), (0, 0, 0));
    assert_eq!((m.allocations, m.allocated_bytes, m.zeroing.on_path_bytes), (3, 18 * MIB, 18 * MIB));
    assert_eq!((m.migrations, m.migrated_bytes, m.remaps), (1, 8 * MIB, 2));
    assert_eq!((m.cma_peak_bytes, m.contiguous_peak_bytes), (16 * MIB, 16 * MIB));
    assert_gpu(&m, 3, 18, 4 + 4 + 512, 4 + 4 + 1, 4 + 512);
    assert_eq!(maps_of(&m, "disp"), Some((2, 16)));
    assert_eq!(maps_of(&m, "enc"), Some((1, 8)));
}

#[test]
fn deferred_no_migrate_refuses_the_encoder() {
    let m = replay(Policy::DeferredNoMigrate);
    // As deferred until enc attaches: the backing is above its 32-bit reach and nothing
    // moves, so the attach is refused (one run: not a contiguity failure). Its map,
    // fence, signal, unmap and detach are skipped.
    assert_eq!(m.failures, failures(&[(Reason::NoMove, 1)]));
    assert_eq!((m.contiguous_failures, m.skipped, m.waits), (0, 5, 0));
    assert_eq!((m.allocations, m.allocated_bytes), (2, 10 * MIB));
    assert_eq!((m.migrations, m.migrated_bytes, m.remaps), (0, 0, 0));
    assert_eq!((m.cma_peak_bytes, m.contiguous_peak_bytes), (8 * MIB, 8 * MIB));
    assert_gpu(&m, 2, 10, 4 + 512, 4 + 1, 4 + 512);
    assert_eq!(maps_of(&m, "disp"), Some((1, 8)));
    assert_eq!(maps_of(&m, "enc"), None);
}

#[test]
fn eager_system_gives_scattered_pages_that_contiguous_devices_cannot_import() {
    let m = replay(Policy::EagerSystem);
    // b1 at creation from the system heap: 1 MiB chunks from banks b0..b7, 8 runs. gpu
    // maps them with 8 x 256 entries of 4 KiB; disp and enc need one run: two contiguity
    // failures. f2, its signal and the unmaps of m2 and m3 are skipped. b2: banks b8, b9.
    assert_eq!(m.failures, failures(&[(Reason::Segments, 2)]));
    assert_eq!((m.contiguous_failures, m.skipped), (2, 4));
    assert_eq!((m.allocations, m.allocated_bytes), (2, 10 * MIB));
    assert_eq!((m.migrations, m.cma_peak_bytes, m.contiguous_peak_bytes), (0, 0, 0));
    assert_gpu(&m, 2, 10, 2048 + 512, 4 + 1, 2048 + 512);
    assert_eq!(maps_of(&m, "disp"), None);
    assert_eq!(maps_of(&m, "enc"), None);
}

#[test]
fn eager_contiguous_puts_everything_in_the_default_cma_area() {
    let m = replay(Policy::EagerContiguous);
    // Both buffers from `cma` (above 4 GiB), 2 MiB aligned: ideal entries. enc cannot
    // reach it: one reach failure (one run: not a contiguity failure); f2, its signal
    // and the unmap of m3 are skipped. CMA holds 8 + 2 MiB.
    assert_eq!(m.failures, failures(&[(Reason::Reach, 1)]));
    assert_eq!((m.contiguous_failures, m.skipped), (0, 3));
    assert_eq!((m.allocations, m.allocated_bytes), (2, 10 * MIB));
    assert_eq!((m.cma_peak_bytes, m.contiguous_peak_bytes), (10 * MIB, 10 * MIB));
    assert_gpu(&m, 2, 10, 4 + 1, 4 + 1, 5);
    assert_eq!(maps_of(&m, "disp"), Some((1, 8)));
}

#[test]
fn hint_heap_follows_the_declared_usage() {
    let m = replay(Policy::HintHeap);
    // b1 declares SCANOUT: the CMA heap, as eager-contiguous (enc cannot reach it). b2
    // declares TEXTURING: the system heap, banks b0 and b1: 512 entries of 4 KiB.
    assert_eq!(m.failures, failures(&[(Reason::Reach, 1)]));
    assert_eq!((m.contiguous_failures, m.skipped), (0, 3));
    assert_eq!((m.cma_peak_bytes, m.contiguous_peak_bytes), (8 * MIB, 8 * MIB));
    assert_gpu(&m, 2, 10, 4 + 512, 4 + 1, 4 + 512);
}

#[test]
fn runs_are_deterministic() {
    for p in Policy::ALL {
        assert_eq!(replay(p), replay(p), "{p}");
    }
}

#[test]
fn deferred_queues_a_move_until_dma_completes() {
    // enc attaches while the GPU's fence f1 is in flight: the move is queued; enc's map
    // waits (its fence f2 and that fence's signal are skipped: nothing to fence yet);
    // when f1 signals the buffer moves below 4 GiB, gpu and disp re-map, and enc's map
    // goes through.
    let (platform, _) = tiny();
    let text = "dmaplace-trace 1\nplatform tiny\n\
        create b1 size=8MiB usage=SCANOUT\nattach a1 b1 gpu hints=RENDERING\nattach a2 b1 disp hints=SCANOUT\n\
        map m1 a1\nmap m2 a2\nfence f1 m1\n\
        attach a3 b1 enc\nmap m3 a3\nfence f2 m3\nsignal f2\nadvance 16ms\nsignal f1\n";
    let trace = Trace::parse("queued.trace", text).unwrap();
    let m = run(&trace, &platform, Policy::Deferred, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(m.failures, failures(&[]));
    assert_eq!((m.waits, m.skipped), (1, 2));
    assert_eq!((m.migrations, m.migrated_bytes, m.remaps), (1, 8 * MIB, 2));
    assert_eq!(maps_of(&m, "enc"), Some((1, 8)));
    // Without moves the late attach is refused at once; its map, fence and signal are
    // skipped.
    let m = run(&trace, &platform, Policy::DeferredNoMigrate, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(m.failures, failures(&[(Reason::NoMove, 1)]));
    assert_eq!((m.waits, m.skipped, m.migrations), (0, 3, 0));
}

/// `tiny` plus `venc`, an encoder without IOMMU (contiguous, 32-bit) that pads frames to
/// 16 rows, as H.264's coded 1088-row frame needs.
fn tiny_with_venc() -> Platform {
    let venc = r#"
[[device]]
name = "venc"
class = "video"
description = "an encoder without IOMMU: contiguous, 32-bit, rows padded to 16"
[device.placement]
dma_mask = 32
max_segments = 1
[device.layout]
height_align = 16
"#;
    Platform::from_toml("tiny.toml", &format!("{}{venc}", include_str!("data/tiny.toml"))).unwrap()
}

#[test]
fn a_late_attacher_that_needs_another_layout_is_a_layout_failure() {
    // A 1080p NV12 frame for gpu + disp: allocated at the first map, 1080 luma rows
    // committed (3,110,400 B, contiguous: CMA). venc joins while nothing is in flight and
    // needs 1088 rows: refused for the layout under both deferred policies (its map and
    // unmap skipped), though under `deferred` a move could have fixed its reach (the
    // frame is above 4 GiB). Nothing moves; the eager policies do not judge layouts.
    let platform = tiny_with_venc();
    let text = "dmaplace-trace 1\nplatform tiny\n\
        create b1 image=1920x1080 format=NV12 usage=SCANOUT,RENDERING\n\
        attach a1 b1 gpu hints=RENDERING\nattach a2 b1 disp hints=SCANOUT\nmap m1 a1\nmap m2 a2\n\
        attach a3 b1 venc hints=VIDEO_ENCODE\nmap m3 a3\nunmap m3\n";
    let trace = Trace::parse("layout.trace", text).unwrap();
    for policy in [Policy::Deferred, Policy::DeferredNoMigrate] {
        let m = run(&trace, &platform, policy, &RunOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(m.failures, failures(&[(Reason::Layout, 1)]), "{policy}");
        assert_eq!((m.contiguous_failures, m.skipped, m.migrations), (0, 2, 0), "{policy}");
        assert_eq!((m.allocations, m.cma_peak_bytes), (1, 3_112_960), "{policy}");
        assert_eq!(maps_of(&m, "venc"), None, "{policy}");
    }
    // The same encoder with its padding declared up front (attached before the first map)
    // is served: the committed layout has 1088 rows, and the frame is placed below 4 GiB.
    let early = "dmaplace-trace 1\nplatform tiny\n\
        create b1 image=1920x1080 format=NV12 usage=SCANOUT,RENDERING\n\
        attach a1 b1 gpu hints=RENDERING\nattach a2 b1 disp hints=SCANOUT\nattach a3 b1 venc hints=VIDEO_ENCODE\n\
        map m1 a1\nmap m2 a2\nmap m3 a3\n";
    let trace = Trace::parse("early.trace", early).unwrap();
    let m = run(&trace, &platform, Policy::Deferred, &RunOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(m.failures, failures(&[]));
    assert_eq!(maps_of(&m, "venc"), Some((1, 2)));
}
