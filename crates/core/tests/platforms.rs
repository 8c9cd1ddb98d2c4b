//! The shipped platform descriptions (`platforms/*.toml`) and the solver behaviour each
//! one exists to show. Every assertion pins an exact value: a platform edit that changes
//! a behaviour must change its test too.

use std::path::PathBuf;

use dmaplace_core::builtin;
use dmaplace_core::layout::{
    self, MOD_ARM_16X16_BLOCK_U_INTERLEAVED, MOD_BROADCOM_VC4_T_TILED, MOD_I915_4_TILED, MOD_I915_X_TILED,
    MOD_I915_Y_TILED, MOD_LINEAR,
};
use dmaplace_core::solver::ConflictKind;
use dmaplace_core::{
    BufferDesc, CacheMode, Conflict, DeviceSet, Effective, Field, ImageDesc, PageSize, Plan, Platform, Request, Size,
    SolveError, Usage, solve,
};

// ---------------------------------------------------------------------------------------
// Helpers. Everything that reads the shape of a Plan goes through these, so an API change
// in the core touches this block only.

fn platform(name: &str) -> Platform {
    match builtin::load(name) {
        Some(Ok(p)) => p,
        Some(Err(e)) => panic!("built-in platform {name} does not parse: {e}"),
        None => panic!("no built-in platform {name}"),
    }
}

fn requests<'a>(p: &'a Platform, spec: &[(&str, Usage)]) -> Vec<Request<'a>> {
    spec.iter()
        .map(|(name, hints)| Request {
            device: p.require_device(name).unwrap_or_else(|e| panic!("{e}")),
            hints: *hints,
        })
        .collect()
}

fn image(width: u32, height: u32, fourcc: &str) -> BufferDesc {
    BufferDesc::Image(ImageDesc { width, height, format: layout::parse_fourcc(fourcc).unwrap(), modifiers: vec![] })
}

fn image_with(width: u32, height: u32, fourcc: &str, modifiers: &[u64]) -> BufferDesc {
    BufferDesc::Image(ImageDesc {
        width,
        height,
        format: layout::parse_fourcc(fourcc).unwrap(),
        modifiers: modifiers.to_vec(),
    })
}

fn bytes(size: Size) -> BufferDesc {
    BufferDesc::Size(size)
}

fn plan(p: &Platform, desc: &BufferDesc, spec: &[(&str, Usage)]) -> Plan {
    match solve(p, desc, &requests(p, spec)) {
        Ok(plan) => plan,
        Err(e) => panic!("{}: {spec:?} should solve, got: {e}", p.name),
    }
}

fn conflict(p: &Platform, desc: &BufferDesc, spec: &[(&str, Usage)]) -> Conflict {
    match solve(p, desc, &requests(p, spec)) {
        Err(SolveError::Conflict(c)) => *c,
        Err(e) => panic!("{}: {spec:?} should conflict, got the invalid request: {e}", p.name),
        Ok(plan) => panic!("{}: {spec:?} should conflict, got a plan placed in {}", p.name, plan.placement),
    }
}

/// `(device, why)` of every device that narrowed the physical address window.
fn window_causes(plan: &Plan) -> Vec<(String, String)> {
    plan.causes(plan.requirements.window.causes, Field::Window).into_iter().map(|c| (c.device, c.why)).collect()
}

/// `(device, why)` of every device that limits the segment count.
fn segment_causes(plan: &Plan) -> Vec<(String, String)> {
    plan.causes(plan.requirements.max_segments.causes, Field::MaxSegments)
        .into_iter()
        .map(|c| (c.device, c.why))
        .collect()
}

/// The devices in `set`, sorted by name.
fn sorted_names(plan: &Plan, set: DeviceSet) -> Vec<String> {
    let mut v: Vec<String> = plan.names(set).into_iter().map(str::to_owned).collect();
    v.sort();
    v
}

fn cache_causes(plan: &Plan) -> Vec<String> {
    sorted_names(plan, plan.cache_mode.causes)
}

/// `(pitch alignment, the devices that asked for it)`.
fn pitch_align(plan: &Plan) -> (u32, Vec<String>) {
    let l = plan.layout.as_ref().expect("an image plan has a layout");
    (l.pitch_align.value, sorted_names(plan, l.pitch_align.causes))
}

/// `(modifier, [(offset, pitch, rows)], size)` of the chosen layout.
fn layout_of(plan: &Plan) -> (u64, Vec<(u32, u32, u32)>, u64) {
    let l = &plan.layout.as_ref().expect("an image plan has a layout").layout;
    (l.modifier, l.planes.iter().map(|p| (p.offset, p.pitch, p.rows)).collect(), l.size)
}

/// The preferred chunk sizes, largest first, with the devices that map each in one entry.
fn chunk_prefs(plan: &Plan) -> Vec<(PageSize, Vec<String>)> {
    plan.preferences.chunk_sizes.iter().map(|c| (c.size, sorted_names(plan, c.devices))).collect()
}

/// Each translated device's estimated page-table entries, `(page size, count)` largest
/// first, in request order.
fn ptes(plan: &Plan) -> Vec<(String, Vec<(PageSize, u64)>)> {
    plan.preferences.entries.iter().map(|e| (plan.devices[e.device].device.clone(), e.ptes.by_size.clone())).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// `(device or name, text)` pairs as owned strings.
fn why_pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(d, w)| ((*d).to_owned(), (*w).to_owned())).collect()
}

/// Asserts the causes are exactly these devices, in order, each `why` ending with the
/// given reason (the core may put the hint in front of a rule's reason).
fn assert_rule_cause(causes: &[(String, String)], expected: &[(&str, &str)]) {
    let devices: Vec<&str> = causes.iter().map(|(d, _)| d.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|(d, _)| *d).collect();
    assert_eq!(devices, want, "{causes:?}");
    for ((_, why), (_, reason)) in causes.iter().zip(expected) {
        assert!(why.ends_with(reason), "{why:?} does not end with {reason:?}");
    }
}

