//! Exact numbers: page-table entries and IOTLB misses computed by hand.

use dmaplace_core::backend::Backend;
use dmaplace_core::units::{PageSize, Size};
use dmaplace_core::{BufferDesc, Plan, Platform, Request, Usage, solve, verify};
use dmaplace_sim::{AccessPattern, Iotlb, Machine, SimConfig, SyntheticPlatform};

fn plan(p: &Platform, size: Size, devices: &[(&str, Usage)]) -> Plan {
    let reqs: Vec<Request<'_>> =
        devices.iter().map(|(d, hints)| Request { device: p.device(d).unwrap(), hints: *hints }).collect();
    solve(p, &BufferDesc::Size(size), &reqs).unwrap()
}

#[test]
fn eight_mib_on_4k_2m_1g_is_four_ptes_and_on_4k_only_2048() {
    let p = SyntheticPlatform::new(Size::gib(1)).build();
    // Shared by the GPU (4K/2M/1G SMMU) and V3D (4K-only MMU).
    let plan = plan(&p, Size::mib(8), &[("gpu", Usage::RENDERING), ("v3d", Usage::TEXTURING)]);
    let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    let b = m.allocate(&plan, "frame").unwrap();
    let backing = m.describe(&b).unwrap();
    verify(&plan, &plan.devices, &backing).unwrap();
    // Every chunk is 2 MiB aligned: the backing is a 2 MiB-aligned 8 MiB backing.
    assert!(
        backing.segments.iter().all(|s| s.start().is_aligned(PageSize::SZ_2M) && s.len().is_aligned(PageSize::SZ_2M)),
        "{backing:?}"
    );
    assert_eq!(backing.len(), Size::mib(8));

    let (gpu, v3d) = (&plan.devices[0], &plan.devices[1]);
    let (gm, gsg) = m.map(gpu, &b).unwrap();
    assert_eq!(gm.ptes().by_size, [(PageSize::SZ_2M, 4)]);
    assert_eq!(gm.ptes().total(), 4);
    assert_eq!(gsg.entries.len(), 1);
    assert!(gm.iommu().unwrap().iova.is_aligned(PageSize::SZ_2M));
    let (vm, _) = m.map(v3d, &b).unwrap();
    assert_eq!(vm.ptes().by_size, [(PageSize::SZ_4K, 2048)]);
    assert_eq!(m.domain_ptes("gpu").total(), 4);
    assert_eq!(m.domain_ptes("v3d").total(), 2048);

    // Linear scans: one miss per page touched.
    let lin = AccessPattern::Linear { burst: 64 };
    assert_eq!(m.replay(&gm, lin).unwrap().misses, 4);
    assert_eq!(m.replay(&vm, lin).unwrap().misses, 2048);
    assert_eq!(m.replay(&vm, lin).unwrap().accesses, (8 << 20) / 64);

    m.unmap(gpu, gm);
    m.unmap(v3d, vm);
    assert_eq!(m.domain_ptes("gpu").total(), 0);
    m.free(b);
    m.check().unwrap();
}

#[test]
fn contiguous_8_mib_is_2m_aligned_for_the_gpu() {
    let p = SyntheticPlatform::new(Size::gib(1)).build();
    let plan = plan(&p, Size::mib(8), &[("display", Usage::SCANOUT), ("gpu", Usage::RENDERING)]);
    assert!(plan.contiguous());
    let mut m = Machine::new(&p, SimConfig::seeded(2)).unwrap();
    let b = m.allocate(&plan, "scanout").unwrap();
    let backing = m.describe(&b).unwrap();
    assert_eq!(backing.segments.len(), 1);
    assert!(backing.segments[0].start().is_aligned(PageSize::SZ_2M));
    let gpu = plan.devices.iter().find(|e| e.device == "gpu").unwrap();
    let (gm, _) = m.map(gpu, &b).unwrap();
    assert_eq!(gm.ptes().total(), 4);
    // The display has no IOMMU: its sg table is the physical run.
    let display = plan.devices.iter().find(|e| e.device == "display").unwrap();
    let (dm, dsg) = m.map(display, &b).unwrap();
    assert_eq!(dsg.entries.len(), 1);
    assert_eq!(dsg.entries[0].dma_addr.get(), backing.segments[0].start().get());
    assert!(dm.iommu().is_none());
    m.unmap(gpu, gm);
    m.unmap(display, dm);
    m.free(b);
    m.check().unwrap();
}

/// A 64 KiB buffer behind V3D's 4 KiB-only MMU is 16 pages, P0..P15, in IOVA order.
/// Seen as a surface of 8 rows with an 8 KiB pitch, row r covers pages 2r and 2r+1;
/// byte x of row r is in page 2r + x / 4096.
///
/// Tiled walk, tiles 2048 B wide and 4 rows high: 4 tiles across (tx = 0..3), 2 tile
/// rows. Tile (tx, ty) touches rows 4ty..4ty+3 at x = 2048 tx, so pages
/// 2r + tx / 2: tiles 0 and 1 touch the even pages of their rows, tiles 2 and 3 the odd.
///
/// With 2 entries (LRU), tile row 0:
///   tile 0: P0 P2 P4 P6 all miss (4); the TLB ends holding P4, P6.
///   tile 1: P0 P2 P4 P6 again: P0 misses (evicts P4), P2 misses (evicts P6), P4
///           misses (evicts P0), P6 misses (evicts P2): 4 misses.
///   tile 2: P1 P3 P5 P7 (4 misses); tile 3: the same four again (4 misses).
/// 16 misses per tile row, 32 in all, out of 32 lookups.
/// With 4 entries: tile 0 misses 4, tile 1 hits all 4, tile 2 misses 4, tile 3 hits:
/// 8 per tile row, 16 in all (each page once, as a linear scan).
/// With 1 entry consecutive lookups never repeat a page, so all 32 miss.
/// Accesses: 64 KiB in 64 B bursts = 1024 whatever the TLB.
#[test]
fn iotlb_misses_match_hand_computation() {
    let p = SyntheticPlatform::new(Size::mib(64)).build();
    let plan = plan(&p, Size::kib(64), &[("v3d", Usage::TEXTURING)]);
    let mut m = Machine::new(&p, SimConfig::seeded(3)).unwrap();
    let b = m.allocate(&plan, "texture").unwrap();
    let (vm, _) = m.map(&plan.devices[0], &b).unwrap();
    assert_eq!(vm.ptes().total(), 16);
    let tiled = AccessPattern::Tiled { pitch: 8192, rows: 8, tile_width: 2048, tile_height: 4, burst: 64 };
    let run = |entries: usize| {
        let mut tlb = Iotlb::new(entries);
        vm.replay(tiled, &mut tlb).unwrap()
    };
    let two = run(2);
    assert_eq!((two.accesses, two.lookups, two.misses), (1024, 32, 32));
    let four = run(4);
    assert_eq!((four.lookups, four.misses), (32, 16));
    assert_eq!(run(1).misses, 32);
    // Linear scan: 16 lookups, 16 misses, whatever the size.
    let mut tlb = Iotlb::new(2);
    let lin = vm.replay(AccessPattern::Linear { burst: 64 }, &mut tlb).unwrap();
    assert_eq!((lin.accesses, lin.lookups, lin.misses), (1024, 16, 16));
    // A pattern larger than the mapping is refused.
    let too_big = AccessPattern::Tiled { pitch: 8192, rows: 9, tile_width: 2048, tile_height: 4, burst: 64 };
    assert!(m.replay(&vm, too_big).is_err());
    m.unmap(&plan.devices[0], vm);
    m.free(b);
    m.check().unwrap();
}
