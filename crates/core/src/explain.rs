//! Words for conflicts: an engineer's explanation naming every device, constraint and value.

use crate::effective::Effective;
use crate::platform::Platform;
use crate::solver::{BufferDesc, CandidateConflict, ConflictItem, ConflictKind};
use crate::window::Window;

/// The explanation of a conflict among `effs` (the minimal set).
pub(crate) fn message(
    platform: &Platform,
    desc: &BufferDesc,
    effs: &[Effective],
    kind: &ConflictKind,
    items: &[ConflictItem],
) -> String {
    let label = |d: &str| effs.iter().find(|e| e.device == d).map_or_else(|| format!("`{d}`"), Effective::label);
    let p = &platform.name;
    match kind {
        ConflictKind::NoCommonMemory => no_common_memory(platform, effs),
        ConflictKind::NoRoom { within, needed, contiguous, max_segments, available, longest } => {
            let who = names(effs);
            let need = verb(effs, "needs", "need");
            let tail = because(effs, platform);
            let head = match (*contiguous, max_segments) {
                (true, _) => format!(
                    "{who} ({p}) {need} {needed} of physically contiguous memory within {within}, but the longest run there is {available}{}",
                    aligned_note(effs)
                ),
                (false, Some(n)) => format!(
                    "{who} ({p}) {need} {needed} in at most {n} segments within {within}, but {n} segments hold at most {available} there (the longest run is {longest}){}",
                    aligned_note(effs)
                ),
                (false, None) => {
                    format!("{who} ({p}) {need} {needed} of memory within {within}, but only {available} lies there")
                }
            };
            head + &tail
        }
        ConflictKind::NoContiguousPool { within, needed, max_block } => format!(
            "{} ({p}) {} a physically contiguous run of {needed} within {}; that is more than the page allocator's largest block ({max_block}), and no CMA area or carveout lies there (CMA: {}){}",
            names(effs),
            verb(effs, "needs", "need"),
            within,
            platform.memory.cma_window(),
            because(effs, platform)
        ),
        ConflictKind::SegmentLimit { size, max_segments, segment_cap } => format!(
            "{} ({p}) {} at most {max_segments} segment(s) of at most {segment_cap} each, which cannot hold {size}: {}",
            names(effs),
            verb(effs, "allows", "allow"),
            list_items(items, &label)
        ),
        ConflictKind::SegmentSize { max_segment_size } => format!(
            "{} ({p}) {} a max_segment_size that rounds down to {max_segment_size} whole pages: no sg table of pages can meet it (lib/scatterlist.c refuses it): {}",
            names(effs),
            verb(effs, "has", "have"),
            list_items(items, &label)
        ),
        ConflictKind::CacheModes => format!("no cache mode suits every device ({p}): {}", list_items(items, &label)),
        ConflictKind::Protected => format!(
            "protected memory is needed but not every device can access it ({p}): {}",
            list_items(items, &label)
        ),
        ConflictKind::Format { format } => {
            format!("format {format} is not supported ({p}): {}", list_items(items, &label))
        }
        ConflictKind::Modifiers { format } => {
            let asked = match desc {
                BufferDesc::Image(img) if !img.modifiers.is_empty() => {
                    let names: Vec<String> = img.modifiers.iter().map(|m| platform.modifier_name(*m)).collect();
                    format!(" (the request accepts only {})", names.join(" "))
                }
                _ => String::new(),
            };
            format!("no modifier for {format} is accepted by every device{asked} ({p}): {}", list_items(items, &label))
        }
        ConflictKind::Dimension { what, value, max } => {
            format!("the image's {what} is {value}, over the limit of {max} ({p}): {}", list_items(items, &label))
        }
        ConflictKind::IovaSpace { size, space, reserved, alignment } => format!(
            "the buffer ({size}) does not fit the IOVA space ({space}, of which the first {reserved} is kept back, mappings of this size {alignment}-aligned) ({p}): {}",
            list_items(items, &label)
        ),
    }
}

/// " (starting on 64 KiB)" when the buffer's alignment is above the base page.
fn aligned_note(effs: &[Effective]) -> String {
    let align = effs.iter().map(|e| e.alignment.value.max(e.granule.value)).max();
    match align {
        Some(a) if a > crate::units::PageSize::SZ_4K => format!(" starting on {a}"),
        _ => String::new(),
    }
}

