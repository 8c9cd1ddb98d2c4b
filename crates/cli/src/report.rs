//! Human-readable reports: a device, a plan with the why of every requirement, a conflict.

use std::fmt::Write as _;

use dmaplace_core::layout::fourcc_name;
use dmaplace_core::requirements::{Field, Req};
use dmaplace_core::solver::LayoutPlan;
use dmaplace_core::{BoundaryMask, Conflict, Device, Plan, Platform, Window};

/// One device, as `dmaplace devices` prints it.
pub fn device(p: &Platform, d: &Device) -> String {
    let mut s = String::new();
    let pl = &d.placement;
    let _ = writeln!(
        s,
        "{} ({}){}",
        d.label(),
        match d.bus {
            dmaplace_core::Bus::Pcie => "PCIe",
            dmaplace_core::Bus::Platform => "on-chip",
        },
        if d.description.is_empty() { String::new() } else { format!(": {}", d.description) }
    );
    let _ = writeln!(s, "  dma_mask            {}", pl.dma_mask);
    if let Some(limit) = pl.bus_dma_limit {
        let _ = writeln!(s, "  bus_dma_limit       {limit:#x}");
    }
    if !pl.regions.is_empty() {
        let _ = writeln!(s, "  regions             {}", pl.regions.join(", "));
    }
    match &pl.iommu {
        Some(m) => {
            let phys = m.phys_bits.map_or(String::new(), |b| format!(", reaches {b} physical"));
            let _ = writeln!(
                s,
                "  iommu               {} pgsize_bitmap {} ({:#x}), {} IOVA{phys}",
                m.name,
                m.pgsize_bitmap,
                m.pgsize_bitmap.bitmap(),
                m.iova_bits
            );
        }
        None => {
            let _ = writeln!(s, "  iommu               none: DMA addresses are physical");
        }
    }
    let _ = writeln!(s, "  max_segments        {}", pl.max_segments.map_or("unlimited".into(), |n| n.to_string()));
    let _ = writeln!(s, "  max_segment_size    {}", pl.max_segment_size.map_or("unlimited".into(), |n| n.to_string()));
    let _ = writeln!(s, "  segment_boundary    {}", boundary(pl.segment_boundary_mask));
    let _ = writeln!(s, "  alignment           {}", pl.alignment);
    let _ = writeln!(s, "  cache_modes         {}{}", pl.cache_modes, if pl.coherent { ", coherent" } else { "" });
    if pl.protected || !pl.protected_access {
        let _ = writeln!(s, "  protected           needs: {}, can access: {}", pl.protected, pl.protected_access);
    }
    let l = &d.layout;
    let formats: Vec<String> = l
        .formats
        .iter()
        .map(|f| {
            let mods: Vec<String> = f.modifiers.iter().map(|m| p.modifier_name(*m)).collect();
            format!("{}[{}]", fourcc_name(f.fourcc), mods.join(" "))
        })
        .collect();
    let formats =
        if formats.is_empty() { "any (does not interpret pixels), LINEAR".to_owned() } else { formats.join(" ") };
    let _ = writeln!(s, "  formats             {formats}");
    let _ = writeln!(
        s,
        "  layout align        pitch {} B, offset {} B, height {} rows, size {} B",
        l.pitch_align, l.offset_align, l.height_align, l.size_align
    );
    let maxes: Vec<String> = [("width", l.max_width), ("height", l.max_height), ("pitch", l.max_pitch)]
        .iter()
        .filter_map(|(n, v)| v.map(|v| format!("{n} {v}")))
        .collect();
    if !maxes.is_empty() {
        let _ = writeln!(s, "  max                 {}", maxes.join(", "));
    }
    for r in p.rules.iter().filter(|r| r.device == d.name || r.device == "*") {
        let _ = writeln!(s, "  hint {:<14} {}", r.hints.to_string(), rule_effect(r));
        let _ = writeln!(s, "  {:19} because {}", "", r.reason);
    }
    s
}

