//! `dmaplace demo`: the seed's design, told on a simulated machine.
//!
//! A buffer is exported with no memory; a GPU and a display attach; the first map solves
//! for both, allocates once and commits the layout; a late attacher that needs another
//! layout is refused, because a move changes where the pages are, never the layout; the
//! application then asks for an explicit re-layout, refused while DMA is in flight and
//! done once the fence signals (the image copied row by row, each plane checked, every
//! importer told the new layout, stale mappings refused). On a platform whose late
//! attacher needs only another placement, the buffer simply moves, layout and bytes
//! unchanged. An incompatible device is refused with the solver's reasons; a memory map
//! shows where everything is.

use std::fmt::Write as _;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use dmaplace_core::exporter::{
    AttachmentId, BufferId, Event, ExportError, Exporter, ExporterConfig, FenceId, MappingId,
};
use dmaplace_core::layout::{Layout, format_info, fourcc_name};
use dmaplace_core::{BufferDesc, Device, DeviceClass, ImageDesc, Plan, Platform, Request, Usage, solve, verify};
use dmaplace_sim::{BackgroundLoad, ContentMode, Holder, Machine, SimConfig};
use serde::Serialize;

use crate::out::outln;
use crate::{Outcome, load};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Platform name (built in, or platforms/<name>.toml) or path to a TOML file.
    #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
    platform: String,
    /// Seed of the simulated machine (placements are deterministic given the seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Emit the events as JSON (schema `dmaplace.demo/v1`, docs/JSON.md).
    #[arg(long)]
    json: bool,
}

/// Other users hold 30% of memory, fragmented, some of it borrowed CMA.
const LOAD: BackgroundLoad = BackgroundLoad { fill: 0.3, prefill: 0.6, movable: 0.7, cma_share: 0.5, max_order: 8 };

#[derive(Serialize)]
struct Step {
    title: String,
    text: String,
    events: Vec<Event>,
}

#[derive(Serialize)]
struct DemoJson<'a> {
    schema: &'static str,
    platform: &'a str,
    seed: u64,
    steps: &'a [Step],
    memory_map: &'a str,
}

/// The story's cast, chosen from the platform's devices.
struct Cast {
    gpu: Device,
    display: Device,
    buffer: BufferDesc,
}

fn usage(class: DeviceClass) -> Usage {
    match class {
        DeviceClass::Display => Usage::SCANOUT,
        DeviceClass::Gpu => Usage::RENDERING,
        DeviceClass::Camera => Usage::CAMERA_WRITE,
        DeviceClass::Video => Usage::VIDEO_ENCODE,
        _ => Usage::empty(),
    }
}

fn cast(p: &Platform) -> Result<Cast> {
    // The display: a display block, else a device the platform gives a SCANOUT rule (an
    // x86 iGPU drives the display itself).
    let scans_out = |d: &&Device| {
        d.class == DeviceClass::Display
            || p.rules.iter().any(|r| r.device == d.name && r.hints.contains(Usage::SCANOUT))
    };
    let display = p
        .devices
        .iter()
        .find(|d| d.class == DeviceClass::Display)
        .or_else(|| p.devices.iter().find(scans_out))
        .cloned();
    let display = display
        .ok_or_else(|| anyhow!("platform `{}` has no display (or device with a SCANOUT rule) for the demo", p.name))?;
    let gpu = p.devices.iter().find(|d| d.class == DeviceClass::Gpu && d.name != display.name).cloned();
    let gpu = gpu.ok_or_else(|| anyhow!("platform `{}` has no GPU besides its display for the demo", p.name))?;
    // NV12 if both take it (then video blocks can join), else XR24.
    let format = ["NV12", "XR24"]
        .iter()
        .filter_map(|f| dmaplace_core::layout::parse_fourcc(f).ok())
        .find(|f| [&gpu, &display].iter().all(|d| d.layout.modifiers_for(*f).is_some()))
        .ok_or_else(|| anyhow!("the GPU and the display of `{}` share neither NV12 nor XR24", p.name))?;
    let buffer = BufferDesc::Image(ImageDesc { width: 1920, height: 1080, format, modifiers: vec![] });
    Ok(Cast { gpu, display, buffer })
}

