//! What a run measures, and the meter that collects it while a policy replays a trace.
//!
//! Definitions (also in `docs/EVALUATION.md`):
//! - **failure**: an operation of the trace that the policy could not serve, by [`Reason`]:
//!   an attach refused, an allocation that found no memory, or an import (a map) by a
//!   device that cannot use the placement. Events that need a failed handle are counted
//!   as *skipped*, not as more failures.
//! - **contiguous failure**: a failure caused by a need for physically contiguous memory
//!   (an out-of-memory on a contiguous allocation, a device with `max_segments = 1` given
//!   a scattered backing, a conflict on the longest run).
//! - **fragmentation index**: the kernel's unusable free space index at order 9 (2 MiB),
//!   over the page-allocator zones: `1 - (free pages in free blocks of 2 MiB or more) /
//!   (free pages)`; 0 when every free page could serve a 2 MiB allocation, near 1 when
//!   none could.
//! - **ideal IOMMU entries** of a mapping of `n` bytes: the fewest entries the device's
//!   page sizes can map `n` bytes with (perfectly aligned and contiguous memory), e.g.
//!   4 for 8 MiB with 4K/2M/1G pages.
//! - **IOTLB misses**: one walk of each new mapping through a cold IOTLB of the machine's
//!   size (32 entries): see [`access_pattern`].
//! - **zeroing**: every byte a heap hands out is zeroed first; without pools of pre-zeroed
//!   pages that work is on the allocation path. Its time is modelled at
//!   [`ZERO_BYTES_PER_SEC`].

use std::collections::{BTreeMap, HashMap};

use dmaplace_core::iommu::map_entries;
use dmaplace_core::units::PhysRange;
use dmaplace_core::{DeviceClass, Platform, Window};
use dmaplace_sim::{AccessPattern, Holder, Iotlb, IotlbStats, Machine, SimMapping};
use serde::Serialize;

use crate::policy::Policy;

/// CPU zeroing bandwidth of the model: 1 GiB in 149 ms (the drm/xe measurement of CPU
/// clearing on Lunar Lake, `shared/platform-facts.md`), about 7.2 GB/s.
pub const ZERO_BYTES_PER_SEC: f64 = 1_073_741_824.0 / 0.149;

/// The order the fragmentation index is taken at: 2 MiB blocks (a huge page, an IOMMU
/// large page, half the largest buddy block).
pub const FRAG_ORDER: u32 = 9;

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The solver found no placement for the devices together: attach refused, with the
    /// conflict's reasons.
    Conflict,
    /// A late attacher needs a layout (modifier, pitch, offset, rows, size) that the
    /// layout committed at the first allocation does not have: attach refused. Importers
    /// were given that layout, and a move changes where the pages are, never the layout,
    /// so no policy that moves could serve it either.
    Layout,
    /// A late attacher did not fit and the buffer could not move while DMA was in flight.
    Busy,
    /// A late attacher did not fit and the policy never moves buffers.
    NoMove,
    /// No free memory of the kind needed (an allocation or a move).
    OutOfMemory,
    /// A device cannot reach a segment (`dma_mask`, bus limit): the import fails, or on a
    /// kernel with swiotlb every DMA is bounced through a copy.
    Reach,
    /// A device needs fewer segments than the backing has (contiguous memory).
    Segments,
    /// A device is limited to named regions (a carveout) the backing is outside of.
    Regions,
    /// Protected memory is needed (or may not be accessed).
    Protected,
    /// The backing's start or segments are not aligned as the device needs.
    Alignment,
    /// The device's IOVA space has no room for the mapping.
    IovaSpace,
    /// The platform has no heap for what the policy asked for (no secure carveout).
    NoHeap,
    /// A queued move failed when DMA completed; the buffer stayed where it was.
    MoveFailed,
    /// An importer could not re-map after a move.
    Remap,
}

