//! "A Plan means a placement exists" and "a Conflict means none does", rule by rule, on
//! small hand-checked platforms. Every number in these tests is worked out in the comment
//! above it; each test also checks the plan's witness backing against `verify`.

use dmaplace_core::layout::{MOD_I915_Y_TILED, MOD_LINEAR};
use dmaplace_core::platform::Region;
use dmaplace_core::solver::ConflictKind;
use dmaplace_core::{
    Backing, BufferDesc, Conflict, ImageDesc, PhysAddr, PhysRange, Plan, Platform, Request, Size, SolveError, Usage,
    builtin, solve, verify,
};
use drm_fourcc::DrmFourcc;

fn parse(name: &str, toml: &str) -> Platform {
    Platform::from_toml(name, toml).unwrap_or_else(|e| panic!("{e}"))
}

fn requests<'a>(p: &'a Platform, spec: &[(&str, Usage)]) -> Vec<Request<'a>> {
    spec.iter().map(|(n, h)| Request { device: p.require_device(n).unwrap(), hints: *h }).collect()
}

fn bytes(n: u64) -> BufferDesc {
    BufferDesc::Size(Size::new(n))
}

/// Solves, and checks that the plan's witness backing is accepted by every device.
fn plan(p: &Platform, desc: &BufferDesc, spec: &[(&str, Usage)]) -> Plan {
    let plan = match solve(p, desc, &requests(p, spec)) {
        Ok(plan) => plan,
        Err(e) => panic!("{}: {spec:?} should solve, got: {e}", p.name),
    };
    let b = plan.witness(p).unwrap_or_else(|| panic!("a plan without a backing: {plan:?}"));
    verify(&plan, &plan.devices, &b).unwrap_or_else(|v| panic!("witness {b:?}: {v}"));
    assert!(plan.admits(&b), "{b:?}");
    plan
}

fn conflict(p: &Platform, desc: &BufferDesc, spec: &[(&str, Usage)]) -> Conflict {
    match solve(p, desc, &requests(p, spec)) {
        Err(SolveError::Conflict(c)) => *c,
        other => panic!("{}: {spec:?} should conflict, got {other:?}", p.name),
    }
}

/// The witness's segments as `(start, length)`.
fn segments(p: &Platform, plan: &Plan) -> Vec<(u64, u64)> {
    plan.witness(p).unwrap().segments.iter().map(|r| (r.start().get(), r.len().bytes())).collect()
}

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const NONE: Usage = Usage::empty();

// ---------------------------------------------------------------------------------------
// The IOVA space: the solver and the IOMMU model agree (guard page, aperture, alignment).

/// rk3399's RGA: its MMU table covers 2^25 = 32 MiB of IOVA, and IOVA 0..4 KiB is kept
/// back (as `iommu-dma` starts its domain at page 1), so a 32 MiB buffer cannot be mapped
/// (the case the stress test found: `dmaplace solve -p rk3399 -d rga --size 32MiB`).
#[test]
fn iova_space_keeps_its_first_page_back() {
    let p = builtin::load("rk3399").unwrap().unwrap();
    let c = conflict(&p, &bytes(32 * M), &[("rga", NONE)]);
    assert_eq!(
        c.kind,
        ConflictKind::IovaSpace {
            size: Size::mib(32),
            space: Size::mib(32),
            reserved: Size::kib(4),
            alignment: Size::kib(4)
        }
    );
    assert!(c.message.contains("of which the first 4 KiB is kept back"), "{}", c.message);
    plan(&p, &bytes(32 * M - 4 * K), &[("rga", NONE)]);
}

const VTD28: &str = r#"
[platform]
name = "vtd28"
description = "one device behind VT-d with a 28-bit IOVA space"
[memory]
[[memory.bank]]
name = "dram"
start = 0
size = "1GiB"
[[device]]
name = "dev"
class = "gpu"
[device.placement.iommu]
name = "VT-d"
pgsize_bitmap = ["4KiB", "2MiB", "1GiB"]
iova_bits = 28
"#;

