//! The simulated machine: physical memory built from a [`Platform`], the placement
//! policy that turns a [`Plan`] into frames, and buffer bookkeeping.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use dmaplace_core::units::{PageSize, PhysAddr, PhysRange, Size};
use dmaplace_core::verify::sg_entries;
use dmaplace_core::window::Window;
use dmaplace_core::{Backing, CacheMode, Plan, Platform, verify};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::background::Background;
use crate::buddy::{Area, ORDER_LIMIT, Pfn};
use crate::config::{AUTO_BYTES_LIMIT, ContentMode, SimConfig};
use crate::content::{self, Content, PAGE};
use crate::error::SimError;
use crate::iommu::Domain;
use crate::phys::{Carveout, CmaRegion, NORMAL_START, Zone, ZoneArea};

static NEXT_MACHINE: AtomicU32 = AtomicU32::new(1);

/// Where a chunk of a buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// A zone's buddy allocator (index into `Machine::areas`).
    Area(usize),
    /// A CMA region (index into `Machine::cma`).
    Cma(usize),
    /// A carveout (index into `Machine::carveouts`).
    Carveout(usize),
}

/// A physically contiguous piece of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) pfn: Pfn,
    pub(crate) pages: u64,
    pub(crate) src: Src,
}

impl Chunk {
    pub(crate) fn range(&self) -> PhysRange {
        PhysRange::new(PhysAddr::new(self.pfn * PAGE), PhysAddr::new((self.pfn + self.pages) * PAGE))
            .expect("chunks are non-empty")
    }
}

/// A live buffer.
#[derive(Clone, Debug)]
pub(crate) struct BufferRecord {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) size: Size,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) cache_mode: CacheMode,
    pub(crate) protected: bool,
}

impl BufferRecord {
    pub(crate) fn runs(&self) -> Vec<(Pfn, u64)> {
        self.chunks.iter().map(|c| (c.pfn, c.pages)).collect()
    }

    pub(crate) fn backing(&self) -> Backing {
        Backing {
            segments: self.chunks.iter().map(Chunk::range).collect(),
            cache_mode: self.cache_mode,
            protected: self.protected,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    pub(crate) generation: u32,
    pub(crate) record: Option<BufferRecord>,
}

/// A placed buffer: a handle into its [`Machine`]. Return it with
/// [`dmaplace_core::backend::Backend::free`] (or [`Machine::release`]).
#[derive(Debug, PartialEq, Eq)]
pub struct SimBacking {
    pub(crate) machine: u32,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) id: u64,
    pub(crate) size: Size,
}

impl SimBacking {
    /// The buffer's number on its machine (1, 2, ...; never reused).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The plan's size.
    pub fn size(&self) -> Size {
        self.size
    }
}

impl fmt::Display for SimBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backing #{} ({})", self.id, self.size)
    }
}

/// Counters of everything the machine did. Two machines built from the same platform,
/// configuration and seed and driven the same way have equal counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful allocations.
    pub allocations: u64,
    /// Failed allocations.
    pub failed_allocations: u64,
    /// Buffers freed.
    pub frees: u64,
    /// Chunks taken from the buddy allocators.
    pub buddy_chunks: u64,
    /// Contiguous ranges claimed from CMA regions.
    pub cma_claims: u64,
    /// Chunks taken from carveouts.
    pub carveout_chunks: u64,
    /// Pages of CMA borrowers migrated out of claimed ranges.
    pub cma_pages_migrated: u64,
    /// Bytes copied by those migrations.
    pub cma_bytes_migrated: u64,
    /// Borrower blocks that had to leave their CMA region for a zone (so that zone's free
    /// count stays lower after buffers are released).
    pub cma_migrations_to_zones: u64,
    /// [`dmaplace_core::backend::Backend::copy`] calls.
    pub copies: u64,
    /// Bytes copied by them.
    pub bytes_copied: u64,
    /// Device mappings made.
    pub maps: u64,
    /// Device mappings undone.
    pub unmaps: u64,
    /// Cache cleans (write-back), one per physical run per non-coherent device.
    pub cache_cleans: u64,
    /// Cache invalidates, likewise.
    pub cache_invalidates: u64,
    /// Write-combine buffer flushes.
    pub wc_flushes: u64,
    /// Background blocks allocated (at start and by churn).
    pub background_allocs: u64,
    /// Background blocks freed.
    pub background_frees: u64,
}