fn hex_window(plan: &Plan) -> String {
    plan.placement.to_string()
}

const NONE: Usage = Usage::empty();
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------
// Every file parses and is embedded.

fn platforms_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../platforms")
}

#[test]
fn every_platform_file_parses_and_is_registered_in_builtin() {
    let mut on_disk = Vec::new();
    for entry in std::fs::read_dir(platforms_dir()).expect("platforms/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let Some((_, embedded)) = builtin::BUILTIN.iter().find(|(n, _)| *n == stem) else {
            panic!("platforms/{stem}.toml is not registered in builtin::BUILTIN (crates/core/src/builtin.rs)");
        };
        assert_eq!(*embedded, text, "builtin::BUILTIN[{stem}] embeds a different file than platforms/{stem}.toml");
        let parsed = Platform::from_toml(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.name, stem, "[platform].name must match the file name");
        assert!(text.contains("Sources") || text.contains("sources"), "platforms/{stem}.toml must cite its sources");
        assert!(!parsed.devices.is_empty(), "{stem} describes no device");
        for d in &parsed.devices {
            assert!(!d.description.is_empty(), "{stem}: device {} has no description", d.name);
        }
        on_disk.push(stem);
    }
    on_disk.sort();
    let mut registered: Vec<String> = builtin::names().map(str::to_owned).collect();
    registered.sort();
    assert_eq!(registered, on_disk, "BUILTIN and platforms/ must list the same platforms");
    assert_eq!(
        on_disk,
        names(&["kayla", "omap3", "omap4", "refsoc", "rk3399", "rpi4", "x86-desktop"]),
        "the shipped set (update docs/PLATFORMS.md when it changes)"
    );
    assert_eq!(builtin::DEFAULT_PLATFORM, "refsoc");
    assert_eq!(platform(builtin::DEFAULT_PLATFORM).name, "refsoc");
    assert!(builtin::load("no-such-soc").is_none());
}

// ---------------------------------------------------------------------------------------
// omap3 / omap4: the seed thread's example. SCANOUT means contiguous on omap3 only.

/// The reason of omap3's SCANOUT rule, as its file says it.
const OMAP3_REASON: &str =
    "no DMM/TILER on OMAP3: omapdrm scans out with dma_alloc_wc (drivers/gpu/drm/omapdrm/omap_gem.c)";

#[test]
fn omap3_dss_scanout_with_sgx_is_contiguous_because_of_the_rule() {
    let p = platform("omap3");
    let plan = plan(&p, &image(1024, 768, "XR24"), &[("dss", Usage::SCANOUT), ("sgx", Usage::RENDERING)]);
    assert!(plan.contiguous());
    assert_eq!(plan.requirements.max_segments.value.map(|n| n.get()), Some(1));
    assert_rule_cause(&segment_causes(&plan), &[("dss", OMAP3_REASON)]);
    // All of omap3's 512 MiB is below 4 GiB: no device narrows the window.
    assert_eq!(hex_window(&plan), "0x8000_0000..0xa000_0000");
    assert!(window_causes(&plan).is_empty());
    assert_eq!(plan.cache_mode.value, CacheMode::WriteCombined);
    assert_eq!(cache_causes(&plan), names(&["dss"]));
    // lcm(8, 32) = 32; 1024 * 4 = 4096 is already a multiple.
    assert_eq!(pitch_align(&plan), (32, names(&["dss", "sgx"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 4096, 768)], 3 * MIB));

    // Without SCANOUT the rule does not apply: the DSS alone asks for no contiguity.
    let plain = self::plan(&p, &image(1024, 768, "XR24"), &[("dss", Usage::TEXTURING), ("sgx", Usage::RENDERING)]);
    assert!(!plain.contiguous());
}

#[test]
fn omap3_conflict_scanout_larger_than_cma_names_only_the_dss() {
    let p = platform("omap3");
    let c = conflict(&p, &bytes(Size::mib(96)), &[("sgx", Usage::RENDERING), ("dss", Usage::SCANOUT), ("isp", NONE)]);
    assert_eq!(c.devices, names(&["dss"]));
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: true, available, .. } if *needed == Size::mib(96) && *available == Size::mib(64)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("display `dss` (omap3)"), "{}", c.message);
    assert!(c.message.contains("96 MiB of physically contiguous memory"), "{}", c.message);
    assert!(c.message.contains("the longest run there is 64 MiB"), "{}", c.message);
    assert!(c.message.contains(OMAP3_REASON), "{}", c.message);
    assert!(!c.message.contains("`sgx`") && !c.message.contains("`isp`"), "{}", c.message);
}

#[test]
fn omap4_dss_scanout_with_sgx_is_not_contiguous_thanks_to_the_dmm() {
    let p = platform("omap4");
    assert!(p.rules.is_empty(), "omap4 has no SCANOUT rule: DMM/TILER remaps");
    let plan = plan(&p, &image(1024, 768, "XR24"), &[("dss", Usage::SCANOUT), ("sgx", Usage::RENDERING)]);
    assert!(!plan.contiguous());
    assert_eq!(plan.requirements.max_segments.value, None);
    assert!(segment_causes(&plan).is_empty());
    // General memory: DRAM minus the IPU firmware carveout.
    assert_eq!(hex_window(&plan), "0x8000_0000..0xb800_0000 ∪ 0xbc00_0000..0xc000_0000");
    // Both map 4 KiB pages: 3 MiB is 768 entries each.
    assert_eq!(chunk_prefs(&plan), vec![(PageSize::SZ_4K, names(&["dss", "sgx"]))]);
    assert_eq!(
        ptes(&plan),
        vec![("dss".to_owned(), vec![(PageSize::SZ_4K, 768)]), ("sgx".to_owned(), vec![(PageSize::SZ_4K, 768)])]
    );
}