fn rule_effect(r: &dmaplace_core::platform::HintRule) -> String {
    let mut parts = Vec::new();
    if r.contiguous {
        parts.push("contiguous".to_owned());
    }
    if let Some(n) = r.max_segments {
        parts.push(format!("at most {n} segments"));
    }
    if let Some(b) = r.dma_bits {
        parts.push(format!("below a {b} limit"));
    }
    if !r.regions.is_empty() {
        parts.push(format!("only {}", r.regions.join(", ")));
    }
    if let Some(c) = r.cache_modes {
        parts.push(format!("cache {c}"));
    }
    if let Some(a) = r.alignment {
        parts.push(format!("aligned to {a}"));
    }
    if r.bypass_iommu {
        parts.push("bypasses the IOMMU".into());
    }
    if r.protected {
        parts.push("protected memory".into());
    }
    format!("=> {}", if parts.is_empty() { "nothing".to_owned() } else { parts.join(", ") })
}

fn boundary(b: BoundaryMask) -> String {
    if b == BoundaryMask::NONE {
        "none".into()
    } else {
        format!("{b} (segments may not cross a multiple of {})", dmaplace_core::Size::new(b.get().wrapping_add(1)))
    }
}

fn why<T>(plan: &Plan, r: &Req<T>, field: Field) -> String {
    if r.causes.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = plan.causes(r.causes, field).iter().map(ToString::to_string).collect();
    format!("\n      why: {}", parts.join("\n           "))
}

fn window(w: &Window) -> String {
    match w.ranges() {
        [r] if r.start().get() == 0 && r.end().get() == u64::MAX => "any address".into(),
        [r] if r.start().get() == 0 => format!("below {}", r.end()),
        _ => w.to_string(),
    }
}

/// A plan with the why of every requirement.
pub fn plan(p: &Platform, plan: &Plan) -> String {
    let mut s = String::new();
    let r = &plan.requirements;
    let _ = writeln!(s, "Plan for {} on {}: {} ({} bytes)", device_list(plan), p.name, plan.size, plan.size.bytes());
    let _ = writeln!(s, "\nHard requirements (where the pages go)");
    let _ = writeln!(s, "  placement         {}", plan.placement);
    let _ = writeln!(s, "  address window    {}{}", window(&r.window.value), why(plan, &r.window, Field::Window));
    let pool = match &r.pool.value {
        Some(w) => w.to_string(),
        None => "general memory (DRAM minus carveouts)".into(),
    };
    let _ = writeln!(s, "  memory pool       {pool}{}", why(plan, &r.pool, Field::Pool));
    let segs = match r.max_segments.value {
        Some(n) if n.get() == 1 => "physically contiguous (max_segments 1)".to_owned(),
        Some(n) => format!("at most {n} segments"),
        None => "any number of segments".into(),
    };
    let _ = writeln!(s, "  segments          {segs}{}", why(plan, &r.max_segments, Field::MaxSegments));
    let _ = writeln!(
        s,
        "  max_segment_size  {}{}",
        r.max_segment_size.value.map_or("unlimited".into(), |v| v.to_string()),
        why(plan, &r.max_segment_size, Field::MaxSegmentSize)
    );
    let _ = writeln!(
        s,
        "  segment boundary  {}{}",
        boundary(r.segment_boundary.value),
        why(plan, &r.segment_boundary, Field::SegmentBoundary)
    );
    let _ = writeln!(s, "  alignment         {}{}", r.alignment.value, why(plan, &r.alignment, Field::Alignment));
    let _ = writeln!(s, "  granule           {}{}", r.granule.value, why(plan, &r.granule, Field::Granule));
    let _ = writeln!(
        s,
        "  cache mode        {} (usable: {}){}",
        plan.cache_mode.value,
        r.cache_modes.value,
        why(plan, &plan.cache_mode, Field::CacheModes)
    );
    let protected = if r.protected.value { "yes" } else { "no" };
    let _ = writeln!(s, "  protected         {protected}{}", why(plan, &r.protected, Field::Protected));
    let pr = &plan.preferences;
    let _ = writeln!(s, "\nPreferences (soft)");
    if pr.chunk_sizes.is_empty() {
        let _ = writeln!(s, "  chunk sizes       none (no IOMMU attached)");
    } else {
        let chunks: Vec<String> =
            pr.chunk_sizes.iter().map(|c| format!("{} ({})", c.size, plan.names(c.devices).join(", "))).collect();
        let _ = writeln!(s, "  chunk sizes       {}", chunks.join(", "));
    }
    let _ = writeln!(s, "  alignment         {}", pr.alignment);
    if let Some(m) = pr.min_chunk {
        let _ = writeln!(s, "  min chunk         {m} (to stay within the segment limit)");
    }
    for e in &pr.entries {
        let parts: Vec<String> = e.ptes.by_size.iter().map(|(p, n)| format!("{n} x {p}")).collect();
        let dev = &plan.devices[e.device];
        let mmu = dev.iommu.as_ref().map_or("", |m| &*m.name);
        let _ = writeln!(s, "  IOMMU entries     {} ({mmu}): {} = {}", dev.device, e.ptes.total(), parts.join(" + "));
    }
    if let Some(l) = &plan.layout {
        s.push_str(&layout_section(p, plan, l));
    }
    s
}