/// A device mapping the machine has handed out.
#[derive(Clone, Debug)]
pub(crate) struct MapRecord {
    pub(crate) device: String,
    pub(crate) buffer: u64,
    pub(crate) buffer_name: String,
    /// `(iova, len)` behind an IOMMU.
    pub(crate) iova: Option<(u64, u64)>,
}

/// The simulated machine. See the crate docs and `DESIGN.md`.
pub struct Machine {
    pub(crate) id: u32,
    pub(crate) platform: Platform,
    pub(crate) config: SimConfig,
    pub(crate) max_order: u32,
    /// Buddy areas in the order allocations try them: Normal before DMA32, then by address.
    pub(crate) areas: Vec<ZoneArea>,
    pub(crate) cma: Vec<CmaRegion>,
    pub(crate) carveouts: Vec<Carveout>,
    pub(crate) background: Background,
    pub(crate) rng: Xoshiro256PlusPlus,
    pub(crate) slots: Vec<Slot>,
    pub(crate) free_slots: Vec<u32>,
    pub(crate) next_buffer: u64,
    pub(crate) domains: BTreeMap<String, Domain>,
    pub(crate) mappings: BTreeMap<u64, MapRecord>,
    pub(crate) next_mapping: u64,
    pub(crate) content: Content,
    pub(crate) counters: Counters,
    /// Programmer errors seen in calls that cannot return one (`free`, `unmap`).
    pub(crate) warnings: Vec<String>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("platform", &self.platform.name)
            .field("seed", &self.config.seed)
            .field("max_order", &self.max_order)
            .field("free", &self.free_bytes())
            .field("buffers", &self.live_buffers())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Frames `lo..hi` covered by a byte range (partial frames left out).
fn frames_of(r: PhysRange) -> (Pfn, Pfn) {
    (r.start().get().div_ceil(PAGE), r.end().get() / PAGE)
}

/// `ceil(log2(n))` for n >= 1.
fn order_covering(n: u64) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// `floor(log2(n))` for n >= 1.
fn order_within(n: u64) -> u32 {
    63 - n.leading_zeros()
}

/// Where one allocation may take frames from, in the order it tries them.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    /// Carveouts the plan names (or protected carveouts for a protected plan).
    pub(crate) carveouts: Vec<(usize, Pfn, Pfn)>,
    /// Buddy areas, Normal before DMA32.
    pub(crate) areas: Vec<(usize, Pfn, Pfn)>,
    /// CMA regions.
    pub(crate) cma: Vec<(usize, Pfn, Pfn)>,
}

/// Which sources a chunk may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Carveouts and buddy zones.
    Static,
    /// CMA regions (migrating borrowers).
    Cma,
}