/// A mapping is aligned to the largest page that fits it: 255 MiB is 2 MiB-aligned, so it
/// would start at 2 MiB and end past 256 MiB; 254 MiB fits (2 + 254 = 256).
#[test]
fn iova_mappings_are_aligned_to_their_largest_page() {
    let p = parse("vtd28", VTD28);
    let c = conflict(&p, &bytes(255 * M), &[("dev", NONE)]);
    assert_eq!(
        c.kind,
        ConflictKind::IovaSpace {
            size: Size::mib(255),
            space: Size::mib(256),
            reserved: Size::kib(4),
            alignment: Size::mib(2)
        }
    );
    plan(&p, &bytes(254 * M), &[("dev", NONE)]);
}

// ---------------------------------------------------------------------------------------
// Alignment for every segment count; the IOMMU's granule binds both edges.

const ALIGNED: &str = r#"
[platform]
name = "aligned"
description = "64 KiB of memory starting 4 KiB in, and a bank at 1 MiB"
[memory]
max_buddy_block = "64KiB"
[[memory.bank]]
name = "dram"
start = 0x1000
size = 0x10000
[[memory.bank]]
name = "high"
start = 0x10_0000
size = "1MiB"
[[device]]
name = "dma"
class = "dma"
description = "two segments, each buffer 64 KiB-aligned, below 1 MiB"
[device.placement]
dma_mask = 20
max_segments = 2
alignment = "64KiB"
"#;

/// `dram` is 0x1000..0x1_1000. Its page-allocator blocks: 4 KiB at 0x1000, 8 KiB at
/// 0x2000, 16 KiB at 0x4000, 32 KiB at 0x8000, 4 KiB at 0x1_0000. Only 0x1_0000 is
/// 64 KiB-aligned, so the first segment is that 4 KiB block and the second at most the
/// 32 KiB one: 36 KiB fit in two segments, 40 KiB do not (without the alignment, 32 + 16
/// would).
#[test]
fn alignment_binds_buffers_of_any_segment_count() {
    let p = parse("aligned", ALIGNED);
    let ok = plan(&p, &bytes(36 * K), &[("dma", NONE)]);
    assert_eq!(segments(&p, &ok), [(0x1_0000, 4 * K), (0x8000, 32 * K)]);
    let c = conflict(&p, &bytes(40 * K), &[("dma", NONE)]);
    assert_eq!(
        c.kind,
        ConflictKind::NoRoom {
            within: ok.placement.clone(),
            needed: Size::kib(40),
            contiguous: false,
            max_segments: Some(2),
            available: Size::kib(36),
            longest: Size::kib(4),
        }
    );
    assert!(
        c.message.contains("2 segments hold at most 36 KiB there (the longest run is 4 KiB) starting on 64 KiB"),
        "{}",
        c.message
    );
}

const EDGES: &str = r#"
[platform]
name = "edges"
description = "memory from 4 KiB up; a capture card reaching below 0x3_1000, a GPU with 64 KiB pages"
[memory]
[[memory.bank]]
name = "dram"
start = 0x1000
size = 0xf_f000
[[device]]
name = "gpu"
class = "gpu"
description = "64 KiB IOMMU pages"
[device.placement.iommu]
name = "mmu"
pgsize_bitmap = ["64KiB"]
[[device]]
name = "cap"
class = "capture"
description = "reaches below 0x3_1000"
[device.placement]
bus_dma_limit = 0x3_0fff
"#;

/// The capture card reaches 0x1000..0x3_1000 (192 KiB); the GPU maps 64 KiB pages, so
/// every segment starts and ends on 64 KiB, and only 0x1_0000..0x3_0000 (128 KiB) is
/// usable by both. 128 KiB fit; 192 KiB do not, although 192 KiB lie in the window (and
/// each device alone takes them).
#[test]
fn the_iommu_granule_binds_both_edges_of_the_window() {
    let p = parse("edges", EDGES);
    let both = [("cap", NONE), ("gpu", NONE)];
    let ok = plan(&p, &bytes(128 * K), &both);
    assert_eq!(segments(&p, &ok), [(0x1_0000, 64 * K), (0x2_0000, 64 * K)]);
    let c = conflict(&p, &bytes(192 * K), &both);
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { available, contiguous: false, max_segments: None, .. }
            if *available == Size::kib(128)),
        "{:?}",
        c.kind
    );
    assert_eq!(c.devices, ["gpu", "cap"]);
    plan(&p, &bytes(192 * K), &[("cap", NONE)]);
    plan(&p, &bytes(192 * K), &[("gpu", NONE)]);
}