/// The first device whose arrival does not fit the current backing but can be served by
/// a move (the late attacher), and the first that no placement can serve (the refused).
fn late_and_refused(
    p: &Platform,
    cast: &Cast,
    backing: &dmaplace_core::Backing,
    layout: &Option<dmaplace_core::solver::LayoutPlan>,
) -> (Option<Device>, Option<Device>) {
    let mut late = None;
    let mut refused = None;
    for d in p.devices.iter().filter(|d| d.name != cast.gpu.name && d.name != cast.display.name) {
        let requests = [
            Request { device: &cast.gpu, hints: usage(cast.gpu.class) },
            Request { device: &cast.display, hints: Usage::SCANOUT },
            Request { device: d, hints: usage(d.class) },
        ];
        match solve(p, &cast.buffer, &requests) {
            Ok(next)
                if late.is_none()
                    && (verify(&next, &next.devices, backing).is_err()
                        || next.layout.as_ref().map(|l| &l.layout) != layout.as_ref().map(|l| &l.layout)) =>
            {
                late = Some(d.clone())
            }
            Err(dmaplace_core::SolveError::Conflict(c))
                if refused.is_none() && c.devices.contains(&d.name) && c.devices.len() > 1 =>
            {
                refused = Some(d.clone())
            }
            _ => {}
        }
    }
    (late, refused)
}

struct Story {
    e: Exporter<Machine>,
    steps: Vec<Step>,
}

impl Story {
    fn step(&mut self, title: &str, text: String) {
        let events = self.e.take_events();
        self.steps.push(Step { title: title.to_owned(), text, events });
    }
}

pub fn run(args: &DemoArgs) -> Result<Outcome> {
    let p = load::platform(&args.platform)?;
    let cast = cast(&p)?;
    // Real bytes, so a re-layout can be checked row by row (only written frames are kept).
    let config = SimConfig { content: ContentMode::Bytes, ..SimConfig::seeded(args.seed) };
    let machine = Machine::new(&p, config.with_background(LOAD)).context("building the simulated machine")?;
    let mut s = Story { e: Exporter::new(p.clone(), machine, ExporterConfig::default()), steps: Vec::new() };
    let start_free = s.e.backend().free_report().free();
    s.step("machine", machine_text(&p, &s.e));

    let buf = s.e.export(cast.buffer.clone(), "frame")?;
    s.step("export", format!("A buffer `frame` ({}) is exported. No memory is allocated: the exporter waits until the devices are known.", describe(&cast.buffer)));

    let gpu = s.e.attach(buf, &cast.gpu.name, usage(cast.gpu.class))?;
    let dpu = s.e.attach(buf, &cast.display.name, Usage::SCANOUT)?;
    s.step(
        "attach",
        format!(
            "{} attaches ({}), then {} ({}). Still nothing allocated: attach only records the device and its constraints.",
            cast.gpu.label(),
            usage(cast.gpu.class),
            cast.display.label(),
            Usage::SCANOUT
        ),
    );

    let (gpu_map, gpu_sg) = s.e.map(gpu)?;
    let plan = s.e.plan(buf)?.cloned().context("allocated at first map")?;
    let mut text =
        String::from("The GPU's map is the first: the exporter solves over every attachment and allocates once.\n");
    text += &plan_why(&plan);
    let backing = backing_of(&s.e, buf)?;
    let _ = write!(text, "\n  placed at {}", segments_text(&backing.segments));
    if let Some(l) = &plan.layout {
        let _ =
            write!(text, "\n  layout committed: {}; importers learn it now and keep it", layout_text(&p, &l.layout));
    }
    let (_, dpu_sg) = s.e.map(dpu)?;
    let _ = write!(
        text,
        "\n  {} sees {} ({} entry/ies); {} sees {}",
        cast.gpu.name,
        gpu_sg,
        gpu_sg.entries.len(),
        cast.display.name,
        dpu_sg
    );
    s.step("first map", text);

    s.e.dma_write(gpu_map, 0x5eed)?;
    let fence = s.e.fence(gpu_map)?;
    let before = s.e.dma_read(gpu_map)?;
    s.step(
        "render",
        format!(
            "The GPU renders into the buffer: DMA in flight, {fence} unsignalled. Content checksum {before:#018x}."
        ),
    );

    let (late, refused) = late_and_refused(&p, &cast, &backing, &plan.layout);
    match late {
        Some(late) => late_attach(&mut s, buf, &late, fence, [gpu, dpu], before)?,
        None => {
            s.e.signal(fence)?;
            s.step(
                "late attach",
                format!("No device on {} needs a move from this placement; the fence signals.", p.name),
            );
        }
    }
    if let Some(refused) = refused {
        refuse(&mut s, buf, &refused)?;
    }
    let map = memory_map(&p, &s.e);
    s.step("memory map", map.clone());
    release_all(&mut s, buf, start_free)?;
    if args.json {
        let doc = DemoJson {
            schema: "dmaplace.demo/v1",
            platform: &p.name,
            seed: args.seed,
            steps: &s.steps,
            memory_map: &map,
        };
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (i, st) in s.steps.iter().enumerate() {
            outln!("{}. {}\n{}\n", i + 1, st.title, indent(&st.text));
        }
    }
    Ok(Outcome::Ok)
}