#[test]
fn omap4_conflict_buffer_larger_than_the_tiler_container_names_only_the_dss() {
    let p = platform("omap4");
    let c = conflict(&p, &bytes(Size::mib(192)), &[("sgx", Usage::RENDERING), ("dss", Usage::SCANOUT), ("iva", NONE)]);
    assert_eq!(c.devices, names(&["dss"]));
    assert_eq!(
        c.kind,
        ConflictKind::IovaSpace {
            size: Size::mib(192),
            space: Size::mib(128),
            reserved: Size::kib(4),
            alignment: Size::kib(4)
        }
    );
    assert!(c.message.contains("display `dss`"), "{}", c.message);
    assert!(c.message.contains("dmm-tiler"), "{}", c.message);
    assert!(c.message.contains("192 MiB") && c.message.contains("128 MiB"), "{}", c.message);
    // The container keeps its first page back (IOVA 0 is never handed out): 128 MiB does
    // not fit, 128 MiB - 4 KiB does.
    let c = conflict(&p, &bytes(Size::mib(128)), &[("sgx", Usage::RENDERING), ("dss", Usage::SCANOUT), ("iva", NONE)]);
    assert_eq!(c.devices, names(&["dss"]));
    plan(
        &p,
        &bytes(Size::new((128 << 20) - 4096)),
        &[("sgx", Usage::RENDERING), ("dss", Usage::SCANOUT), ("iva", NONE)],
    );
}

// ---------------------------------------------------------------------------------------
// rpi4: the HVS is contiguous and 30-bit.

#[test]
fn rpi4_hvs_scanout_with_v3d_is_contiguous_below_1gib() {
    let p = platform("rpi4");
    let plan = plan(&p, &image(1920, 1080, "XR24"), &[("hvs", Usage::SCANOUT), ("v3d", Usage::RENDERING)]);
    assert!(plan.contiguous());
    assert_eq!(segment_causes(&plan), why_pairs(&[("hvs", "max_segments = 1")]));
    // Below 1 GiB, minus the VideoCore firmware's memory at 0x3b40_0000.
    assert_eq!(hex_window(&plan), "0x2000_0000..0x3000_0000");
    assert!(plan.placement.end().unwrap().get() <= GIB);
    assert_eq!(window_causes(&plan), why_pairs(&[("hvs", "bus_dma_limit = 0x3fffffff")]));
    assert_eq!(plan.cache_mode.value, CacheMode::WriteCombined);
    // V3D does not sample T-tiled: the shared layout is LINEAR, pitch 64.
    assert_eq!(pitch_align(&plan), (64, names(&["hvs", "v3d"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 7680, 1080)], 8_294_400));

    // The HVS alone prefers its T-tiled format: 128 B x 32-row tiles.
    let alone = self::plan(&p, &image(1920, 1080, "XR24"), &[("hvs", Usage::SCANOUT)]);
    assert_eq!(layout_of(&alone), (MOD_BROADCOM_VC4_T_TILED, vec![(0, 7680, 1088)], 7680 * 1088));
}

#[test]
fn rpi4_conflict_scanout_larger_than_cma_names_only_the_hvs() {
    let p = platform("rpi4");
    let c = conflict(&p, &bytes(Size::mib(300)), &[("v3d", Usage::RENDERING), ("hvs", Usage::SCANOUT)]);
    assert_eq!(c.devices, names(&["hvs"]));
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: true, available, .. } if *needed == Size::mib(300) && *available == Size::mib(256)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("display `hvs` (rpi4)"), "{}", c.message);
    assert!(c.message.contains("below 0x4000_0000 (bus_dma_limit = 0x3fffffff)"), "{}", c.message);
    assert!(!c.message.contains("`v3d`"), "{}", c.message);
}

// ---------------------------------------------------------------------------------------
// rk3399: IOMMUs everywhere, but RGA2's MMU is small and 32-bit.

#[test]
fn rk3399_vop_gpu_rga_share_a_buffer_through_their_mmus() {
    let p = platform("rk3399");
    let plan =
        plan(&p, &image(1920, 1080, "XR24"), &[("vop", Usage::SCANOUT), ("gpu", Usage::RENDERING), ("rga", NONE)]);
    assert!(!plan.contiguous());
    // rga's MMU reaches only below 4 GiB, but all of a 4 GiB RK3399's RAM is there.
    assert!(window_causes(&plan).is_empty());
    // General memory: DRAM minus the OP-TEE carveout.
    assert_eq!(hex_window(&plan), "0x20_0000..0x840_0000 ∪ 0xa40_0000..0xf800_0000");
    assert_eq!(pitch_align(&plan), (64, names(&["gpu", "rga", "vop"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 7680, 1080)], 8_294_400));
    assert_eq!(
        chunk_prefs(&plan),
        vec![(PageSize::SZ_2M, names(&["gpu"])), (PageSize::SZ_4K, names(&["gpu", "rga", "vop"]))]
    );
    // 8_294_400 B = 3 x 2 MiB + 489 x 4 KiB for the Mali; 2025 x 4 KiB for the others.
    assert_eq!(
        ptes(&plan),
        vec![
            ("vop".to_owned(), vec![(PageSize::SZ_4K, 2025)]),
            ("gpu".to_owned(), vec![(PageSize::SZ_2M, 3), (PageSize::SZ_4K, 489)]),
            ("rga".to_owned(), vec![(PageSize::SZ_4K, 2025)]),
        ]
    );
    // The GPU alone renders in Arm's 16x16 blocks.
    let gpu = self::plan(&p, &image(1920, 1080, "XR24"), &[("gpu", Usage::RENDERING)]);
    assert_eq!(layout_of(&gpu).0, MOD_ARM_16X16_BLOCK_U_INTERLEAVED);
}