fn layout_section(p: &Platform, plan: &Plan, lp: &LayoutPlan) -> String {
    let mut s = String::new();
    let l = &lp.layout;
    let cands: Vec<String> = lp.candidates.iter().map(|m| p.modifier_name(*m)).collect();
    let _ = writeln!(s, "\nLayout (userspace side)");
    let _ = writeln!(s, "  format            {} {}x{}", fourcc_name(l.format), l.width, l.height);
    let _ = writeln!(s, "  modifier          {} (common: {})", p.modifier_name(l.modifier), cands.join(", "));
    for r in &lp.rejected {
        let _ = writeln!(s, "  not placeable     {} ({}, preferred): {}", r.modifier_name, r.size, r.reason);
    }
    let _ =
        writeln!(s, "  pitch alignment   {} B{}", lp.pitch_align.value, why(plan, &lp.pitch_align, Field::PitchAlign));
    if lp.offset_align.value > 1 {
        let _ = writeln!(
            s,
            "  offset alignment  {} B{}",
            lp.offset_align.value,
            why(plan, &lp.offset_align, Field::OffsetAlign)
        );
    }
    if lp.height_align.value > 1 {
        let _ = writeln!(
            s,
            "  height alignment  {} rows{}",
            lp.height_align.value,
            why(plan, &lp.height_align, Field::HeightAlign)
        );
    }
    if lp.size_align.value > 1 {
        let _ =
            writeln!(s, "  size alignment    {} B{}", lp.size_align.value, why(plan, &lp.size_align, Field::SizeAlign));
    }
    for (i, pl) in l.planes.iter().enumerate() {
        let _ =
            writeln!(s, "  plane {i}           offset {:>9}  pitch {:>6}  rows {:>5}", pl.offset, pl.pitch, pl.rows);
    }
    let _ = writeln!(s, "  size              {} bytes", l.size);
    s
}

fn device_list(plan: &Plan) -> String {
    let parts: Vec<String> = plan
        .devices
        .iter()
        .map(|e| if e.hints.is_empty() { e.device.clone() } else { format!("{}:{}", e.device, e.hints) })
        .collect();
    parts.join(" + ")
}

/// A conflict: the explanation and each device's part.
pub fn conflict(c: &Conflict) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Unsatisfiable on {}: {}", c.platform, c.message);
    let _ = writeln!(s, "\nConflicting devices (minimal set): {}", c.devices.join(", "));
    for i in &c.items {
        let _ = writeln!(s, "  {:<10} {:<22} {}", i.device, i.constraint, i.value);
        let _ = writeln!(s, "  {:<10} {:<22} because {}", "", "", i.why);
    }
    s
}