impl Machine {
    /// Builds the machine for `platform`: zones, CMA regions and carveouts from its
    /// memory map, then the seeded background load.
    pub fn new(platform: &Platform, config: SimConfig) -> Result<Machine, SimError> {
        let perr = |reason: String| SimError::Platform { platform: platform.name.clone(), reason };
        let mem = &platform.memory;
        let max_order = match config.max_order {
            Some(o) => o,
            None => mem
                .max_buddy_block
                .order()
                .ok_or_else(|| perr(format!("max_buddy_block {} is below 4 KiB", mem.max_buddy_block)))?,
        };
        if max_order > ORDER_LIMIT {
            return Err(perr(format!("max order {max_order} is over the simulator's limit of {ORDER_LIMIT}")));
        }
        let carve_w = Window::from_ranges(mem.carveouts.iter().map(|c| c.range()));
        let cma_w = Window::from_ranges(mem.cma.iter().map(|c| c.range()));
        let total_cma: u64 = mem.cma.iter().map(|c| c.size.bytes()).sum();
        if cma_w.total().bytes() != total_cma {
            return Err(perr("CMA regions overlap".into()));
        }
        let total_carve: u64 = mem.carveouts.iter().map(|c| c.size.bytes()).sum();
        if carve_w.total().bytes() != total_carve {
            return Err(perr("carveouts overlap".into()));
        }
        if !cma_w.intersect(&carve_w).is_empty() {
            return Err(perr(format!("CMA {cma_w} overlaps carveouts {carve_w}")));
        }
        let mut normal = Vec::new();
        let mut dma32 = Vec::new();
        let mut dma = Vec::new();
        let dma_end: Pfn = mem.zone_dma_bits.map_or(0, |b| (b.end() / 4096).min(NORMAL_START));
        for bank in &mem.banks {
            let general = Window::from_ranges([bank.range()]).subtract(&cma_w).subtract(&carve_w);
            for r in general.ranges() {
                let (lo, hi) = frames_of(*r);
                for (zone, zlo, zhi) in [
                    (Zone::Dma, lo, hi.min(dma_end)),
                    (Zone::Dma32, lo.max(dma_end), hi.min(NORMAL_START)),
                    (Zone::Normal, lo.max(NORMAL_START), hi),
                ] {
                    if zlo < zhi {
                        let mut area = Area::new(zlo, zhi, max_order);
                        area.free_range(zlo, zhi - zlo);
                        let za = ZoneArea { zone, bank: bank.name.clone(), area };
                        match zone {
                            Zone::Normal => normal.push(za),
                            Zone::Dma32 => dma32.push(za),
                            Zone::Dma => dma.push(za),
                        }
                    }
                }
            }
        }
        let mut areas = normal;
        areas.sort_by_key(|a| a.area.start());
        dma32.sort_by_key(|a| a.area.start());
        dma.sort_by_key(|a| a.area.start());
        // Zone fallback order, as the page allocator's: Normal, then DMA32, then DMA.
        areas.extend(dma32);
        areas.extend(dma);
        let cma = mem
            .cma
            .iter()
            .map(|c| {
                let (lo, hi) = frames_of(c.range());
                let mut area = Area::new(lo, hi, max_order);
                area.free_range(lo, hi - lo);
                CmaRegion { name: c.name.clone(), area, pinned: BTreeMap::new() }
            })
            .collect();
        let carveouts = mem
            .carveouts
            .iter()
            .map(|c| {
                let (lo, hi) = frames_of(c.range());
                Carveout::new(c.name.clone(), lo, hi, c.protected)
            })
            .collect();
        let mode = match config.content {
            ContentMode::Bytes => content::Mode::Bytes,
            ContentMode::Checksum => content::Mode::Checksum,
            ContentMode::Auto if mem.ram().total() <= AUTO_BYTES_LIMIT => content::Mode::Bytes,
            ContentMode::Auto => content::Mode::Checksum,
        };
        let mut m = Machine {
            id: NEXT_MACHINE.fetch_add(1, Ordering::Relaxed),
            platform: platform.clone(),
            config,
            max_order,
            areas,
            cma,
            carveouts,
            background: Background::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            slots: Vec::new(),
            free_slots: Vec::new(),
            next_buffer: 1,
            domains: BTreeMap::new(),
            mappings: BTreeMap::new(),
            next_mapping: 1,
            content: Content::new(mode),
            counters: Counters::default(),
            warnings: Vec::new(),
        };
        m.populate_background();
        Ok(m)
    }

    /// The platform the machine was built from.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The buddy allocator's largest order.
    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    /// What the machine has done so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live buffers.
    pub fn live_buffers(&self) -> usize {
        self.slots.iter().filter(|s| s.record.is_some()).count()
    }