#[test]
fn rk3399_conflict_frame_larger_than_the_rga_mmu_table_names_only_the_rga() {
    let p = platform("rk3399");
    // 4096 x 3072 XR24 = 48 MiB; the RGA MMU table covers 32 MiB.
    let c =
        conflict(&p, &image(4096, 3072, "XR24"), &[("vop", Usage::SCANOUT), ("gpu", Usage::RENDERING), ("rga", NONE)]);
    assert_eq!(c.devices, names(&["rga"]));
    assert_eq!(
        c.kind,
        ConflictKind::IovaSpace {
            size: Size::mib(48),
            space: Size::mib(32),
            reserved: Size::kib(4),
            alignment: Size::kib(4)
        }
    );
    assert!(c.message.contains("DMA engine `rga`") && c.message.contains("rga-mmu"), "{}", c.message);
    assert!(!c.message.contains("`vop`") && !c.message.contains("`gpu`"), "{}", c.message);
}

// ---------------------------------------------------------------------------------------
// kayla: the SoC display and the PCIe dGPU.

#[test]
fn kayla_display_with_dgpu_is_contiguous_with_nvidia_pitch() {
    let p = platform("kayla");
    let plan = plan(&p, &image(1366, 768, "XR24"), &[("dc", Usage::SCANOUT), ("gk", Usage::RENDERING)]);
    assert!(plan.contiguous());
    assert_eq!(segment_causes(&plan), why_pairs(&[("dc", "max_segments = 1")]));
    // lcm(64, 128) = 128: 1366 * 4 = 5464 -> 5504.
    assert_eq!(pitch_align(&plan), (128, names(&["dc", "gk"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 5504, 768)], 5504 * 768));
    // Contiguous: one run, which the Kepler MMU maps with 128 KiB pages where it can.
    assert_eq!(chunk_prefs(&plan)[0], (PageSize::new(128 << 10).unwrap(), names(&["gk"])));
    assert_eq!(
        ptes(&plan),
        vec![("gk".to_owned(), vec![(PageSize::new(128 << 10).unwrap(), 32), (PageSize::SZ_4K, 8)])]
    );
}

#[test]
fn kayla_conflict_scanout_larger_than_cma_names_only_the_display() {
    let p = platform("kayla");
    let c = conflict(&p, &bytes(Size::mib(96)), &[("gk", Usage::RENDERING), ("dc", Usage::SCANOUT), ("gr3d", NONE)]);
    assert_eq!(c.devices, names(&["dc"]));
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: true, available, .. } if *needed == Size::mib(96) && *available == Size::mib(64)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("display `dc` (kayla)"), "{}", c.message);
    assert!(!c.message.contains("`gk`") && !c.message.contains("`gr3d`"), "{}", c.message);
}

// ---------------------------------------------------------------------------------------
// x86-desktop: VT-d with 1 GiB pages, and a 32-bit card the IOMMU does not translate.

#[test]
fn x86_igpu_and_dgpu_share_256_byte_pitch_and_vtd_chunking() {
    let p = platform("x86-desktop");
    let both = [("igpu", Usage::TEXTURING), ("dgpu", Usage::RENDERING)];

    let plan = plan(&p, &image(1920, 1080, "XR24"), &both);
    assert_eq!(pitch_align(&plan), (256, names(&["dgpu", "igpu"])));
    // 1920 px * 4 B = 7680 B = 30 * 256: no padding; LINEAR is the only shared modifier.
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 7680, 1080)], 8_294_400));
    assert!(!plan.contiguous());
    assert!(window_causes(&plan).is_empty(), "VT-d reaches all RAM");
    assert_eq!(
        ptes(&plan),
        vec![
            ("igpu".to_owned(), vec![(PageSize::SZ_2M, 3), (PageSize::SZ_4K, 489)]),
            ("dgpu".to_owned(), vec![(PageSize::SZ_2M, 3), (PageSize::SZ_4K, 489)]),
        ]
    );
    // 1366 px: 5464 B -> 5632 B (22 * 256).
    let narrow = self::plan(&p, &image(1366, 768, "XR24"), &both);
    assert_eq!(layout_of(&narrow), (MOD_LINEAR, vec![(0, 5632, 768)], 5632 * 768));

    // 8 MiB: 2 MiB chunks (1 GiB is larger than the buffer), 4 entries each.
    let plan = self::plan(&p, &bytes(Size::mib(8)), &both);
    assert_eq!(
        chunk_prefs(&plan),
        vec![(PageSize::SZ_2M, names(&["dgpu", "igpu"])), (PageSize::SZ_4K, names(&["dgpu", "igpu"]))]
    );
    assert_eq!(plan.preferences.alignment, PageSize::SZ_2M);
    assert_eq!(
        ptes(&plan),
        vec![("igpu".to_owned(), vec![(PageSize::SZ_2M, 4)]), ("dgpu".to_owned(), vec![(PageSize::SZ_2M, 4)])]
    );

    // 4 GiB: 1 GiB chunks, 4 entries each.
    let plan = self::plan(&p, &bytes(Size::gib(4)), &both);
    assert_eq!(chunk_prefs(&plan)[0], (PageSize::SZ_1G, names(&["dgpu", "igpu"])));
    assert_eq!(plan.preferences.alignment, PageSize::SZ_1G);
    assert_eq!(
        ptes(&plan),
        vec![("igpu".to_owned(), vec![(PageSize::SZ_1G, 4)]), ("dgpu".to_owned(), vec![(PageSize::SZ_1G, 4)])]
    );
}

