//! The seeded background load ("other users" of memory), and the migration of its
//! movable blocks out of CMA ranges that a contiguous allocation claims.

use std::collections::BTreeMap;

use rand::RngExt;

use crate::buddy::Pfn;
use crate::content::{PAGE, mix};
use crate::machine::Machine;

/// Where a background block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Home {
    /// A zone's buddy area.
    Area(usize),
    /// A CMA region: the block is a CMA borrower.
    Cma(usize),
}

/// One background allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BgBlock {
    pub(crate) order: u32,
    pub(crate) movable: bool,
    /// Stands for the block's content: migration must carry it along unchanged.
    pub(crate) tag: u64,
    pub(crate) home: Home,
    /// Index in `Background::live`.
    pub(crate) slot: usize,
}

/// The background load's blocks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Background {
    /// Every live block by first frame.
    pub(crate) blocks: BTreeMap<Pfn, BgBlock>,
    /// Live blocks' first frames, for uniform random choice.
    pub(crate) live: Vec<Pfn>,
    /// Frames held.
    pub(crate) used_pages: u64,
    /// Frames the load settles at.
    pub(crate) target_pages: u64,
}

/// `fraction` of `total`, clamped to `0..=total`.
fn share(total: u64, fraction: f64) -> u64 {
    let f = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
    // CAST: f in 0..=1, so the product lies in 0..=total and converts without loss of range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let v = (total as f64 * f) as u64;
    v.min(total)
}

impl Machine {
    /// Frames managed by the buddy allocators, CMA included.
    pub(crate) fn buddy_pages(&self) -> u64 {
        self.areas.iter().map(|a| a.area.pages()).sum::<u64>() + self.cma.iter().map(|c| c.area.pages()).sum::<u64>()
    }

    /// Fills memory to `prefill`, then frees random blocks down to `fill`.
    pub(crate) fn populate_background(&mut self) {
        let cfg = self.config.background;
        if cfg.is_none() {
            return;
        }
        let total = self.buddy_pages();
        self.background.target_pages = share(total, cfg.fill);
        let prefill = share(total, cfg.prefill.max(cfg.fill));
        while self.background.used_pages < prefill {
            if !self.background_alloc() {
                break;
            }
        }
        while self.background.used_pages > self.background.target_pages && !self.background.live.is_empty() {
            self.background_free_random();
        }
    }

    /// Lets the other users run for `steps` steps: each frees a random block while they
    /// hold more than their share, and allocates a new one while they hold less. Returns
    /// the number of blocks allocated and freed.
    pub fn background_step(&mut self, steps: u32) -> u64 {
        let mut n = 0;
        for _ in 0..steps {
            if self.background.used_pages >= self.background.target_pages && !self.background.live.is_empty() {
                self.background_free_random();
                n += 1;
            }
            if self.background.used_pages < self.background.target_pages && self.background_alloc() {
                n += 1;
            }
        }
        n
    }

    /// Sets the share (0..=1) of buddy-managed memory the other users settle at: memory
    /// pressure rising or easing (an application loading, the page cache growing). Nothing
    /// moves until they churn ([`Machine::background_step`]). Returns the new target in
    /// bytes.
    pub fn set_background_fill(&mut self, fill: f64) -> u64 {
        self.background.target_pages = share(self.buddy_pages(), fill);
        self.background.target_pages * PAGE
    }

    /// Bytes the other users hold, and how many of them sit in CMA regions.
    pub fn background_bytes(&self) -> (u64, u64) {
        let cma: u64 =
            self.background.blocks.values().filter(|b| matches!(b.home, Home::Cma(_))).map(|b| 1u64 << b.order).sum();
        (self.background.used_pages * PAGE, cma * PAGE)
    }

    /// A digest of every background block's (address-independent) content: unchanged by
    /// migration.
    pub fn background_digest(&self) -> u64 {
        let mut tags: Vec<(u64, u32)> = self.background.blocks.values().map(|b| (b.tag, b.order)).collect();
        tags.sort_unstable();
        tags.iter().fold(0, |h, (t, o)| mix(mix(h, *t), u64::from(*o)))
    }