impl Reason {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Conflict => "conflict",
            Reason::Layout => "layout",
            Reason::Busy => "busy",
            Reason::NoMove => "no-move",
            Reason::OutOfMemory => "out-of-memory",
            Reason::Reach => "reach",
            Reason::Segments => "segments",
            Reason::Regions => "regions",
            Reason::Protected => "protected",
            Reason::Alignment => "alignment",
            Reason::IovaSpace => "iova-space",
            Reason::NoHeap => "no-heap",
            Reason::MoveFailed => "move-failed",
            Reason::Remap => "remap",
        }
    }

    /// The reason for a `verify` violation's constraint.
    pub fn of_constraint(constraint: &str) -> Reason {
        match constraint {
            "reach" => Reason::Reach,
            "max_segments" => Reason::Segments,
            "regions" => Reason::Regions,
            "protected" => Reason::Protected,
            "iova_space" => Reason::IovaSpace,
            _ => Reason::Alignment,
        }
    }
}

/// One failed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: Reason,
    /// Whether a need for contiguous memory caused it.
    pub contiguous: bool,
    /// What happened, in words (for `--verbose` and tests).
    pub detail: String,
}

impl Failure {
    /// A failure for `reason`.
    pub fn new(reason: Reason, contiguous: bool, detail: impl Into<String>) -> Failure {
        Failure { reason, contiguous, detail: detail.into() }
    }
}

/// Per device: its mappings, their IOMMU entries and the simulated IOTLB.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceMetrics {
    /// Device name.
    pub device: String,
    /// The IOMMU it maps through, if any.
    pub iommu: Option<String>,
    /// Mappings made (re-maps after moves included).
    pub maps: u64,
    /// Bytes mapped over all mappings.
    pub mapped_bytes: u64,
    /// IOMMU page-table entries written over all mappings.
    pub ptes: u64,
    /// The fewest entries the device's page sizes allow for the same mappings.
    pub ideal_ptes: u64,
    /// The most entries live in its domain at once.
    pub peak_live_ptes: u64,
    /// IOTLB lookups of one pass over each mapping.
    pub iotlb_lookups: u64,
    /// IOTLB misses (page-table walks) of one pass over each mapping, cold.
    pub iotlb_misses: u64,
}

fn per_mib(n: u64, bytes: u64) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    // CAST: counts and byte totals of a run are far below 2^52; the ratio is a report value.
    #[allow(clippy::cast_precision_loss)]
    let v = n as f64 * 1_048_576.0 / bytes as f64;
    v
}

impl DeviceMetrics {
    /// IOMMU entries per MiB mapped.
    pub fn ptes_per_mib(&self) -> f64 {
        per_mib(self.ptes, self.mapped_bytes)
    }
    /// The ideal entries per MiB.
    pub fn ideal_per_mib(&self) -> f64 {
        per_mib(self.ideal_ptes, self.mapped_bytes)
    }
    /// Entries over the ideal (1.0 is ideal); `None` without an IOMMU or mappings.
    pub fn ratio_to_ideal(&self) -> Option<f64> {
        // CAST: as above.
        #[allow(clippy::cast_precision_loss)]
        (self.ideal_ptes > 0).then(|| self.ptes as f64 / self.ideal_ptes as f64)
    }
    /// IOTLB misses per MiB mapped.
    pub fn misses_per_mib(&self) -> f64 {
        per_mib(self.iotlb_misses, self.mapped_bytes)
    }
}

/// Zeroing work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Zeroing {
    /// Bytes zeroed while an allocation (or a move) waits for them.
    pub on_path_bytes: u64,
    /// Bytes zeroed ahead of time, off the allocation path (pools of pre-zeroed pages;
    /// none in this model yet).
    pub off_path_bytes: u64,
    /// Time of the on-path zeroing at [`ZERO_BYTES_PER_SEC`], in milliseconds.
    pub on_path_ms: f64,
}

/// The machine at one moment of simulated time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, ns.
    pub t_ns: u64,
    /// Bytes of buffers in CMA areas.
    pub cma_bytes: u64,
    /// Bytes of buffers placed as one physically contiguous run because they had to be.
    pub contiguous_bytes: u64,
    /// Bytes of all live buffers.
    pub buffer_bytes: u64,
    /// The fragmentation index (order 9).
    pub frag_index: f64,
    /// Failures so far.
    pub failures: u64,
}