#[test]
fn x86_igpu_tiling_follows_the_modifier_pitch_rules() {
    let p = platform("x86-desktop");
    let igpu = [("igpu", Usage::RENDERING)];
    // Preference: Tile-4 first. 1366 * 4 = 5464 B -> 5504 (43 tiles of 128 B); 768 rows = 24 x 32.
    let plan = plan(&p, &image(1366, 768, "XR24"), &igpu);
    assert_eq!(layout_of(&plan), (MOD_I915_4_TILED, vec![(0, 5504, 768)], 5504 * 768));
    let y = self::plan(&p, &image_with(1366, 768, "XR24", &[MOD_I915_Y_TILED]), &igpu);
    assert_eq!(layout_of(&y), (MOD_I915_Y_TILED, vec![(0, 5504, 768)], 5504 * 768));
    // X tiles are 512 B x 8 rows: 5464 -> 5632 B.
    let x = self::plan(&p, &image_with(1366, 767, "XR24", &[MOD_I915_X_TILED]), &igpu);
    assert_eq!(layout_of(&x), (MOD_I915_X_TILED, vec![(0, 5632, 768)], 5632 * 768));
    // LINEAR: 64 B -> 5504 B.
    let l = self::plan(&p, &image_with(1366, 768, "XR24", &[MOD_LINEAR]), &igpu);
    assert_eq!(layout_of(&l), (MOD_LINEAR, vec![(0, 5504, 768)], 5504 * 768));
}

#[test]
fn x86_igpu_scanout_is_not_cached() {
    let p = platform("x86-desktop");
    let plan = plan(&p, &image(1920, 1080, "XR24"), &[("igpu", Usage::SCANOUT), ("dgpu", Usage::RENDERING)]);
    assert_eq!(plan.cache_mode.value, CacheMode::WriteCombined);
    assert_eq!(cache_causes(&plan), names(&["igpu"]));
    let plain = self::plan(&p, &image(1920, 1080, "XR24"), &[("igpu", Usage::RENDERING), ("dgpu", Usage::RENDERING)]);
    assert_eq!(plain.cache_mode.value, CacheMode::Cached);
}

#[test]
fn x86_capture_card_without_iommu_keeps_the_buffer_below_4gib() {
    let p = platform("x86-desktop");
    let plan = plan(&p, &bytes(Size::mib(8)), &[("capture", Usage::CAMERA_WRITE), ("dgpu", Usage::RENDERING)]);
    // Below 4 GiB: RAM below the PCI hole, minus the iGPU's stolen memory.
    assert_eq!(hex_window(&plan), "0x0..0xbc00_0000");
    assert!(plan.placement.end().unwrap().get() <= 4 * GIB);
    assert_eq!(window_causes(&plan), why_pairs(&[("capture", "dma_mask = 32-bit")]));
    assert!(!plan.contiguous());
    // Only the dGPU is translated; it still prefers 2 MiB chunks.
    assert_eq!(ptes(&plan), vec![("dgpu".to_owned(), vec![(PageSize::SZ_2M, 4)])]);
}

#[test]
fn x86_conflict_4gib_for_the_capture_card_names_only_the_card() {
    let p = platform("x86-desktop");
    let c = conflict(
        &p,
        &bytes(Size::gib(4)),
        &[("igpu", NONE), ("capture", Usage::CAMERA_WRITE), ("dgpu", Usage::RENDERING)],
    );
    assert_eq!(c.devices, names(&["capture"]));
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: false, available, .. } if *needed == Size::gib(4) && *available == Size::mib(3008)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("capture `capture` (x86-desktop)"), "{}", c.message);
    assert!(c.message.contains("below 0x1_0000_0000 (dma_mask = 32-bit)"), "{}", c.message);
    assert!(c.message.contains("3008 MiB"), "{}", c.message);
    assert!(!c.message.contains("`igpu`") && !c.message.contains("`dgpu`"), "{}", c.message);
}

// ---------------------------------------------------------------------------------------
// refsoc: the demo's story.

/// The reason of refsoc's SCANOUT rule for the dpu, as its file says it.
const REFSOC_REASON: &str = "the dpu has no IOMMU and scans out of physical addresses (modelled on OMAP3 DSS, omap_gem.c, and the Pi 4 HVS, raspberrypi/linux issue 5727)";

/// What the core says about the dpu's contiguity under SCANOUT (the rule's reason, with
/// the hint in front in the core's own words).
fn refsoc_dpu_scanout_why(p: &Platform) -> String {
    let why = Effective::new(p, p.device("dpu").unwrap(), Usage::SCANOUT).max_segments.why.to_string();
    assert!(why.contains("SCANOUT") && why.ends_with(REFSOC_REASON), "{why}");
    why
}

#[test]
fn refsoc_memory_map_is_the_documented_one() {
    let p = platform("refsoc");
    let m = &p.memory;
    let banks: Vec<(String, String)> = m.banks.iter().map(|r| (r.name.clone(), r.range().to_string())).collect();
    assert_eq!(banks, why_pairs(&[("dram-low", "0x0..0x8000_0000"), ("dram-high", "0x1_0000_0000..0x2_0000_0000")]));
    let cma: Vec<(String, String)> = m.cma.iter().map(|r| (r.name.clone(), r.range().to_string())).collect();
    assert_eq!(cma, why_pairs(&[("cma-dma30", "0x3000_0000..0x3800_0000"), ("cma", "0x7000_0000..0x8000_0000")]));
    let carveouts: Vec<(String, String, bool)> =
        m.carveouts.iter().map(|c| (c.name.clone(), c.range().to_string(), c.protected)).collect();
    assert_eq!(
        carveouts,
        vec![
            ("isp-carveout".to_owned(), "0x1_2000_0000..0x1_2800_0000".to_owned(), false),
            ("secure-video".to_owned(), "0x1_fc00_0000..0x2_0000_0000".to_owned(), true),
        ]
    );
    let devices: Vec<&str> = p.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(devices, ["dpu", "gpu", "venc", "isp", "vdec", "g2d"]);
}