/// The late attacher's story: a plain attach first; if the committed layout does not
/// meet it, the explicit re-layout; else the plain move for its placement.
fn late_attach(
    s: &mut Story,
    buf: BufferId,
    late: &Device,
    fence: FenceId,
    early: [AttachmentId; 2],
    before: u64,
) -> Result<()> {
    let hints = usage(late.class);
    match s.e.attach(buf, &late.name, hints) {
        Err(e @ ExportError::LayoutConflict { .. }) => {
            s.step(
                "late attach, layout committed",
                format!(
                    "{} attaches late ({hints}). Its layout needs differ from the layout the importers already hold, and a late attacher may move the pages, never change the layout under them. Refused:\n  {e}",
                    late.label()
                ),
            );
            relayout(s, buf, late, fence, early)
        }
        Err(e @ ExportError::Busy { .. }) => {
            s.step(
                "late attach, busy",
                format!("{} attaches late ({hints}) while the GPU's DMA is in flight. Refused:\n  {e}", late.label()),
            );
            s.e.signal(fence)?;
            let att = s.e.attach(buf, &late.name, hints)?;
            moved(s, late, fence, early, att, before)
        }
        Err(e) => Err(e.into()),
        Ok(_) => {
            s.e.signal(fence)?;
            s.step(
                "late attach",
                format!("{} attaches late: the backing already fits it, nothing moves.", late.label()),
            );
            Ok(())
        }
    }
}

/// A plain move: the backing moves for the late device's placement; the layout and the
/// bytes stay as they were.
fn moved(
    s: &mut Story,
    late: &Device,
    fence: FenceId,
    early: [AttachmentId; 2],
    att: AttachmentId,
    before: u64,
) -> Result<()> {
    let mut text = format!(
        "{fence} signals; {} attaches again. The committed layout meets it but the backing does not, nothing is in flight, so the pages move (the layout does not):\n",
        late.label()
    );
    let events = s.e.take_events();
    for ev in &events {
        if let Event::Migrated { from, to, copied, checksum, .. } = ev {
            let _ = writeln!(
                text,
                "  moved {} -> {}: {copied} copied 1:1, checksum {checksum:#018x} (was {before:#018x})",
                segments_text(from),
                segments_text(to)
            );
        }
    }
    notices(s, &events, early, &mut text)?;
    s.steps.push(Step { title: "late attach, moved".into(), text: text.trim_end().to_owned(), events });

    let mut text = String::from("The importers re-map; the late device maps too:\n");
    for a in early.into_iter().chain([att]) {
        let (m, sg) = s.e.map(a)?;
        let _ = writeln!(text, "  {} sees {sg}", s.e.device_of(a)?);
        let sum = s.e.dma_read(m)?;
        if sum != before {
            return Err(anyhow!("content changed across the move: {before:#x} -> {sum:#x}"));
        }
    }
    let _ =
        write!(text, "  every device reads checksum {before:#018x}: the move preserved the content and the layout.");
    s.step("re-map", text);
    Ok(())
}