// ---------------------------------------------------------------------------------------
// A contiguous run fits inside one region.

const TWIN: &str = r#"
[platform]
name = "twin"
description = "two adjacent 8 MiB CMA areas, a carveout right after them, and a bank starting 2 MiB into a 4 MiB block"
[memory]
[[memory.bank]]
name = "dram"
start = 0x8000_0000
size = "32MiB"
[[memory.bank]]
name = "odd"
start = 0x1_0020_0000
size = "4MiB"
[[memory.cma]]
name = "cma-a"
start = 0x8000_0000
size = "8MiB"
[[memory.cma]]
name = "cma-b"
start = 0x8080_0000
size = "8MiB"
[[memory.carveout]]
name = "camera"
start = 0x8100_0000
size = "8MiB"
[[device]]
name = "dss"
class = "display"
description = "contiguous, below 4 GiB"
[device.placement]
dma_mask = 32
max_segments = 1
[[device]]
name = "isp"
class = "camera"
description = "contiguous, in the CMA areas or its carveout"
[device.placement]
max_segments = 1
regions = ["cma-b", "camera"]
[[device]]
name = "dma"
class = "dma"
description = "contiguous, in the odd bank"
[device.placement]
max_segments = 1
regions = ["odd"]
[[device]]
name = "vpu"
class = "video"
description = "three segments, CMA only"
[device.placement]
max_segments = 3
regions = ["cma-a", "cma-b"]
"#;

/// cma-a and cma-b are adjacent (0x8000_0000..0x8100_0000), but a run cannot span two
/// CMA areas: 12 MiB contiguous does not fit, and the longest run reported is 8 MiB (not
/// the 16 MiB of the union).
#[test]
fn a_contiguous_run_never_spans_two_regions() {
    let p = parse("twin", TWIN);
    let c = conflict(&p, &bytes(12 * M), &[("dss", NONE)]);
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: true, available, longest, .. }
            if *needed == Size::mib(12) && *available == Size::mib(8) && *longest == Size::mib(8)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("the longest run there is 8 MiB"), "{}", c.message);
    let ok = plan(&p, &bytes(8 * M), &[("dss", NONE)]);
    assert_eq!(segments(&p, &ok), [(0x8000_0000, 8 * M)]);
    // The camera carveout follows cma-b directly: the isp may use both, still not as one run.
    let c = conflict(&p, &bytes(9 * M), &[("isp", NONE)]);
    assert!(matches!(&c.kind, ConflictKind::NoRoom { available, .. } if *available == Size::mib(8)), "{:?}", c.kind);
}

/// The odd bank is 0x1_0020_0000..0x1_0060_0000: 4 MiB, but the page allocator hands out
/// naturally aligned blocks, and the only 4 MiB block there would be
/// 0x1_0040_0000..0x1_0080_0000. A 4 MiB (or 3 MiB) contiguous buffer does not fit; the
/// longest run is one 2 MiB block.
#[test]
fn a_contiguous_run_from_the_page_allocator_is_one_aligned_block() {
    let p = parse("twin", TWIN);
    for size in [4 * M, 3 * M] {
        let c = conflict(&p, &bytes(size), &[("dma", NONE)]);
        assert!(
            matches!(&c.kind, ConflictKind::NoRoom { available, .. } if *available == Size::mib(2)),
            "{size:#x}: {:?}",
            c.kind
        );
    }
    let ok = plan(&p, &bytes(2 * M), &[("dma", NONE)]);
    assert_eq!(segments(&p, &ok), [(0x1_0020_0000, 2 * M)]);
}

// ---------------------------------------------------------------------------------------
// n segments need the n largest runs.