/// Who holds physical memory over time: one row per sample (at most [`HEAT_ROWS`]), one
/// column per slice of RAM (the banks laid end to end).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Heatmap {
    /// The RAM, as its banks `(start, end)` laid end to end.
    pub banks: Vec<(u64, u64)>,
    /// The CMA areas, as `(start, end)` offsets in the banks laid end to end.
    pub cma: Vec<(u64, u64)>,
    /// Columns per row.
    pub columns: usize,
    /// The rows, in time order.
    pub rows: Vec<HeatRow>,
}

/// One moment of a [`Heatmap`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeatRow {
    /// Simulated time, ns.
    pub t_ns: u64,
    /// Per column, the share (per mille) held by buffers.
    pub buffers: Vec<u16>,
    /// Per column, the share (per mille) held by the other users of memory.
    pub others: Vec<u16>,
}

/// The most heatmap rows a run records (each costs a walk over every held range).
pub const HEAT_ROWS: u64 = 60;

/// Everything one run of one policy measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunMetrics {
    /// The policy.
    pub policy: Policy,
    /// Trace events replayed.
    pub events: u64,
    /// Simulated time covered, ns.
    pub sim_time_ns: u64,
    /// Background churn steps run (the other users of memory).
    pub background_steps: u64,
    /// Blocks the other users allocated and freed in those steps: simulator events
    /// besides the trace's.
    pub background_events: u64,
    /// Failures by reason.
    pub failures: BTreeMap<Reason, u64>,
    /// Failures caused by a need for contiguous memory.
    pub contiguous_failures: u64,
    /// Events not run because a handle they need had failed.
    pub skipped: u64,
    /// Maps that waited for a queued move.
    pub waits: u64,
    /// Imports by a device whose cache mode differs from the backing's: they work, with
    /// cache maintenance a matching mode would not need; not counted as failures.
    pub cache_mode_mismatches: u64,
    /// Backings allocated (first allocations and moves).
    pub allocations: u64,
    /// Bytes allocated.
    pub allocated_bytes: u64,
    /// Buffers moved.
    pub migrations: u64,
    /// Bytes copied by moves.
    pub migrated_bytes: u64,
    /// Importer re-maps after `move_notify`.
    pub remaps: u64,
    /// Peak bytes of buffers in CMA areas.
    pub cma_peak_bytes: u64,
    /// Peak bytes of buffers that had to be one contiguous run.
    pub contiguous_peak_bytes: u64,
    /// Bytes of other users' pages migrated out of CMA to make room (on the path).
    pub cma_borrowers_migrated_bytes: u64,
    /// The fragmentation index at the end.
    pub frag_final: f64,
    /// Its mean over the samples.
    pub frag_mean: f64,
    /// Its maximum.
    pub frag_max: f64,
    /// Zeroing work.
    pub zeroing: Zeroing,
    /// Per device, by name.
    pub devices: Vec<DeviceMetrics>,
    /// Samples over time.
    pub series: Vec<Sample>,
    /// Where buffers sat over time, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<Heatmap>,
}

impl RunMetrics {
    /// All failures.
    pub fn total_failures(&self) -> u64 {
        self.failures.values().sum()
    }
    /// The device entry for `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceMetrics> {
        self.devices.iter().find(|d| d.device == name)
    }
}

/// A live buffer as the meter sees it.
#[derive(Debug)]
struct Held {
    bytes: u64,
    cma: u64,
    contiguous: bool,
}

/// The unusable free space index at `order` from free block counts per order.
pub fn unusable_index(free_blocks: &[u64], order: u32) -> f64 {
    let pages = |k: usize, n: &u64| n << k;
    let total: u64 = free_blocks.iter().enumerate().map(|(k, n)| pages(k, n)).sum();
    if total == 0 {
        return 0.0;
    }
    let k0 = (order as usize).min(free_blocks.len().saturating_sub(1));
    let usable: u64 = free_blocks.iter().enumerate().skip(k0).map(|(k, n)| pages(k, n)).sum();
    // CAST: page counts below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let v = 1.0 - usable as f64 / total as f64;
    v
}

/// Collects metrics during a run.
#[derive(Debug)]
pub(crate) struct Meter {
    cma: Window,
    held: HashMap<u64, Held>,
    cma_now: u64,
    contiguous_now: u64,
    bytes_now: u64,
    pub(crate) m: RunMetrics,
    devices: BTreeMap<String, DeviceMetrics>,
    iotlb_memo: HashMap<PatternKey, IotlbStats>,
    iotlb_entries: usize,
    sample_every: u64,
    next_sample: u64,
    heat: Option<Heatmap>,
    heat_every: u64,
    /// Off while the runner tears down what the trace left live: not part of the trace.
    pub(crate) counting: bool,
}