/// The explicit re-layout: refused while DMA is in flight, then done once it completes
/// (LINEAR only; on other layouts the refusal stands).
fn relayout(s: &mut Story, buf: BufferId, late: &Device, fence: FenceId, early: [AttachmentId; 2]) -> Result<()> {
    let hints = usage(late.class);
    let before = picture(&s.e, buf)?;
    let refused = match s.e.attach_relayout(buf, &late.name, hints, None) {
        Err(e @ (ExportError::Busy { .. } | ExportError::Relayout { .. })) => e,
        Err(e) => return Err(e.into()),
        Ok(_) => return Err(anyhow!("a re-layout while DMA is in flight was expected to be refused")),
    };
    let linear = matches!(refused, ExportError::Busy { .. });
    s.step(
        "re-layout, busy",
        format!(
            "The application asks for an explicit re-layout for {}: a new layout for every importer, which the exporter does only for LINEAR buffers and only when nothing is in flight. Refused:\n  {refused}",
            late.label()
        ),
    );
    s.e.signal(fence)?;
    if !linear {
        s.step(
            "late attach",
            format!("{fence} signals; {} stays refused: its layout cannot be reached by copying rows.", late.label()),
        );
        return Ok(());
    }
    let att = s.e.attach_relayout(buf, &late.name, hints, None)?;
    let mut text = format!(
        "{fence} signals; the re-layout is asked again. Nothing is in flight: the buffer moves into a new backing laid out for every device, and the image is copied row by row:\n"
    );
    let events = s.e.take_events();
    let p = s.e.platform().clone();
    for ev in &events {
        if let Event::Relaid { from, to, old_layout, new_layout, planes, .. } = ev {
            let _ = writeln!(text, "  moved {} -> {}", segments_text(from), segments_text(to));
            let _ = writeln!(text, "  layout was: {}", layout_text(&p, old_layout));
            let _ = writeln!(text, "  layout now: {}", layout_text(&p, new_layout));
            for c in planes {
                let _ = writeln!(
                    text,
                    "  plane {}: {} rows of {} B copied from offset {} (pitch {}) to offset {} (pitch {}); rows digest {:#018x} before and after",
                    c.plane, c.rows, c.row_bytes, c.from.0, c.from.1, c.to.0, c.to.1, c.digest
                );
            }
        }
    }
    notices(s, &events, early, &mut text)?;
    s.steps.push(Step { title: "re-layout".into(), text: text.trim_end().to_owned(), events });

    let mut text = String::from("The importers re-map with the new layout; the late device maps too:\n");
    for a in early.into_iter().chain([att]) {
        let (_, sg) = s.e.map(a)?;
        let _ = writeln!(text, "  {} sees {sg}", s.e.device_of(a)?);
    }
    let after = picture(&s.e, buf)?;
    if after != before {
        return Err(anyhow!("the picture changed across the re-layout: {before:x?} -> {after:x?}"));
    }
    let shown: Vec<String> = after.iter().enumerate().map(|(i, d)| format!("plane {i} {d:#018x}")).collect();
    let _ = write!(
        text,
        "  read back through the new layout, the picture is the one read through the old layout before the move ({}): the re-layout preserved the image.",
        shown.join(", ")
    );
    s.step("re-map", text);
    Ok(())
}

/// One line per move notice, and what using an old mapping now does.
fn notices(s: &Story, events: &[Event], early: [AttachmentId; 2], text: &mut String) -> Result<()> {
    for ev in events {
        if let Event::MoveNotify(n) = ev {
            let maps: Vec<String> = n.invalidated.iter().map(ToString::to_string).collect();
            let what = if maps.is_empty() {
                "it has no mapping yet".to_owned()
            } else {
                format!("{} invalid, re-map", maps.join(", "))
            };
            let layout = if n.layout.is_some() { "; new layout attached" } else { "" };
            let _ =
                writeln!(text, "  move_notify -> {} ({}): {what}{layout}", s.e.device_of(n.attachment)?, n.attachment);
        }
    }
    if let Some(Err(e)) = dma_mapping(events, early[1]).map(|old| s.e.sg_table(old)) {
        let _ = writeln!(text, "  using the display's old mapping now fails: {e}");
    }
    Ok(())
}