#[test]
fn refsoc_dpu_scanout_with_gpu_is_contiguous_below_4gib() {
    let p = platform("refsoc");
    let plan = plan(&p, &image(1920, 1080, "XR24"), &[("dpu", Usage::SCANOUT), ("gpu", Usage::RENDERING)]);
    assert!(plan.contiguous());
    assert_rule_cause(&segment_causes(&plan), &[("dpu", REFSOC_REASON)]);
    // 8 MiB contiguous is more than the buddy allocator's 4 MiB block: CMA areas only.
    assert_eq!(hex_window(&plan), "0x3000_0000..0x3800_0000 ∪ 0x7000_0000..0x8000_0000");
    assert!(plan.placement.end().unwrap().get() <= 4 * GIB);
    assert_eq!(window_causes(&plan), why_pairs(&[("dpu", "dma_mask = 32-bit")]));
    assert_eq!(plan.cache_mode.value, CacheMode::WriteCombined);
    assert_eq!(pitch_align(&plan), (64, names(&["dpu", "gpu"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 7680, 1080)], 8_294_400));
    // Contiguous: one run, mapped by the GPU's LPAE MMU with 2 MiB blocks where aligned.
    assert_eq!(ptes(&plan), vec![("gpu".to_owned(), vec![(PageSize::SZ_2M, 3), (PageSize::SZ_4K, 489)])]);

    // The GPU alone renders in Arm 16x16 blocks; the display needs LINEAR.
    let gpu = self::plan(&p, &image(1920, 1080, "XR24"), &[("gpu", Usage::RENDERING)]);
    assert_eq!(layout_of(&gpu).0, MOD_ARM_16X16_BLOCK_U_INTERLEAVED);
    assert!(!gpu.contiguous());
}

#[test]
fn refsoc_adding_venc_narrows_the_window_below_1gib() {
    let p = platform("refsoc");
    let spec = [("dpu", Usage::SCANOUT), ("gpu", Usage::RENDERING), ("venc", Usage::VIDEO_ENCODE)];
    let plan = plan(&p, &image(1920, 1080, "NV12"), &spec);
    assert!(plan.contiguous());
    assert_eq!(hex_window(&plan), "0x0..0x4000_0000");
    assert_eq!(
        window_causes(&plan),
        why_pairs(&[("dpu", "dma_mask = 32-bit"), ("venc", "bus_dma_limit = 0x3fffffff")])
    );
    assert_rule_cause(&segment_causes(&plan), &[("dpu", REFSOC_REASON), ("venc", "max_segments = 1")]);
    // Venus-like: lcm(64, 64, 128) = 128 B pitch, 1080 -> 1088 rows.
    assert_eq!(pitch_align(&plan), (128, names(&["dpu", "gpu", "venc"])));
    assert_eq!(layout_of(&plan), (MOD_LINEAR, vec![(0, 1920, 1088), (2_088_960, 1920, 544)], 3_133_440));

    // A 4K frame (12 MiB) is over the page allocator's 4 MiB blocks: only cma-dma30 can
    // hold it, and it does.
    plan_4k(&p, &spec);
    // 200 MiB cannot: cma-dma30 is 128 MiB. Only venc is to blame (dpu alone could use
    // the 256 MiB cma area).
    let c = conflict(&p, &bytes(Size::mib(200)), &spec);
    assert_eq!(c.devices, names(&["venc"]));
    assert!(
        matches!(&c.kind, ConflictKind::NoRoom { needed, contiguous: true, available, .. } if *needed == Size::mib(200) && *available == Size::mib(128)),
        "{:?}",
        c.kind
    );
    assert!(c.message.contains("below 0x4000_0000 (bus_dma_limit = 0x3fffffff)"), "{}", c.message);
}

fn plan_4k(p: &Platform, spec: &[(&str, Usage)]) {
    let plan = plan(p, &image(3840, 2160, "NV12"), spec);
    assert_eq!(plan.size, Size::new(12_443_648), "12_441_600 B rounded up to 4 KiB");
    assert_eq!(hex_window(&plan), "0x3000_0000..0x3800_0000");
}

#[test]
fn refsoc_dpu_scanout_with_isp_conflicts_naming_exactly_those_two() {
    let p = platform("refsoc");
    // The gpu is irrelevant: it must not be named.
    let c = conflict(
        &p,
        &image(1920, 1080, "NV12"),
        &[("dpu", Usage::SCANOUT), ("gpu", Usage::RENDERING), ("isp", Usage::CAMERA_WRITE)],
    );
    assert_eq!(c.devices, names(&["dpu", "isp"]));
    assert_eq!(c.kind, ConflictKind::NoCommonMemory);
    let why = refsoc_dpu_scanout_why(&p);
    assert_eq!(
        c.message,
        format!(
            "display `dpu` (refsoc) needs physically contiguous memory ({why}) below 0x1_0000_0000 (dma_mask = 32-bit), \
             but camera `isp` can only use the carveout `isp-carveout` at 0x1_2000_0000..0x1_2800_0000 (regions = [isp-carveout]); \
             no memory satisfies both."
        )
    );
    // Each alone is fine: the isp gets exactly its carveout.
    let isp = plan(&p, &image(1920, 1080, "NV12"), &[("isp", Usage::CAMERA_WRITE), ("gpu", Usage::RENDERING)]);
    assert_eq!(hex_window(&isp), "0x1_2000_0000..0x1_2800_0000");
    plan(&p, &image(1920, 1080, "NV12"), &[("dpu", Usage::SCANOUT), ("gpu", Usage::RENDERING)]);
}