impl Meter {
    pub(crate) fn new(platform: &Platform, policy: Policy, duration_ns: u64, samples: u64, heatmap: bool) -> Meter {
        let banks: Vec<(u64, u64)> =
            platform.memory.banks.iter().map(|b| (b.range().start().get(), b.range().end().get())).collect();
        Meter {
            cma: platform.memory.cma_window(),
            held: HashMap::new(),
            cma_now: 0,
            contiguous_now: 0,
            bytes_now: 0,
            m: RunMetrics {
                policy,
                events: 0,
                sim_time_ns: 0,
                background_steps: 0,
                background_events: 0,
                failures: BTreeMap::new(),
                contiguous_failures: 0,
                skipped: 0,
                waits: 0,
                cache_mode_mismatches: 0,
                allocations: 0,
                allocated_bytes: 0,
                migrations: 0,
                migrated_bytes: 0,
                remaps: 0,
                cma_peak_bytes: 0,
                contiguous_peak_bytes: 0,
                cma_borrowers_migrated_bytes: 0,
                frag_final: 0.0,
                frag_mean: 0.0,
                frag_max: 0.0,
                zeroing: Zeroing::default(),
                devices: Vec::new(),
                series: Vec::new(),
                heatmap: None,
            },
            devices: BTreeMap::new(),
            iotlb_memo: HashMap::new(),
            iotlb_entries: 32,
            sample_every: (duration_ns / samples.max(1)).max(1),
            next_sample: 0,
            heat: heatmap.then(|| {
                let cma = platform.memory.cma.iter().filter_map(|c| span_of(&banks, c.range())).collect();
                Heatmap { banks, cma, columns: 96, rows: Vec::new() }
            }),
            heat_every: samples.div_ceil(HEAT_ROWS).max(1),
            counting: true,
        }
    }

    pub(crate) fn set_iotlb_entries(&mut self, n: usize) {
        self.iotlb_entries = n;
    }

    fn cma_bytes(&self, segments: &[PhysRange]) -> u64 {
        segments
            .iter()
            .map(|s| self.cma.ranges().iter().filter_map(|c| c.intersect(*s)).map(|r| r.len().bytes()).sum::<u64>())
            .sum()
    }

    fn hold(&mut self, key: u64, segments: Vec<PhysRange>, contiguous: bool) {
        let bytes: u64 = segments.iter().map(|s| s.len().bytes()).sum();
        let cma = self.cma_bytes(&segments);
        self.cma_now += cma;
        self.bytes_now += bytes;
        if contiguous {
            self.contiguous_now += bytes;
        }
        self.held.insert(key, Held { bytes, cma, contiguous });
        if !self.counting {
            return;
        }
        self.m.cma_peak_bytes = self.m.cma_peak_bytes.max(self.cma_now);
        self.m.contiguous_peak_bytes = self.m.contiguous_peak_bytes.max(self.contiguous_now);
        self.m.allocations += 1;
        self.m.allocated_bytes += bytes;
        self.m.zeroing.on_path_bytes += bytes;
    }

    /// A buffer got its first backing.
    pub(crate) fn allocated(&mut self, key: u64, segments: Vec<PhysRange>, contiguous: bool) {
        self.freed(key);
        self.hold(key, segments, contiguous);
    }

    /// A buffer moved to `to`, copying `copied` bytes. Both backings exist during the
    /// copy, and the peaks say so.
    pub(crate) fn moved(&mut self, key: u64, to: Vec<PhysRange>, contiguous: bool, copied: u64) {
        let old = self.held.remove(&key);
        self.hold(key, to, contiguous);
        if let Some(h) = old {
            self.unhold(&h);
        }
        if self.counting {
            self.m.migrations += 1;
            self.m.migrated_bytes += copied;
        }
    }

    /// A buffer's memory was freed.
    pub(crate) fn freed(&mut self, key: u64) {
        if let Some(h) = self.held.remove(&key) {
            self.unhold(&h);
        }
    }