/// Each plane's image rows, read through the buffer's current layout and hashed here
/// (FNV-1a), independently of the exporter's own check.
fn picture(e: &Exporter<Machine>, buf: BufferId) -> Result<Vec<u64>> {
    let layout = e.plan(buf)?.and_then(|p| p.layout.as_ref()).map(|l| l.layout.clone()).context("an image layout")?;
    let backing = e.backing(buf)?.context("no backing")?;
    let info = format_info(layout.format).context("a known format")?;
    let mut digests = Vec::new();
    for (plane, sub) in layout.planes.iter().zip(info.planes) {
        let row_bytes = usize::try_from(u64::from(layout.width.div_ceil(sub.hsub)) * u64::from(sub.cpp))?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for r in 0..layout.height.div_ceil(sub.vsub) {
            let at = u64::from(plane.offset) + u64::from(r) * u64::from(plane.pitch);
            for byte in e.backend().read(backing, at, row_bytes)? {
                h = (h ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
            }
        }
        digests.push(h);
    }
    Ok(digests)
}

fn layout_text(p: &Platform, l: &Layout) -> String {
    let planes: Vec<String> = l
        .planes
        .iter()
        .enumerate()
        .map(|(i, pl)| format!("plane {i} at {} pitch {} ({} rows)", pl.offset, pl.pitch, pl.rows))
        .collect();
    format!(
        "{} {}x{} {}, {}; {} B",
        fourcc_name(l.format),
        l.width,
        l.height,
        p.modifier_name(l.modifier),
        planes.join(", "),
        l.size
    )
}

fn dma_mapping(events: &[Event], attachment: AttachmentId) -> Option<MappingId> {
    events.iter().find_map(|e| match e {
        Event::MoveNotify(n) if n.attachment == attachment => n.invalidated.first().copied(),
        _ => None,
    })
}

fn refuse(s: &mut Story, buf: BufferId, d: &Device) -> Result<()> {
    let gpu_att = first_mapping(s, buf)?;
    let fence = s.e.fence(gpu_att)?;
    let text = match s.e.attach(buf, &d.name, usage(d.class)) {
        Err(ExportError::Conflict { conflict, .. }) => {
            format!(
                "The GPU renders again ({fence} in flight) and {} attaches ({}). No placement could ever serve it with the others, so it is refused at attach, with the solver's reasons:\n  {}",
                d.label(),
                usage(d.class),
                conflict.message
            )
        }
        Err(e) => format!("{} attaches and is refused: {e}", d.label()),
        Ok(_) => return Err(anyhow!("{} was expected to conflict but attached", d.name)),
    };
    s.step("incompatible device", text);
    s.e.signal(fence)?;
    Ok(())
}

/// A live mapping of the buffer (the GPU's, which maps first).
fn first_mapping(s: &Story, buf: BufferId) -> Result<MappingId> {
    for a in s.e.attachments_of(buf)? {
        if let Some(m) = s.e.mappings_of(*a)?.iter().copied().find(|m| s.e.sg_table(*m).is_ok()) {
            return Ok(m);
        }
    }
    Err(anyhow!("no live mapping"))
}

fn release_all(s: &mut Story, buf: BufferId, start_free: dmaplace_core::Size) -> Result<()> {
    for a in s.e.attachments_of(buf)?.to_vec() {
        for m in s.e.mappings_of(a)?.to_vec() {
            s.e.unmap(m)?;
        }
        s.e.detach(a)?;
    }
    s.e.release(buf)?;
    s.e.backend().check().map_err(|v| anyhow!("simulated machine invariant: {v:?}"))?;
    let end_free = s.e.backend().free_report().free();
    s.step(
        "release",
        format!(
            "Everything is unmapped, detached and released: {end_free} free, as at the start ({start_free}); no frame owned twice, none leaked."
        ),
    );
    if end_free != start_free {
        return Err(anyhow!("free memory {end_free} differs from the start {start_free}"));
    }
    Ok(())
}

fn describe(d: &BufferDesc) -> String {
    match d {
        BufferDesc::Size(s) => s.to_string(),
        BufferDesc::Image(i) => format!("{} {}x{}", fourcc_name(i.format), i.width, i.height),
    }
}

fn backing_of(e: &Exporter<Machine>, buf: BufferId) -> Result<dmaplace_core::Backing> {
    let b = e.backing(buf)?.context("no backing")?;
    Ok(e.backend().backing(b)?)
}

fn segments_text(segs: &[dmaplace_core::PhysRange]) -> String {
    let shown: Vec<String> = segs.iter().take(3).map(ToString::to_string).collect();
    let more = if segs.len() > 3 { format!(" and {} more", segs.len() - 3) } else { String::new() };
    format!("{}{more} ({} segment{})", shown.join(", "), segs.len(), if segs.len() == 1 { "" } else { "s" })
}

/// Why the plan is what it is, one line per requirement that someone caused.
fn plan_why(plan: &Plan) -> String {
    use dmaplace_core::Field;
    let r = &plan.requirements;
    let mut out = format!(
        "  plan: {} {}, {} mapping",
        plan.size,
        if plan.contiguous() { "physically contiguous" } else { "in chunks" },
        plan.cache_mode.value
    );
    let lines: [(&str, dmaplace_core::DeviceSet, Field); 4] = [
        ("contiguous", r.max_segments.causes, Field::MaxSegments),
        ("address window", r.window.causes, Field::Window),
        ("cache mode", r.cache_modes.causes, Field::CacheModes),
        ("memory pool", r.pool.causes, Field::Pool),
    ];
    for (what, set, field) in lines {
        for c in plan.causes(set, field) {
            let _ = write!(out, "\n  why {what}: {c}");
        }
    }
    let _ = write!(out, "\n  allowed placement: {}", plan.placement);
    out
}

fn machine_text(p: &Platform, e: &Exporter<Machine>) -> String {
    let m = &p.memory;
    let mut t = format!("{}: {}\n", p.name, p.description);
    for b in &m.banks {
        let _ = writeln!(t, "  bank {:<12} {}  {}", b.name, b.range(), b.size);
    }
    for c in &m.cma {
        let _ = writeln!(t, "  CMA  {:<12} {}  {}", c.name, c.range(), c.size);
    }
    for c in &m.carveouts {
        let _ = writeln!(
            t,
            "  carveout {:<8} {}  {}{}",
            c.name,
            c.range(),
            c.size,
            if c.protected { " (protected)" } else { "" }
        );
    }
    let (bg, cma) = e.backend().background_bytes();
    let _ = write!(
        t,
        "  other users hold {} (fragmented; {} of it borrowed CMA)",
        dmaplace_core::Size::new(bg),
        dmaplace_core::Size::new(cma)
    );
    t
}

const COLUMNS: u64 = 64;

/// One line per bank: each column is 1/64 of it. `B` our buffer, `#` other users
/// (unmovable), `+` other users (movable), `c` free CMA, `x` free carveout, `.` free.
fn memory_map(p: &Platform, e: &Exporter<Machine>) -> String {
    let occ = e.backend().occupancy();
    let mut out = String::new();
    for bank in &p.memory.banks {
        let r = bank.range();
        let cell = (r.len().bytes() / COLUMNS).max(1);
        let line: String = (0..COLUMNS)
            .map(|i| {
                let lo = r.start().get() + i * cell;
                cell_char(p, &occ, lo, lo + cell)
            })
            .collect();
        let _ = writeln!(out, "{:<10} {} [{line}] {}", bank.name, r.start(), r.end());
    }
    out + "legend: B buffer `frame`, # other users, + movable other users, c free CMA, x free carveout, . free"
}

fn cell_char(p: &Platform, occ: &[(dmaplace_core::PhysRange, Holder)], lo: u64, hi: u64) -> char {
    let overlap = |r: &dmaplace_core::PhysRange| r.end().get().min(hi).saturating_sub(r.start().get().max(lo));
    let mut ours = 0;
    let mut fixed = 0;
    let mut movable = 0;
    for (r, h) in occ.iter().filter(|(r, _)| r.start().get() < hi && r.end().get() > lo) {
        match h {
            Holder::Buffer(_) => ours += overlap(r),
            Holder::Background { movable: false } => fixed += overlap(r),
            Holder::Background { movable: true } => movable += overlap(r),
        }
    }
    let half = (hi - lo) / 2;
    if ours > 0 {
        'B'
    } else if fixed + movable > half {
        if fixed >= movable { '#' } else { '+' }
    } else if p.memory.cma.iter().any(|c| c.range().start().get() < hi && c.range().end().get() > lo) {
        'c'
    } else if p.memory.carveouts.iter().any(|c| c.range().start().get() < hi && c.range().end().get() > lo) {
        'x'
    } else {
        '.'
    }
}

fn indent(t: &str) -> String {
    t.lines().map(|l| if l.starts_with("  ") { l.to_owned() } else { format!("   {l}") }).collect::<Vec<_>>().join("\n")
}