#[test]
fn refsoc_protected_video_goes_to_secure_video_and_the_dpu_cannot_reach_it() {
    let p = platform("refsoc");
    // With the gpu (protected_access = true by default, any address): the secure carveout.
    let plan = plan(
        &p,
        &image(1920, 1080, "NV12"),
        &[("vdec", Usage::VIDEO_DECODE | Usage::PROTECTED), ("gpu", Usage::TEXTURING)],
    );
    assert_eq!(hex_window(&plan), "0x1_fc00_0000..0x2_0000_0000");
    assert!(plan.requirements.protected.value);
    assert!(plan.contiguous());

    // The decision: the dpu may read protected memory, but its 32-bit mask cannot reach
    // secure-video (in dram-high). So the conflict is about addresses, naming both.
    assert!(p.device("dpu").unwrap().placement.protected_access);
    let c = conflict(
        &p,
        &image(1920, 1080, "NV12"),
        &[("vdec", Usage::VIDEO_DECODE | Usage::PROTECTED), ("gpu", NONE), ("dpu", Usage::SCANOUT)],
    );
    // Named in platform order (dpu before vdec), whatever the order of the request.
    assert_eq!(c.devices, names(&["dpu", "vdec"]));
    assert_eq!(c.kind, ConflictKind::NoCommonMemory);
    let why = refsoc_dpu_scanout_why(&p);
    assert_eq!(
        c.message,
        format!(
            "display `dpu` (refsoc) needs physically contiguous memory ({why}) below 0x1_0000_0000 (dma_mask = 32-bit), \
             but video `vdec` can only use the protected carveout `secure-video` at 0x1_fc00_0000..0x2_0000_0000 \
             (PROTECTED hint: protected carveouts only); no memory satisfies both."
        )
    );

    // Had the dpu no access to protected memory, the conflict would be about access.
    let mut no_access = p.clone();
    no_access.devices.iter_mut().find(|d| d.name == "dpu").unwrap().placement.protected_access = false;
    let c = conflict(&no_access, &image(1920, 1080, "NV12"), &[("vdec", Usage::PROTECTED), ("dpu", Usage::SCANOUT)]);
    assert_eq!(c.kind, ConflictKind::Protected);
    assert_eq!(c.devices, names(&["dpu", "vdec"]));

    // The g2d really has no access: a Protected conflict naming both, not the gpu.
    let c = conflict(&p, &bytes(Size::mib(8)), &[("gpu", NONE), ("vdec", Usage::PROTECTED), ("g2d", NONE)]);
    assert_eq!(c.kind, ConflictKind::Protected);
    assert_eq!(c.devices, names(&["vdec", "g2d"]));
    for part in [
        "protected memory is needed but not every device can access it (refsoc): ",
        "video `vdec` has protected = needs protected memory (PROTECTED hint",
        "DMA engine `g2d` has protected_access = false",
    ] {
        assert!(c.message.contains(part), "{part:?} not in {}", c.message);
    }
    assert!(!c.message.contains("`gpu`"), "{}", c.message);

    // Without PROTECTED the decoder and the display share ordinary memory below 4 GiB.
    let clear = self::plan(&p, &image(1920, 1080, "NV12"), &[("vdec", Usage::VIDEO_DECODE), ("dpu", Usage::SCANOUT)]);
    assert_eq!(hex_window(&clear), "0x0..0x8000_0000");
    assert!(!clear.requirements.protected.value);
}

#[test]
fn refsoc_g2d_and_gpu_chunk_for_both_page_size_sets() {
    let p = platform("refsoc");
    let plan = plan(&p, &bytes(Size::mib(32)), &[("g2d", NONE), ("gpu", Usage::RENDERING)]);
    assert!(!plan.contiguous());
    assert_eq!(
        chunk_prefs(&plan),
        vec![
            (PageSize::SZ_16M, names(&["g2d"])),
            (PageSize::SZ_2M, names(&["gpu"])),
            (PageSize::SZ_1M, names(&["g2d"])),
            (PageSize::SZ_64K, names(&["g2d"])),
            (PageSize::SZ_4K, names(&["g2d", "gpu"])),
        ]
    );
    // Two 16 MiB chunks: one SMMU entry each; the GPU maps each with eight 2 MiB blocks.
    assert_eq!(
        ptes(&plan),
        vec![("g2d".to_owned(), vec![(PageSize::SZ_16M, 2)]), ("gpu".to_owned(), vec![(PageSize::SZ_2M, 16)])]
    );
}

// ---------------------------------------------------------------------------------------
// Malformed files: the error names the file, the exact line and the field.

/// A small valid platform. The tests below replace one line and check where the error
/// points; keep the line numbers in the comments right when editing.
const FIXTURE: &str = r#"[platform]
name = "fixture"
description = "a small valid platform for error tests"

[memory]
[[memory.bank]]
name = "dram"
start = 0x8000_0000
size = "512MiB"

[[memory.cma]]
name = "cma"
start = 0x9c00_0000
size = "64MiB"

[[device]]
name = "dss"
class = "display"
[device.placement]
dma_mask = 32
[device.layout]
pitch_align = 8
formats = [{ fourcc = "XR24" }]

[[device]]
name = "gpu"
class = "gpu"
[device.placement]
dma_mask = 32
regions = ["dram"]
[device.placement.iommu]
name = "gpu-mmu"
pgsize_bitmap = ["4KiB"]

[[rule]]
device = "dss"
hints = ["SCANOUT"]
contiguous = true
reason = "test"
"#;