/// The vpu may use cma-a and cma-b (8 MiB each) in 3 segments: 16 MiB fit (8 + 8), and
/// so does 15 MiB; with the areas cut to 8, 4 and 2 MiB (and a 1 MiB one), 3 segments
/// hold 14 MiB, not the 15 MiB that are free.
#[test]
fn n_segments_hold_only_the_n_largest_runs() {
    let mut p = parse("twin", TWIN);
    plan(&p, &bytes(16 * M), &[("vpu", NONE)]);
    // cma-a 0x8000_0000 (8 MiB), cma-b 0x8080_0000 (4 MiB), cma-c 0x80c0_0000 (2 MiB),
    // cma-d 0x80e0_0000 (1 MiB): adjacent, but four regions.
    p.memory.cma[1].size = Size::mib(4);
    p.memory.cma.push(Region { name: "cma-c".into(), start: PhysAddr::new(0x80c0_0000), size: Size::mib(2) });
    p.memory.cma.push(Region { name: "cma-d".into(), start: PhysAddr::new(0x80e0_0000), size: Size::mib(1) });
    p.devices.iter_mut().find(|d| d.name == "vpu").unwrap().placement.regions =
        ["cma-a", "cma-b", "cma-c", "cma-d"].map(String::from).to_vec();
    let c = conflict(&p, &bytes(15 * M), &[("vpu", NONE)]);
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { max_segments: Some(3), available, longest, .. }
            if *available == Size::mib(14) && *longest == Size::mib(8)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("in at most 3 segments"), "{}", c.message);
    let ok = plan(&p, &bytes(14 * M), &[("vpu", NONE)]);
    assert_eq!(segments(&p, &ok), [(0x8000_0000, 8 * M), (0x8080_0000, 4 * M), (0x80c0_0000, 2 * M)]);
}

// ---------------------------------------------------------------------------------------
// Segment boundaries, in the solver as in verify.

const BOUNDARY: &str = r#"
[platform]
name = "boundary"
description = "a 64 KiB CMA area across a 64 KiB boundary"
[memory]
[[memory.bank]]
name = "dram"
start = 0x1_0000
size = "192KiB"
[[memory.cma]]
name = "cma"
start = 0x1_8000
size = "64KiB"
[[device]]
name = "dma"
class = "dma"
description = "contiguous, never across 64 KiB, in the CMA area"
[device.placement]
max_segments = 1
segment_boundary_mask = 0xffff
regions = ["cma"]
"#;

/// The area 0x1_8000..0x2_8000 is cut by the boundary at 0x2_0000 into two 32 KiB runs:
/// 32 KiB fit, 48 KiB do not (they would cross 0x2_0000).
#[test]
fn segments_never_cross_the_boundary() {
    let p = parse("boundary", BOUNDARY);
    let ok = plan(&p, &bytes(32 * K), &[("dma", NONE)]);
    assert_eq!(segments(&p, &ok), [(0x1_8000, 32 * K)]);
    let c = conflict(&p, &bytes(48 * K), &[("dma", NONE)]);
    assert!(matches!(&c.kind, ConflictKind::NoRoom { available, .. } if *available == Size::kib(32)), "{:?}", c.kind);
    // verify agrees: the 48 KiB run that fits the area crosses the boundary, which makes
    // two sg entries for a device that takes one.
    let b = Backing {
        segments: vec![PhysRange::from_start_size(PhysAddr::new(0x1_8000), Size::kib(48)).unwrap()],
        cache_mode: ok.cache_mode.value,
        protected: false,
    };
    let v = verify(&ok, &ok.devices, &b).unwrap_err();
    assert_eq!(v.constraint, "max_segments");
}

// ---------------------------------------------------------------------------------------
// max_segment_size is rounded down to whole pages.

const SEGSIZE: &str = r#"
[platform]
name = "segsize"
description = "a device whose max_segment_size is not a whole number of pages"
[memory]
[[memory.bank]]
name = "dram"
start = 0
size = "16MiB"
[[device]]
name = "dma"
class = "dma"
description = "two segments of 0x1_0fff bytes (rounded: 64 KiB)"
[device.placement]
max_segments = 2
max_segment_size = 0x10fff
"#;