    /// Live device mappings.
    pub fn live_mappings(&self) -> usize {
        self.mappings.len()
    }

    pub(crate) fn record(&self, b: &SimBacking) -> Result<&BufferRecord, SimError> {
        let stale = SimError::StaleHandle { what: "backing", id: b.id };
        if b.machine != self.id {
            return Err(stale);
        }
        let slot = self.slots.get(b.slot as usize).ok_or(stale.clone())?;
        match &slot.record {
            Some(r) if slot.generation == b.generation && r.id == b.id => Ok(r),
            _ => Err(stale),
        }
    }

    /// The carveouts and regions the plan's devices name (their `regions` and the
    /// `regions` of the hint rules that apply to them).
    fn named_regions<'a>(&'a self, plan: &Plan) -> BTreeSet<&'a str> {
        let mut names = BTreeSet::new();
        for e in &plan.devices {
            if let Some(d) = self.platform.device(&e.device) {
                names.extend(d.placement.regions.iter().map(String::as_str));
            }
            for r in self.platform.rules.iter().filter(|r| r.applies(&e.device, e.hints)) {
                names.extend(r.regions.iter().map(String::as_str));
            }
        }
        names
    }

    /// The frames the plan may use, per source.
    pub(crate) fn targets(&self, plan: &Plan) -> Targets {
        let place: Vec<(Pfn, Pfn)> =
            plan.placement.ranges().iter().map(|r| frames_of(*r)).filter(|(lo, hi)| lo < hi).collect();
        let clip = |lo: Pfn, hi: Pfn, i: usize, out: &mut Vec<(usize, Pfn, Pfn)>| {
            for &(plo, phi) in &place {
                let (a, b) = (plo.max(lo), phi.min(hi));
                if a < b {
                    out.push((i, a, b));
                }
            }
        };
        let mut t = Targets::default();
        let protected = plan.requirements.protected.value;
        let named = self.named_regions(plan);
        for (i, c) in self.carveouts.iter().enumerate() {
            let usable = if protected { c.protected } else { !c.protected && named.contains(c.name.as_str()) };
            if usable {
                clip(c.start, c.end, i, &mut t.carveouts);
            }
        }
        if !protected {
            for (i, a) in self.areas.iter().enumerate() {
                clip(a.area.start(), a.area.end(), i, &mut t.areas);
            }
            for (i, c) in self.cma.iter().enumerate() {
                clip(c.start(), c.end(), i, &mut t.cma);
            }
            // Like zone fallback, take CMA from the highest area first: low areas are
            // kept for devices whose address limit leaves them nothing else.
            t.cma.sort_by_key(|&(_, lo, _)| std::cmp::Reverse(lo));
        }
        t
    }

    /// Takes `pages` frames aligned to `align` frames from the first source that has them.
    fn alloc_chunk(&mut self, t: &Targets, pages: u64, align: u64, pass: Pass) -> Option<Chunk> {
        match pass {
            Pass::Static => {
                for &(i, lo, hi) in &t.carveouts {
                    if let Some(pfn) = self.carveouts[i].claim(pages, align, lo, hi) {
                        self.counters.carveout_chunks += 1;
                        return Some(Chunk { pfn, pages, src: Src::Carveout(i) });
                    }
                }
                let order = order_covering(pages.max(align));
                if order <= self.max_order {
                    for &(i, lo, hi) in &t.areas {
                        let area = &mut self.areas[i].area;
                        if let Some(pfn) = area.alloc(order, lo, hi) {
                            let block = 1u64 << order;
                            if block > pages {
                                area.free_range(pfn + pages, block - pages);
                            }
                            self.counters.buddy_chunks += 1;
                            return Some(Chunk { pfn, pages, src: Src::Area(i) });
                        }
                    }
                }
                None
            }
            Pass::Cma => {
                for &(i, lo, hi) in &t.cma {
                    if let Some(pfn) = self.cma_claim(i, pages, align, lo, hi) {
                        return Some(Chunk { pfn, pages, src: Src::Cma(i) });
                    }
                }
                None
            }
        }
    }

    /// Returns a chunk to its source and forgets its content.
    pub(crate) fn free_chunk(&mut self, c: Chunk) {
        self.content.clear(c.pfn, c.pages);
        match c.src {
            Src::Area(i) => self.areas[i].area.free_range(c.pfn, c.pages),
            Src::Cma(i) => {
                let r = &mut self.cma[i];
                let pinned = r.pinned.remove(&c.pfn);
                debug_assert_eq!(pinned, Some(c.pages), "CMA chunk {:#x} not pinned", c.pfn);
                r.area.free_range(c.pfn, c.pages);
            }
            Src::Carveout(i) => self.carveouts[i].release(c.pfn, c.pages),
        }
    }

    /// Claims `pages` frames aligned to `align` inside `lo..hi` of CMA region `r`: the
    /// lowest range not pinned by a buffer whose borrowers can all be migrated out.
    fn cma_claim(&mut self, r: usize, pages: u64, align: u64, lo: Pfn, hi: Pfn) -> Option<Pfn> {
        let (lo, hi) = (lo.max(self.cma[r].start()), hi.min(self.cma[r].end()));
        let mut t = lo.next_multiple_of(align);
        while t + pages <= hi {
            if let Some((s, n)) = self.cma[r].pinned_overlap(t, t + pages) {
                t = (s + n).next_multiple_of(align);
                continue;
            }
            match self.migrate_out(r, t, t + pages) {
                Err(busy_end) => t = busy_end.max(t + 1).next_multiple_of(align),
                Ok(()) => match self.cma[r].area.claim_range(t, pages) {
                    Ok(()) => {
                        self.cma[r].pinned.insert(t, pages);
                        self.counters.cma_claims += 1;
                        return Some(t);
                    }
                    Err(f) => {
                        self.warnings.push(format!(
                            "CMA region `{}`: frame {:#x} is neither free, pinned nor borrowed",
                            self.cma[r].name,
                            f * PAGE
                        ));
                        t = (f + 1).next_multiple_of(align);
                    }
                },
            }
        }
        None
    }

    /// Free bytes inside the targets (for error messages).
    fn free_in(&self, t: &Targets) -> (Size, Size) {
        let mut free = 0u64;
        let mut largest = 0u64;
        let overlap = |s: Pfn, n: u64, lo: Pfn, hi: Pfn| (s + n).min(hi).saturating_sub(s.max(lo));
        let mut scan = |area: &Area, lo: Pfn, hi: Pfn| {
            for (s, k) in area.free_blocks() {
                let o = overlap(s, 1 << k, lo, hi);
                free += o;
                largest = largest.max(o);
            }
        };
        for &(i, lo, hi) in &t.areas {
            scan(&self.areas[i].area, lo, hi);
        }
        for &(i, lo, hi) in &t.cma {
            scan(&self.cma[i].area, lo, hi);
        }
        for &(i, lo, hi) in &t.carveouts {
            for (s, e) in self.carveouts[i].free.iter() {
                free += overlap(s, e - s, lo, hi);
            }
        }
        (Size::new(free * PAGE), Size::new(largest * PAGE))
    }

    /// Places a buffer for `plan`: every hard requirement, and the chunk-size preference
    /// where memory allows. See `DESIGN.md` for the policy.
    pub fn allocate_plan(&mut self, plan: &Plan, name: &str) -> Result<SimBacking, SimError> {
        let req = &plan.requirements;
        let size = plan.size.align_up(PageSize::SZ_4K)?;
        let pages = size.bytes() / PAGE;
        let t = self.targets(plan);
        let result = if pages == 0 {
            Err("zero-byte buffer".to_owned())
        } else if plan.contiguous() {
            self.alloc_contiguous(plan, &t, pages)
        } else {
            self.alloc_scattered(plan, &t, pages)
        };
        let chunks = match result {
            Ok(c) => c,
            Err(reason) => {
                self.counters.failed_allocations += 1;
                let (free, largest) = self.free_in(&t);
                return Err(SimError::OutOfMemory {
                    buffer: name.to_owned(),
                    size,
                    contiguous: plan.contiguous(),
                    placement: plan.placement.clone(),
                    reason,
                    free,
                    largest,
                });
            }
        };
        let rec = BufferRecord {
            id: self.next_buffer,
            name: name.to_owned(),
            size: plan.size,
            chunks,
            cache_mode: plan.cache_mode.value,
            protected: req.protected.value,
        };
        let backing = rec.backing();
        let check = match req.max_segments.value {
            Some(n) => {
                let needed = sg_entries(&backing, req.max_segment_size.value, req.segment_boundary.value);
                if needed > u64::from(n.get()) {
                    Err(SimError::SegmentLimit { device: "*".into(), buffer: name.to_owned(), needed, max: n.get() })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
        .and_then(|()| {
            verify(plan, &plan.devices, &backing)
                .map_err(|violation| SimError::Verify { buffer: name.to_owned(), violation })
        });
        if let Err(e) = check {
            for c in rec.chunks.into_iter().rev() {
                self.free_chunk(c);
            }
            self.counters.failed_allocations += 1;
            return Err(e);
        }
        self.next_buffer += 1;
        self.counters.allocations += 1;
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 live buffers")
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        let handle = SimBacking { machine: self.id, slot, generation: s.generation, id: rec.id, size: plan.size };
        s.record = Some(rec);
        Ok(handle)
    }

    /// One contiguous run: the preferred alignment first (the largest IOMMU page that
    /// fits), then the hard one.
    fn alloc_contiguous(&mut self, plan: &Plan, t: &Targets, pages: u64) -> Result<Vec<Chunk>, String> {
        let req = &plan.requirements;
        let covering = pages.next_power_of_two();
        let mut hard = (req.alignment.value.max(req.granule.value).get() / PAGE).max(1);
        if let Some(b) = req.segment_boundary.value.get().checked_add(1) {
            // A run no longer than the boundary window stays inside one when it starts
            // on a multiple of min(its covering power of two, the window).
            hard = hard.max(covering.min(b / PAGE).max(1));
        }
        let soft = hard.max((plan.preferences.alignment.get() / PAGE).min(covering));
        for pass in [Pass::Static, Pass::Cma] {
            for align in if soft > hard { vec![soft, hard] } else { vec![hard] } {
                if let Some(c) = self.alloc_chunk(t, pages, align, pass) {
                    return Ok(vec![c]);
                }
            }
        }
        Err(format!(
            "no free run of {} aligned to {} in the zones{}{}",
            Size::new(pages * PAGE),
            Size::new(hard * PAGE),
            if t.cma.is_empty() { "" } else { ", CMA regions" },
            if t.carveouts.is_empty() { "" } else { " or named carveouts" },
        ))
    }

    /// Chunk orders to try, largest first: every order from the buddy's largest block
    /// (capped by the segment cap) down to the granule, or down to the order the segment
    /// count needs. This covers the plan's preferred chunk sizes (the IOMMU page sizes,
    /// or the system heap's 1 MiB/64 KiB/4 KiB): each is tried before anything smaller,
    /// and a larger naturally aligned block is never worse for an IOMMU than the pages
    /// it splits into.
    fn chunk_orders(&self, plan: &Plan, pages: u64) -> Result<(Vec<u32>, u32), String> {
        let req = &plan.requirements;
        let granule = order_within((req.granule.value.get() / PAGE).max(1));
        let cap_order = req.segment_cap().map_or(ORDER_LIMIT, |c| order_within((c / PAGE).max(1)));
        let top = self.max_order.min(cap_order);
        let mut min = granule;
        if let Some(n) = req.max_segments.value {
            let need = order_covering(pages.div_ceil(u64::from(n.get())));
            min = min.max(need);
        }
        if min > top {
            return Err(format!(
                "{} in {} segments needs chunks of {}, over the largest block {}",
                Size::new(pages * PAGE),
                req.max_segments.value.map_or("any number of".to_owned(), |n| format!("at most {n}")),
                Size::new(PAGE << min),
                Size::new(PAGE << top)
            ));
        }
        Ok(((min..=top).rev().collect(), min))
    }

    /// Chunks as large as possible, largest first, each naturally aligned (so every
    /// chunk's offset in the buffer, and so in the IOVA range, is a multiple of its size);
    /// the first also aligned to the plan's alignment. Zones and carveouts are tried at
    /// every size before CMA is.
    fn alloc_scattered(&mut self, plan: &Plan, t: &Targets, pages: u64) -> Result<Vec<Chunk>, String> {
        let req = &plan.requirements;
        let first_align = (req.alignment.value.max(req.granule.value).get() / PAGE).max(1);
        let (orders, min) = match self.chunk_orders(plan, pages) {
            Ok(o) => o,
            Err(reason) => {
                // The segment limit needs runs longer than the buddy's blocks: one run.
                return self.alloc_contiguous(plan, t, pages).map_err(|e| format!("{reason}; as one run: {e}"));
            }
        };
        let mut chunks: Vec<Chunk> = Vec::with_capacity(4);
        let mut left = pages;
        while left > 0 {
            let align0 = if chunks.is_empty() { first_align } else { 1 };
            let mut got = None;
            'passes: for pass in [Pass::Static, Pass::Cma] {
                for &o in &orders {
                    let len = 1u64 << o;
                    if len <= left
                        && let Some(c) = self.alloc_chunk(t, len, len.max(align0), pass)
                    {
                        got = Some(c);
                        break 'passes;
                    }
                }
                if left < 1u64 << min {
                    // The tail, shorter than the smallest chunk: naturally aligned.
                    if let Some(c) = self.alloc_chunk(t, left, left.next_power_of_two().max(align0), pass) {
                        got = Some(c);
                        break 'passes;
                    }
                }
            }
            match got {
                Some(c) => {
                    left -= c.pages;
                    chunks.push(c);
                }
                None => {
                    let done = pages - left;
                    for c in chunks.into_iter().rev() {
                        self.free_chunk(c);
                    }
                    return Err(format!(
                        "no free chunk of {} or more after placing {} of {}",
                        Size::new(PAGE << min.min(order_within(left))),
                        Size::new(done * PAGE),
                        Size::new(pages * PAGE)
                    ));
                }
            }
        }
        Ok(chunks)
    }

    /// Frees a backing; fails on a handle this machine did not issue or already freed.
    pub fn release(&mut self, b: SimBacking) -> Result<(), SimError> {
        self.record(&b)?;
        let rec = self.slots[b.slot as usize].record.take().expect("checked live");
        self.free_slots.push(b.slot);
        for c in rec.chunks.into_iter().rev() {
            self.free_chunk(c);
        }
        let dangling: Vec<&MapRecord> = self.mappings.values().filter(|m| m.buffer == rec.id).collect();
        if !dangling.is_empty() {
            let devs: Vec<&str> = dangling.iter().map(|m| m.device.as_str()).collect();
            self.warnings.push(format!(
                "buffer `{}` (#{}) freed while still mapped for {}",
                rec.name,
                rec.id,
                devs.join(", ")
            ));
        }
        self.counters.frees += 1;
        Ok(())
    }

    /// The physical placement of a backing (what `verify` checks).
    pub fn backing(&self, b: &SimBacking) -> Result<Backing, SimError> {
        Ok(self.record(b)?.backing())
    }

    /// The buffer's name.
    pub fn buffer_name(&self, b: &SimBacking) -> Result<&str, SimError> {
        Ok(&self.record(b)?.name)
    }
}