/// The explanation when no layout candidate can be placed: the preferred first, then the
/// others, each with its reason.
pub(crate) fn candidates(desc: &BufferDesc, tried: &[CandidateConflict]) -> String {
    let image = match desc {
        BufferDesc::Image(img) => format!("{} {}x{}", crate::layout::fourcc_name(img.format), img.width, img.height),
        BufferDesc::Size(s) => s.to_string(),
    };
    let mut out = format!("no layout of {image} that every device accepts can be placed; ");
    for (i, c) in tried.iter().enumerate() {
        let role = if i == 0 { "preferred" } else { "then tried" };
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&format!("{} ({role}, {}): {}", c.modifier_name, c.size, c.message));
    }
    out
}

fn verb(effs: &[Effective], one: &'static str, many: &'static str) -> &'static str {
    if effs.len() == 1 { one } else { many }
}

fn names(effs: &[Effective]) -> String {
    join_and(&effs.iter().map(Effective::label).collect::<Vec<_>>())
}

fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn list_items(items: &[ConflictItem], label: &dyn Fn(&str) -> String) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|i| {
            let stated = format!("{} = {}", i.constraint, i.value);
            let why = if i.why == stated { String::new() } else { format!(" ({})", i.why) };
            format!("{} has {stated}{why}", label(&i.device))
        })
        .collect();
    parts.join("; ")
}

fn because(effs: &[Effective], platform: &Platform) -> String {
    let parts: Vec<String> = effs.iter().map(|e| format!("{} {}", e.label(), needs(e, platform))).collect();
    format!(" ({})", parts.join("; "))
}

/// What one device needs, as a verb phrase: "needs physically contiguous memory below
/// 0x4000_0000 (bus_dma_limit = 0x3fff_ffff)".
fn needs(e: &Effective, platform: &Platform) -> String {
    let what = if e.max_segments.value.is_some_and(|n| n.get() == 1) {
        format!("physically contiguous memory ({})", e.max_segments.why)
    } else {
        "memory".to_owned()
    };
    let ram = platform.memory.ram();
    let reach = if ram.is_subset_of(&e.reach.value) {
        String::new()
    } else {
        format!(" {} ({})", describe_reach(&e.reach.value), e.reach.why)
    };
    match &e.pool.value {
        Some(pool) => format!("can only use {}{reach}", describe_pool(platform, pool, &e.pool.why.to_string())),
        None => format!("needs {what}{reach}"),
    }
}

fn describe_reach(w: &Window) -> String {
    match w.ranges() {
        [r] if r.start().get() == 0 => format!("below {}", r.end()),
        _ => format!("within {w}"),
    }
}

fn describe_pool(platform: &Platform, pool: &Window, why: &str) -> String {
    let m = &platform.memory;
    let named: Vec<String> = m
        .carveouts
        .iter()
        .map(|c| (c.name.as_str(), if c.protected { "protected carveout" } else { "carveout" }, c.range()))
        .chain(m.cma.iter().map(|r| (r.name.as_str(), "CMA area", r.range())))
        .chain(m.banks.iter().map(|r| (r.name.as_str(), "bank", r.range())))
        .filter(|(_, _, r)| pool.contains_range(*r))
        .map(|(n, k, r)| format!("the {k} `{n}` at {r}"))
        .collect();
    if named.is_empty() { format!("{pool} ({why})") } else { format!("{} ({why})", join_and(&named)) }
}

fn no_common_memory(platform: &Platform, effs: &[Effective]) -> String {
    let p = &platform.name;
    let ram = platform.memory.ram();
    match effs {
        [one] => format!(
            "{} ({p}) {}, but no memory of the platform lies there (RAM: {ram})",
            one.label(),
            needs(one, platform)
        ),
        [first, rest @ ..] => {
            let others: Vec<String> = rest.iter().map(|e| format!("{} {}", e.label(), needs(e, platform))).collect();
            let tail = if effs.len() == 2 { "both" } else { "all of them" };
            format!(
                "{} ({p}) {}, but {}; no memory satisfies {tail}.",
                first.label(),
                needs(first, platform),
                join_and(&others)
            )
        }
        [] => String::from("no devices"),
    }
}