/// 0x1_0fff rounds down to 0x1_0000 (lib/scatterlist.c: ALIGN_DOWN(max_segment,
/// PAGE_SIZE)): two segments hold 128 KiB, not 132 KiB (2 x 66 KiB).
#[test]
fn max_segment_size_is_rounded_down_to_pages() {
    let p = parse("segsize", SEGSIZE);
    let ok = plan(&p, &bytes(128 * K), &[("dma", NONE)]);
    assert_eq!(ok.requirements.max_segment_size.value, Some(Size::kib(64)));
    assert_eq!(
        ok.devices[0].max_segment_size.why.to_string(),
        "max_segment_size = 69631 B, rounded down to whole pages as lib/scatterlist.c does"
    );
    let c = conflict(&p, &bytes(132 * K), &[("dma", NONE)]);
    assert_eq!(
        c.kind,
        ConflictKind::SegmentLimit { size: Size::kib(132), max_segments: 2, segment_cap: Size::kib(64) }
    );
    // Below one page no sg table can be built, whatever the segment count. A platform
    // file refuses such a limit, but a device described by its driver (the kernel
    // module's dma_parms) can still carry one, so the solver must refuse it too.
    let mut q = p.clone();
    let mut tiny = q.devices[0].clone();
    tiny.name = "tiny".into();
    tiny.placement.max_segments = None;
    tiny.placement.max_segment_size = Some(Size::kib(2));
    q.devices.push(tiny);
    let c = conflict(&q, &bytes(4 * K), &[("tiny", NONE)]);
    assert_eq!(c.kind, ConflictKind::SegmentSize { max_segment_size: Size::ZERO });
    assert_eq!(ok.requirements.max_segment_size.causes.iter().collect::<Vec<_>>(), [0]);
}

/// A device without a segment count limit takes any number of sg entries: its
/// `max_segment_size` does not make a contiguous buffer shared with a display impossible
/// (the kernel's default 64 KiB `max_segment_size` would otherwise refuse every scanout
/// buffer over 64 KiB).
#[test]
fn uncounted_segment_sizes_are_not_stacked() {
    let p = parse("twin", TWIN);
    let mut q = p.clone();
    let dss = q.devices.iter().position(|d| d.name == "dss").unwrap();
    let mut other = q.devices[dss].clone();
    other.name = "gpu".into();
    other.placement.max_segments = None;
    other.placement.max_segment_size = Some(Size::kib(64));
    q.devices.push(other);
    let ok = plan(&q, &bytes(8 * M), &[("dss", NONE), ("gpu", NONE)]);
    assert!(ok.contiguous());
    assert_eq!(ok.requirements.max_segment_size.value, None);
}

// ---------------------------------------------------------------------------------------
// The reported conflict does not depend on the order of the devices.