    fn background_alloc(&mut self) -> bool {
        let cfg = self.config.background;
        let order = self.rng.random_range(0..=cfg.max_order.min(self.max_order));
        let movable = self.rng.random_bool(cfg.movable.clamp(0.0, 1.0));
        let to_cma = movable && !self.cma.is_empty() && self.rng.random_bool(cfg.cma_share.clamp(0.0, 1.0));
        let tag: u64 = self.rng.random();
        let general = |m: &mut Machine| {
            (0..m.areas.len()).find_map(|i| m.areas[i].area.alloc(order, 0, Pfn::MAX).map(|p| (p, Home::Area(i))))
        };
        let cma = |m: &mut Machine| {
            (0..m.cma.len()).find_map(|i| m.cma[i].area.alloc(order, 0, Pfn::MAX).map(|p| (p, Home::Cma(i))))
        };
        let placed = if to_cma {
            cma(self).or_else(|| general(self))
        } else if movable {
            general(self).or_else(|| cma(self))
        } else {
            general(self)
        };
        let Some((pfn, home)) = placed else {
            return false;
        };
        let slot = self.background.live.len();
        self.background.live.push(pfn);
        self.background.blocks.insert(pfn, BgBlock { order, movable, tag, home, slot });
        self.background.used_pages += 1 << order;
        self.counters.background_allocs += 1;
        true
    }

    fn background_free_random(&mut self) {
        let i = self.rng.random_range(0..self.background.live.len());
        let pfn = self.background.live.swap_remove(i);
        if let Some(&moved) = self.background.live.get(i) {
            self.background.blocks.get_mut(&moved).expect("live block is recorded").slot = i;
        }
        let b = self.background.blocks.remove(&pfn).expect("live block is recorded");
        match b.home {
            Home::Area(a) => self.areas[a].area.free_block(pfn, b.order),
            Home::Cma(c) => self.cma[c].area.free_block(pfn, b.order),
        }
        self.background.used_pages -= 1 << b.order;
        self.counters.background_frees += 1;
    }

    /// Migrates every background block overlapping frames `lo..hi` of CMA region `r` out
    /// of that range: to elsewhere in the region first, else to a zone. On failure returns
    /// the end of the block that could not move (blocks moved so far stay moved, as in
    /// Linux's `alloc_contig_range`).
    pub(crate) fn migrate_out(&mut self, r: usize, lo: Pfn, hi: Pfn) -> Result<(), Pfn> {
        let reach = 1u64 << self.max_order;
        let victims: Vec<(Pfn, BgBlock)> = self
            .background
            .blocks
            .range(lo.saturating_sub(reach)..hi)
            .filter(|(p, b)| *p + (1 << b.order) > lo)
            .map(|(p, b)| (*p, *b))
            .collect();
        for (pfn, b) in victims {
            let end = pfn + (1 << b.order);
            if !b.movable || b.home != Home::Cma(r) {
                return Err(end);
            }
            let region = &mut self.cma[r];
            let (rs, re) = (region.start(), region.end());
            let inside = region
                .area
                .alloc(b.order, rs, lo)
                .or_else(|| region.area.alloc(b.order, hi, re))
                .map(|p| (p, Home::Cma(r)));
            let dest = inside.or_else(|| {
                (0..self.areas.len())
                    .find_map(|i| self.areas[i].area.alloc(b.order, 0, Pfn::MAX).map(|p| (p, Home::Area(i))))
            });
            let Some((to, home)) = dest else {
                return Err(end);
            };
            self.cma[r].area.free_block(pfn, b.order);
            self.background.blocks.remove(&pfn);
            self.background.blocks.insert(to, BgBlock { home, ..b });
            self.background.live[b.slot] = to;
            self.counters.cma_pages_migrated += 1 << b.order;
            self.counters.cma_bytes_migrated += (1 << b.order) * PAGE;
            if matches!(home, Home::Area(_)) {
                self.counters.cma_migrations_to_zones += 1;
            }
        }
        Ok(())
    }
}