    fn unhold(&mut self, h: &Held) {
        self.cma_now -= h.cma;
        self.bytes_now -= h.bytes;
        if h.contiguous {
            self.contiguous_now -= h.bytes;
        }
    }

    /// Counts something (unless tearing down).
    pub(crate) fn count(&mut self, f: impl FnOnce(&mut RunMetrics)) {
        if self.counting {
            f(&mut self.m);
        }
    }

    pub(crate) fn failed(&mut self, f: &Failure) {
        if !self.counting {
            return;
        }
        *self.m.failures.entry(f.reason).or_insert(0) += 1;
        if f.contiguous {
            self.m.contiguous_failures += 1;
        }
    }

    /// A device mapped a buffer: its entries, the ideal, and one pass through the IOTLB
    /// ([`access_pattern`]; `pitch` is the image's first pitch).
    pub(crate) fn mapped(&mut self, platform: &Platform, machine: &Machine, m: &SimMapping, pitch: Option<u64>) {
        if !self.counting {
            return;
        }
        let entries = self.iotlb_entries;
        let dev = self
            .devices
            .entry(m.device().to_owned())
            .or_insert_with(|| DeviceMetrics { device: m.device().to_owned(), ..DeviceMetrics::default() });
        dev.maps += 1;
        dev.mapped_bytes += m.len().bytes();
        let Some(im) = m.iommu() else { return };
        dev.iommu = Some(im.iommu.clone());
        dev.ptes += im.ptes.total();
        let pgs = platform.device(m.device()).and_then(|d| d.placement.iommu.as_ref()).map(|i| i.pgsize_bitmap);
        if let Some(ideal) = pgs.and_then(|p| map_entries(p, 0, 0, m.len().bytes())) {
            dev.ideal_ptes += ideal.total();
        }
        dev.peak_live_ptes = dev.peak_live_ptes.max(machine.domain_ptes(m.device()).total());
        let gpu = platform.device(m.device()).is_some_and(|d| d.class == DeviceClass::Gpu);
        let pattern = access_pattern(gpu, m.len().bytes(), pitch);
        let key = pattern_key(pattern, im.runs.iter().map(|r| (r.page.get(), r.count)).collect());
        let stats = match self.iotlb_memo.get(&key) {
            Some(s) => *s,
            None => {
                // A bad pattern (a layout larger than the mapping) counts no lookups.
                let s = m.replay(pattern, &mut Iotlb::new(entries)).unwrap_or_default();
                self.iotlb_memo.insert(key, s);
                s
            }
        };
        dev.iotlb_lookups += stats.lookups;
        dev.iotlb_misses += stats.misses;
    }

    /// Records a sample when `t` has reached the next sampling time (or `force`).
    pub(crate) fn sample(&mut self, t: u64, machine: &Machine, force: bool) {
        if !self.counting || (!force && t < self.next_sample) {
            return;
        }
        self.next_sample = t.saturating_add(self.sample_every);
        let frag = unusable_index(&machine.zone_free_blocks(), FRAG_ORDER);
        self.m.series.push(Sample {
            t_ns: t,
            cma_bytes: self.cma_now,
            contiguous_bytes: self.contiguous_now,
            buffer_bytes: self.bytes_now,
            frag_index: frag,
            failures: self.m.failures.values().sum(),
        });
        // Every `heat_every`-th sample (the first included), and the forced last one.
        let nth_sample = (self.m.series.len() as u64).saturating_sub(1);
        if (force || nth_sample.is_multiple_of(self.heat_every))
            && let Some(h) = self.heat.as_mut()
        {
            let (buffers, others) = heat_row(h, &machine.occupancy());
            h.rows.push(HeatRow { t_ns: t, buffers, others });
        }
    }