/// On refsoc the dpu (SCANOUT: contiguous below 4 GiB), the isp (its carveout above
/// 4 GiB) and vdec (PROTECTED: the secure carveout) conflict pairwise: {dpu, isp},
/// {dpu, vdec} and {isp, vdec} are all minimal. The one reported is the first in platform
/// order (dpu, gpu, venc, isp, vdec, g2d): {dpu, isp}, for every order of the request.
#[test]
fn the_reported_conflict_is_the_first_minimal_set_in_platform_order() {
    let p = builtin::load("refsoc").unwrap().unwrap();
    let spec = [("isp", Usage::CAMERA_WRITE), ("vdec", Usage::PROTECTED), ("dpu", Usage::SCANOUT), ("gpu", NONE)];
    let first = conflict(&p, &bytes(8 * M), &spec);
    assert_eq!(first.devices, ["dpu", "isp"]);
    let mut order: Vec<usize> = (0..spec.len()).collect();
    // Every permutation (Heap's algorithm).
    fn permute(k: usize, order: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k == 1 {
            out.push(order.clone());
            return;
        }
        for i in 0..k {
            permute(k - 1, order, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            order.swap(j, k - 1);
        }
    }
    let mut all = Vec::new();
    permute(order.len(), &mut order, &mut all);
    assert_eq!(all.len(), 24);
    for perm in all {
        let shuffled: Vec<(&str, Usage)> = perm.iter().map(|&i| spec[i]).collect();
        assert_eq!(conflict(&p, &bytes(8 * M), &shuffled), first, "{shuffled:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Layout and placement together (issue 12).

const LAWFUL_D0: &str = r#"
[platform]
name = "lawful"
description = "the laws' platform, with the device d0 of the failing case"
[memory]
[[memory.bank]]
name = "low"
start = 0
size = "2GiB"
[[memory.bank]]
name = "high"
start = 0x1_0000_0000
size = "4GiB"
[[memory.cma]]
name = "cma-low"
start = 0x3000_0000
size = "64MiB"
[[memory.cma]]
name = "cma"
start = 0x7000_0000
size = "256MiB"
[[device]]
name = "d0"
class = "other"
description = "segments of at most 64 KiB; NV12 linear or Y-tiled"
[device.placement]
max_segment_size = "64KiB"
[device.layout]
formats = [{ fourcc = "NV12", modifiers = ["I915_Y_TILED", "LINEAR"] }]
[[rule]]
device = "d0"
hints = ["SCANOUT"]
contiguous = true
dma_bits = 32
bypass_iommu = true
reason = "test rule"
"#;

fn nv12(width: u32, height: u32) -> BufferDesc {
    BufferDesc::Image(ImageDesc { width, height, format: DrmFourcc::Nv12, modifiers: vec![] })
}

/// The case `PROPTEST_CASES=100000` found: d0 with SCANOUT (contiguous, 64 KiB segments)
/// and a 1423x2 NV12 image. Y-tiled is preferred (tiled before LINEAR), but its 128 B x
/// 32-row tiles make each plane 1536 B x 32 rows: 2 x 48 KiB = 96 KiB, which one segment
/// of at most 64 KiB cannot hold. LINEAR (1423 B x 2 + 1424 B x 1 = 4270 B, 8 KiB) can:
/// the plan uses it and says why Y-tiled was not.
#[test]
fn d0_scanout_1423x2_nv12_is_placed_linear_after_y_tiled_fails() {
    let p = parse("lawful", LAWFUL_D0);
    let plan = plan(&p, &nv12(1423, 2), &[("d0", Usage::SCANOUT)]);
    let l = plan.layout.as_ref().unwrap();
    assert_eq!(l.candidates, [MOD_I915_Y_TILED, MOD_LINEAR]);
    assert_eq!(l.layout.modifier, MOD_LINEAR);
    assert_eq!(l.layout.size, 4270);
    assert_eq!(plan.size, Size::kib(8));
    assert_eq!(l.rejected.len(), 1);
    let r = &l.rejected[0];
    assert_eq!((r.modifier, r.modifier_name.as_str(), r.size), (MOD_I915_Y_TILED, "I915_Y_TILED", Size::kib(96)));
    assert_eq!(r.kind, ConflictKind::SegmentLimit { size: Size::kib(96), max_segments: 1, segment_cap: Size::kib(64) });
    assert!(
        r.reason.contains("allows at most 1 segment(s) of at most 64 KiB each, which cannot hold 96 KiB"),
        "{}",
        r.reason
    );
    // Alone (not contiguous), d0 keeps the preferred Y-tiled layout.
    let free = self::plan(&p, &nv12(1423, 2), &[("d0", NONE)]);
    assert_eq!(free.layout.unwrap().layout.modifier, MOD_I915_Y_TILED);
}

/// When no candidate can be placed the conflict keeps one entry per candidate, the
/// preferred first: 4096x32 NV12 is 256 KiB Y-tiled (the 16 chroma rows pad to a 32-row
/// tile) and 192 KiB linear, both over 64 KiB.
#[test]
fn a_conflict_lists_every_layout_candidate() {
    let p = parse("lawful", LAWFUL_D0);
    let c = conflict(&p, &nv12(4096, 32), &[("d0", Usage::SCANOUT)]);
    let tried: Vec<(&str, Size)> = c.candidates.iter().map(|t| (t.modifier_name.as_str(), t.size)).collect();
    assert_eq!(tried, [("I915_Y_TILED", Size::kib(256)), ("LINEAR", Size::kib(192))]);
    assert_eq!(c.kind, c.candidates[0].kind);
    assert!(
        c.message.starts_with(
            "no layout of NV12 4096x32 that every device accepts can be placed; I915_Y_TILED (preferred, 256 KiB): "
        ),
        "{}",
        c.message
    );
    assert!(c.message.contains("; LINEAR (then tried, 192 KiB): "), "{}", c.message);
}