/// FIXTURE with line `line` (1-based) replaced by `with`.
fn corrupt(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = FIXTURE.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

/// `(line, column > 0, field)` of the error for FIXTURE with `line` replaced, plus the message.
fn error_at(line: usize, with: &str) -> (usize, String, String) {
    let e = Platform::from_toml("platforms/fixture.toml", &corrupt(line, with)).expect_err(with);
    assert_eq!(e.file, "platforms/fixture.toml");
    assert!(e.column > 0, "{e}");
    (e.line, e.field.clone(), e.message.clone())
}

#[test]
fn fixture_is_valid() {
    let p = Platform::from_toml("platforms/fixture.toml", FIXTURE).unwrap();
    assert_eq!(p.devices.len(), 2);
    // corrupt() with the line unchanged is still valid.
    Platform::from_toml("platforms/fixture.toml", &corrupt(20, "dma_mask = 32")).unwrap();
}

#[test]
fn malformed_unknown_field() {
    let (line, field, msg) = error_at(22, "pitch_alignment = 8");
    assert_eq!((line, field.as_str()), (22, "device[0].layout.pitch_alignment"));
    assert!(msg.contains("unknown field `pitch_alignment`") && msg.contains("`pitch_align`"), "{msg}");
    let (line, field, _) = error_at(2, "nam = \"fixture\"");
    assert_eq!((line, field.as_str()), (2, "platform.nam"));
}

#[test]
fn malformed_page_size_3000() {
    let (line, field, _) = error_at(33, "pgsize_bitmap = [\"4KiB\", 3000]");
    assert_eq!((line, field.as_str()), (33, "device[1].placement.iommu.pgsize_bitmap[1]"));
    let (line, field, msg) = error_at(20, "alignment = 3000");
    assert_eq!((line, field.as_str()), (20, "device[0].placement.alignment"));
    assert!(msg.contains("power of two") && msg.contains("0xbb8"), "{msg}");
}

#[test]
fn malformed_dma_mask_65() {
    let (line, field, msg) = error_at(20, "dma_mask = 65");
    assert_eq!((line, field.as_str()), (20, "device[0].placement.dma_mask"));
    assert!(msg.contains("1..=64") && msg.contains("65"), "{msg}");
}

#[test]
fn malformed_unknown_region() {
    let (line, field, msg) = error_at(30, "regions = [\"sram\"]");
    assert_eq!((line, field.as_str()), (30, "device[1].placement.regions"));
    assert!(msg.contains("no memory region `sram`") && msg.contains("dram, cma"), "{msg}");
}

#[test]
fn malformed_rule_for_unknown_device() {
    let (line, field, msg) = error_at(36, "device = \"dsi\"");
    assert_eq!((line, field.as_str()), (36, "rule[0].device"));
    assert!(msg.contains("no device `dsi`") && msg.contains("dss, gpu"), "{msg}");
    let (line, field, msg) = error_at(37, "hints = [\"SCANOUTT\"]");
    assert_eq!((line, field.as_str()), (37, "rule[0].hints"));
    assert!(msg.contains("unknown usage hint \"SCANOUTT\""), "{msg}");
}

#[test]
fn malformed_duplicate_device() {
    let (line, field, msg) = error_at(26, "name = \"dss\"");
    assert_eq!((line, field.as_str()), (26, "device[1].name"));
    assert!(msg.contains("device `dss` is described twice"), "{msg}");
}

#[test]
fn malformed_overlapping_banks() {
    // The CMA area becomes a second bank inside the first: the error points at its name.
    let (line, field, msg) = error_at(11, "[[memory.bank]]");
    assert_eq!((line, field.as_str()), (12, "memory.bank[1]"));
    assert!(msg.contains("bank 0x9c00_0000..0xa000_0000 overlaps bank 0x8000_0000..0xa000_0000"), "{msg}");
    // A CMA area outside DRAM.
    let (line, field, msg) = error_at(13, "start = 0xbc00_0000");
    assert_eq!((line, field.as_str()), (12, "memory.cma[0]"));
    assert!(msg.contains("does not lie inside one DRAM bank"), "{msg}");
}

#[test]
fn malformed_fourcc() {
    let (line, field, msg) = error_at(23, "formats = [{ fourcc = \"ZZZZ\" }]");
    assert_eq!((line, field.as_str()), (23, "device[0].layout.formats[0].fourcc"));
    assert!(msg.contains("\"ZZZZ\" is not a DRM fourcc"), "{msg}");
    // A real DRM fourcc dmaplace cannot lay out: reported on the [device.layout] table.
    let (line, field, msg) = error_at(23, "formats = [{ fourcc = \"XR24\" }, { fourcc = \"Y210\" }]");
    assert_eq!((line, field.as_str()), (21, "device[0].layout.formats"));
    assert!(msg.contains("no layout rule for format Y210"), "{msg}");
    let (line, field, msg) = error_at(23, "formats = [{ fourcc = \"XR24\", modifiers = [\"FOO\"] }]");
    assert_eq!((line, field.as_str()), (23, "device[0].layout.formats[0].modifiers"));
    assert!(msg.contains("unknown modifier \"FOO\""), "{msg}");
}

#[test]
fn malformed_shipped_file_reports_its_own_path_and_line() {
    // Corrupt a real platform: the refsoc dpu's dma_mask.
    let text = builtin::BUILTIN.iter().find(|(n, _)| *n == "refsoc").unwrap().1;
    let line = text.lines().position(|l| l == "dma_mask = 32").expect("refsoc has a 32-bit device") + 1;
    let bad = text.replacen("dma_mask = 32\n", "dma_mask = 65\n", 1);
    let e = Platform::from_toml("platforms/refsoc.toml", &bad).unwrap_err();
    assert_eq!(
        (e.file.as_str(), e.line, e.field.as_str()),
        ("platforms/refsoc.toml", line, "device[0].placement.dma_mask")
    );
    assert!(
        e.to_string().starts_with(&format!("platforms/refsoc.toml:{line}:12: field `device[0].placement.dma_mask`: ")),
        "{e}"
    );
}