    /// Closes the run: device table, fragmentation summary, zeroing time.
    pub(crate) fn finish(mut self, machine: &Machine, t: u64) -> RunMetrics {
        let frags: Vec<f64> = self.m.series.iter().map(|s| s.frag_index).collect();
        self.m.frag_final = frags.last().copied().unwrap_or(0.0);
        self.m.frag_max = frags.iter().copied().fold(0.0, f64::max);
        // CAST: a few hundred samples.
        #[allow(clippy::cast_precision_loss)]
        let n = frags.len().max(1) as f64;
        self.m.frag_mean = frags.iter().sum::<f64>() / n;
        self.m.cma_borrowers_migrated_bytes = machine.counters().cma_bytes_migrated;
        // CAST: bytes below 2^52.
        #[allow(clippy::cast_precision_loss)]
        let ms = self.m.zeroing.on_path_bytes as f64 / ZERO_BYTES_PER_SEC * 1000.0;
        self.m.zeroing.on_path_ms = ms;
        self.m.sim_time_ns = t;
        self.m.devices = self.devices.into_values().collect();
        self.m.heatmap = self.heat;
        self.m
    }
}

/// How a device walks a mapping once: a GPU in tiles of 64 B by 16 rows over the whole
/// buffer taken as rows of the image's first pitch (every plane, as a GPU samples or
/// renders them), everything else (and a GPU on a buffer that is not an image) linearly;
/// 64 B per access.
pub fn access_pattern(gpu: bool, len: u64, pitch: Option<u64>) -> AccessPattern {
    match pitch.filter(|p| *p > 0 && *p <= len) {
        Some(pitch) if gpu => {
            AccessPattern::Tiled { pitch, rows: len / pitch, tile_width: 64, tile_height: 16, burst: 64 }
        }
        _ => AccessPattern::Linear { burst: 64 },
    }
}

/// An access pattern's numbers and a mapping's entry runs `(page size, count)`: replays
/// with equal keys miss equally (the IOVA is aligned to the largest page used).
type PatternKey = (u64, u64, u64, u64, Vec<(u64, u64)>);

fn pattern_key(p: AccessPattern, runs: Vec<(u64, u64)>) -> PatternKey {
    match p {
        AccessPattern::Linear { burst } => (0, 0, 0, burst, runs),
        AccessPattern::Tiled { pitch, rows, tile_width, tile_height, burst } => {
            (pitch, rows, tile_width << 32 | tile_height, burst, runs)
        }
    }
}

/// Where `r` lies in the banks laid end to end, if it lies in one bank.
fn span_of(banks: &[(u64, u64)], r: PhysRange) -> Option<(u64, u64)> {
    let mut base = 0;
    for (s, e) in banks {
        if r.start().get() >= *s && r.end().get() <= *e {
            return Some((base + r.start().get() - s, base + r.end().get() - s));
        }
        base += e - s;
    }
    None
}

/// One heatmap row: per column, the per-mille shares held by buffers and by the other
/// users of memory.
fn heat_row(h: &Heatmap, held: &[(PhysRange, Holder)]) -> (Vec<u16>, Vec<u16>) {
    let total: u64 = h.banks.iter().map(|(s, e)| e - s).sum();
    let width = total.div_ceil(h.columns as u64).max(1);
    let mut buffers = vec![0u64; h.columns];
    let mut others = vec![0u64; h.columns];
    for (r, holder) in held {
        let Some((mut lo, hi)) = span_of(&h.banks, *r) else { continue };
        let into = if matches!(holder, Holder::Buffer(_)) { &mut buffers } else { &mut others };
        while lo < hi {
            let col = lo / width;
            let end = ((col + 1) * width).min(hi);
            // CAST: col < columns, a usize.
            #[allow(clippy::cast_possible_truncation)]
            let i = (col as usize).min(h.columns - 1);
            into[i] += end - lo;
            lo = end;
        }
    }
    // CAST: per mille, at most 1000.
    #[allow(clippy::cast_possible_truncation)]
    let per_mille = |v: Vec<u64>| v.iter().map(|b| (b * 1000 / width).min(1000) as u16).collect();
    (per_mille(buffers), per_mille(others))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_index_exact() {
        // 4 free order-0 pages and one free order-9 block (512 pages).
        let mut blocks = vec![0u64; 11];
        blocks[0] = 4;
        blocks[9] = 1;
        let v = unusable_index(&blocks, 9);
        assert!((v - 4.0 / 516.0).abs() < 1e-12, "{v}");
        assert_eq!(unusable_index(&[0; 11], 9), 0.0);
        blocks[9] = 0;
        assert_eq!(unusable_index(&blocks, 9), 1.0);
    }
}
