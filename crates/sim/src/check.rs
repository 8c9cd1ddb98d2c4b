//! The invariant checker and free-memory reports.

use std::fmt;

use dmaplace_core::units::{PhysAddr, PhysRange, Size};

use crate::background::Home;
use crate::buddy::Pfn;
use crate::content::PAGE;
use crate::machine::{Machine, Src};
use crate::phys::Zone;

/// What kind of pool a [`PoolFree`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// A page-allocator zone (all its buddy areas together).
    Zone(Zone),
    /// A CMA region.
    Cma,
    /// A carveout.
    Carveout {
        /// Whether it is protected memory.
        protected: bool,
    },
}

/// Free memory in one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolFree {
    /// `DMA32`, `Normal`, or the CMA region's or carveout's name.
    pub name: String,
    /// What it is.
    pub kind: PoolKind,
    /// Bytes it manages.
    pub total: Size,
    /// Bytes free (for CMA: not pinned by buffers and not lent to borrowers).
    pub free: Size,
    /// The largest free buddy block (for a carveout: the longest free run).
    pub largest: Size,
}

/// Free memory per zone, CMA region and carveout. Compare a report taken at the start
/// with one taken after every buffer is released: `free` must match (see
/// [`FreeReport::same_free`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeReport {
    /// The pools: zones (Normal, DMA32), then CMA regions, then carveouts.
    pub pools: Vec<PoolFree>,
}

impl FreeReport {
    /// Total free bytes.
    pub fn free(&self) -> Size {
        Size::new(self.pools.iter().map(|p| p.free.bytes()).sum())
    }

    /// Whether every pool has the same free bytes as in `other`.
    pub fn same_free(&self, other: &FreeReport) -> bool {
        self.pools.len() == other.pools.len()
            && self.pools.iter().zip(&other.pools).all(|(a, b)| a.name == b.name && a.free == b.free)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolFree> {
        self.pools.iter().find(|p| p.name == name)
    }
}

impl fmt::Display for FreeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pools {
            let kind = match p.kind {
                PoolKind::Zone(_) => "zone",
                PoolKind::Cma => "CMA",
                PoolKind::Carveout { protected: true } => "protected carveout",
                PoolKind::Carveout { protected: false } => "carveout",
            };
            writeln!(
                f,
                "{kind:>18} {:<12} {:>12} free of {:>12}, largest {}",
                p.name,
                p.free.to_string(),
                p.total.to_string(),
                p.largest
            )?;
        }
        Ok(())
    }
}

/// A broken invariant, naming owners and addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// Two owners (buffers, background blocks, free lists) claim the same frames.
    #[error("frames {range} are held by {first} and by {second}")]
    DoubleOwner {
        /// The overlap.
        range: PhysRange,
        /// One owner.
        first: String,
        /// The other.
        second: String,
    },
    /// Managed frames that are neither free nor owned: leaked.
    #[error("frames {range} of {pool} are neither free nor owned (leaked)")]
    Lost {
        /// The frames.
        range: PhysRange,
        /// The pool they belong to.
        pool: String,
    },
    /// Frames held outside the pool their owner says they came from.
    #[error("{owner} holds frames {range} outside {pool}")]
    Stray {
        /// The owner.
        owner: String,
        /// The frames.
        range: PhysRange,
        /// The pool.
        pool: String,
    },
    /// A counter disagrees with the structure it summarises.
    #[error("{pool}: {what} is {recorded}, but the records add up to {counted}")]
    Accounting {
        /// The pool.
        pool: String,
        /// The counter.
        what: &'static str,
        /// Its value.
        recorded: u64,
        /// What the records say.
        counted: u64,
    },
    /// A device mapping whose buffer is gone, or whose IOVA range is inconsistent.
    #[error("mapping #{mapping} for device `{device}` of buffer `{buffer}`: {detail}")]
    Mapping {
        /// Mapping id.
        mapping: u64,
        /// Device.
        device: String,
        /// Buffer name.
        buffer: String,
        /// What is wrong.
        detail: String,
    },
    /// A programmer error seen by a call that could not return it (`free`, `unmap`).
    #[error("misuse: {0}")]
    Misuse(String),
}

/// Every broken invariant found by one [`Machine::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations(pub Vec<InvariantViolation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} invariant violation(s):", self.0.len())?;
        for v in &self.0 {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    FreeArea(usize),
    FreeCma(usize),
    FreeCarveout(usize),
    Buffer(usize),
    Background(Pfn),
}

fn range(lo: Pfn, hi: Pfn) -> PhysRange {
    PhysRange::new(PhysAddr::new(lo * PAGE), PhysAddr::new(hi * PAGE)).expect("non-empty frame range")
}

impl Machine {
    fn pool_name(&self, src: Src) -> String {
        match src {
            Src::Area(i) => format!("zone {} (bank `{}`)", self.areas[i].zone, self.areas[i].bank),
            Src::Cma(i) => format!("CMA region `{}`", self.cma[i].name),
            Src::Carveout(i) => format!("carveout `{}`", self.carveouts[i].name),
        }
    }

    fn owner_name(&self, o: Owner) -> String {
        match o {
            Owner::FreeArea(i) => format!("the free lists of {}", self.pool_name(Src::Area(i))),
            Owner::FreeCma(i) => format!("the free lists of {}", self.pool_name(Src::Cma(i))),
            Owner::FreeCarveout(i) => {
                format!("the free list of {}", self.pool_name(Src::Carveout(i)))
            }
            Owner::Buffer(slot) => match &self.slots[slot].record {
                Some(r) => format!("buffer `{}` (#{})", r.name, r.id),
                None => format!("freed buffer slot {slot}"),
            },
            Owner::Background(p) => match self.background.blocks.get(&p) {
                Some(b) => format!(
                    "a {} background block (order {}{})",
                    if b.movable { "movable" } else { "unmovable" },
                    b.order,
                    if matches!(b.home, Home::Cma(_)) { ", CMA borrower" } else { "" }
                ),
                None => "a background block".into(),
            },
        }
    }

    /// Free memory per zone, CMA region and carveout.
    pub fn free_report(&self) -> FreeReport {
        let mut pools = Vec::new();
        for zone in [Zone::Normal, Zone::Dma32, Zone::Dma] {
            let areas: Vec<_> = self.areas.iter().filter(|a| a.zone == zone).collect();
            if areas.is_empty() {
                continue;
            }
            let total = areas.iter().map(|a| a.area.pages()).sum::<u64>();
            let free = areas.iter().map(|a| a.area.free_pages()).sum::<u64>();
            let largest = areas.iter().filter_map(|a| a.area.largest_free_order()).max().map_or(0, |o| 1u64 << o);
            pools.push(PoolFree {
                name: zone.name().into(),
                kind: PoolKind::Zone(zone),
                total: Size::new(total * PAGE),
                free: Size::new(free * PAGE),
                largest: Size::new(largest * PAGE),
            });
        }
        for c in &self.cma {
            pools.push(PoolFree {
                name: c.name.clone(),
                kind: PoolKind::Cma,
                total: Size::new(c.area.pages() * PAGE),
                free: Size::new(c.area.free_pages() * PAGE),
                largest: Size::new(c.area.largest_free_order().map_or(0, |o| 1u64 << o) * PAGE),
            });
        }
        for c in &self.carveouts {
            pools.push(PoolFree {
                name: c.name.clone(),
                kind: PoolKind::Carveout { protected: c.protected },
                total: Size::new((c.end - c.start) * PAGE),
                free: Size::new(c.free_pages() * PAGE),
                largest: Size::new(c.largest_free() * PAGE),
            });
        }
        FreeReport { pools }
    }

    /// Free blocks per order (index = order, `0..=max_order`) in the page-allocator
    /// zones, CMA regions left out: what `/proc/buddyinfo` shows, summed over zones. The
    /// input of fragmentation indices such as the kernel's `unusable_index`.
    pub fn zone_free_blocks(&self) -> Vec<u64> {
        (0..=self.max_order).map(|k| self.areas.iter().map(|a| a.area.free_blocks_of(k)).sum()).collect()
    }

    /// Total free bytes: zones, CMA regions (not lent) and carveouts.
    pub fn free_bytes(&self) -> Size {
        let pages = self.areas.iter().map(|a| a.area.free_pages()).sum::<u64>()
            + self.cma.iter().map(|c| c.area.free_pages()).sum::<u64>()
            + self.carveouts.iter().map(|c| c.free_pages()).sum::<u64>();
        Size::new(pages * PAGE)
    }

    /// Checks every invariant: no frame held twice (buffers, background blocks including
    /// CMA borrowers, carveout allocations, free lists), no frame lost, counters agree
    /// with records, chunks come from the pool they say, CMA pins match buffers, mappings
    /// belong to live buffers, and no misuse was recorded. Cost: O(records log records).
    pub fn check(&self) -> Result<(), Violations> {
        let mut v = Vec::new();
        let mut held: Vec<(Pfn, Pfn, Owner)> = Vec::new();
        let mut pools: Vec<(Pfn, Pfn, Src)> = Vec::new();
        for (i, a) in self.areas.iter().enumerate() {
            pools.push((a.area.start(), a.area.end(), Src::Area(i)));
            let mut free = 0;
            for (p, k) in a.area.free_blocks() {
                held.push((p, p + (1 << k), Owner::FreeArea(i)));
                free += 1u64 << k;
            }
            if free != a.area.free_pages() {
                v.push(InvariantViolation::Accounting {
                    pool: self.pool_name(Src::Area(i)),
                    what: "free pages",
                    recorded: a.area.free_pages(),
                    counted: free,
                });
            }
        }
        for (i, c) in self.cma.iter().enumerate() {
            pools.push((c.start(), c.end(), Src::Cma(i)));
            let mut free = 0;
            for (p, k) in c.area.free_blocks() {
                held.push((p, p + (1 << k), Owner::FreeCma(i)));
                free += 1u64 << k;
            }
            if free != c.area.free_pages() {
                v.push(InvariantViolation::Accounting {
                    pool: self.pool_name(Src::Cma(i)),
                    what: "free pages",
                    recorded: c.area.free_pages(),
                    counted: free,
                });
            }
        }
        for (i, c) in self.carveouts.iter().enumerate() {
            pools.push((c.start, c.end, Src::Carveout(i)));
            let mut free = 0;
            for (s, e) in c.free.iter() {
                held.push((s, e, Owner::FreeCarveout(i)));
                free += e - s;
            }
            if free != c.free_pages() {
                v.push(InvariantViolation::Accounting {
                    pool: self.pool_name(Src::Carveout(i)),
                    what: "free pages",
                    recorded: c.free_pages(),
                    counted: free,
                });
            }
        }
        let mut pinned_seen = vec![0u64; self.cma.len()];
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(r) = &s.record else { continue };
            for c in &r.chunks {
                held.push((c.pfn, c.pfn + c.pages, Owner::Buffer(slot)));
                let (lo, hi) = match c.src {
                    Src::Area(i) => (self.areas[i].area.start(), self.areas[i].area.end()),
                    Src::Cma(i) => {
                        pinned_seen[i] += 1;
                        if self.cma[i].pinned.get(&c.pfn) != Some(&c.pages) {
                            v.push(InvariantViolation::Accounting {
                                pool: self.pool_name(c.src),
                                what: "pinned pages at this chunk",
                                recorded: self.cma[i].pinned.get(&c.pfn).copied().unwrap_or(0),
                                counted: c.pages,
                            });
                        }
                        (self.cma[i].start(), self.cma[i].end())
                    }
                    Src::Carveout(i) => (self.carveouts[i].start, self.carveouts[i].end),
                };
                if c.pfn < lo || c.pfn + c.pages > hi {
                    v.push(InvariantViolation::Stray {
                        owner: self.owner_name(Owner::Buffer(slot)),
                        range: c.range(),
                        pool: self.pool_name(c.src),
                    });
                }
            }
        }
        for (i, c) in self.cma.iter().enumerate() {
            if pinned_seen[i] != c.pinned.len() as u64 {
                v.push(InvariantViolation::Accounting {
                    pool: self.pool_name(Src::Cma(i)),
                    what: "pinned ranges",
                    recorded: c.pinned.len() as u64,
                    counted: pinned_seen[i],
                });
            }
        }
        let mut bg_pages = 0;
        for (&p, b) in &self.background.blocks {
            held.push((p, p + (1 << b.order), Owner::Background(p)));
            bg_pages += 1u64 << b.order;
            let src = match b.home {
                Home::Area(i) => Src::Area(i),
                Home::Cma(i) => Src::Cma(i),
            };
            let (lo, hi) = match src {
                Src::Area(i) => (self.areas[i].area.start(), self.areas[i].area.end()),
                Src::Cma(i) => (self.cma[i].start(), self.cma[i].end()),
                Src::Carveout(_) => unreachable!("background never uses carveouts"),
            };
            if p < lo || p + (1 << b.order) > hi {
                v.push(InvariantViolation::Stray {
                    owner: self.owner_name(Owner::Background(p)),
                    range: range(p, p + (1 << b.order)),
                    pool: self.pool_name(src),
                });
            }
            if self.background.live.get(b.slot) != Some(&p) {
                v.push(InvariantViolation::Accounting {
                    pool: "background load".into(),
                    what: "live-list slot",
                    recorded: b.slot as u64,
                    counted: p,
                });
            }
        }
        if bg_pages != self.background.used_pages || self.background.live.len() != self.background.blocks.len() {
            v.push(InvariantViolation::Accounting {
                pool: "background load".into(),
                what: "pages held",
                recorded: self.background.used_pages,
                counted: bg_pages,
            });
        }
        // No frame held twice.
        held.sort_unstable_by_key(|h| (h.0, h.1));
        let mut last: Option<(Pfn, Pfn, Owner)> = None;
        for &h in &held {
            if let Some(l) = last {
                if h.0 < l.1 {
                    v.push(InvariantViolation::DoubleOwner {
                        range: range(h.0, h.1.min(l.1)),
                        first: self.owner_name(l.2),
                        second: self.owner_name(h.2),
                    });
                }
                if h.1 <= l.1 {
                    continue;
                }
            }
            last = Some(h);
        }
        // No frame lost: the held frames cover every pool exactly.
        pools.sort_unstable_by_key(|p| p.0);
        let mut hi_iter = held.iter().peekable();
        for &(plo, phi, src) in &pools {
            let mut cur = plo;
            while let Some(&&(s, e, _)) = hi_iter.peek() {
                if s >= phi {
                    break;
                }
                if s > cur {
                    v.push(InvariantViolation::Lost { range: range(cur, s), pool: self.pool_name(src) });
                }
                cur = cur.max(e);
                hi_iter.next();
            }
            if cur < phi {
                v.push(InvariantViolation::Lost { range: range(cur, phi), pool: self.pool_name(src) });
            }
        }
        // Mappings.
        for (&id, m) in &self.mappings {
            let live = self.slots.iter().any(|s| s.record.as_ref().is_some_and(|r| r.id == m.buffer));
            if !live {
                v.push(InvariantViolation::Mapping {
                    mapping: id,
                    device: m.device.clone(),
                    buffer: m.buffer_name.clone(),
                    detail: "its buffer was freed while mapped".into(),
                });
            }
            if let Some((iova, len)) = m.iova {
                let ok = self.domains.get(&m.device).is_some_and(|d| {
                    d.live.get(&iova) == Some(&len) && d.iova.free_ranges().all(|(s, e)| e <= iova || s >= iova + len)
                });
                if !ok {
                    v.push(InvariantViolation::Mapping {
                        mapping: id,
                        device: m.device.clone(),
                        buffer: m.buffer_name.clone(),
                        detail: format!("IOVA {iova:#x}+{len:#x} is not allocated in the domain"),
                    });
                }
            }
        }
        for (dev, d) in &self.domains {
            let n = self.mappings.values().filter(|m| &m.device == dev && m.iova.is_some()).count();
            if n != d.live.len() {
                v.push(InvariantViolation::Accounting {
                    pool: format!("IOMMU {} domain of `{dev}`", d.iommu),
                    what: "live IOVA ranges",
                    recorded: d.live.len() as u64,
                    counted: n as u64,
                });
            }
        }
        v.extend(self.warnings.iter().cloned().map(InvariantViolation::Misuse));
        if v.is_empty() { Ok(()) } else { Err(Violations(v)) }
    }
}

#[cfg(test)]
mod tests {
    use dmaplace_core::units::Size;
    use dmaplace_core::{BufferDesc, Request, Usage, solve};

    use super::*;
    use crate::background::BgBlock;
    use crate::{SimConfig, SyntheticPlatform};

    fn machine_with_buffer() -> (Machine, crate::SimBacking) {
        let p = SyntheticPlatform::new(Size::mib(64)).build();
        let plan = solve(
            &p,
            &BufferDesc::Size(Size::mib(1)),
            &[Request { device: p.device("cpu").unwrap(), hints: Usage::RENDERING }],
        )
        .unwrap();
        let mut m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
        let b = m.allocate_plan(&plan, "victim").unwrap();
        m.check().unwrap();
        (m, b)
    }

    #[test]
    fn detects_a_frame_held_twice() {
        let (mut m, b) = machine_with_buffer();
        let pfn = m.record(&b).unwrap().chunks[0].pfn;
        // A background block on top of the buffer's first frame.
        m.background.blocks.insert(pfn, BgBlock { order: 0, movable: true, tag: 0, home: Home::Area(0), slot: 0 });
        m.background.live.push(pfn);
        m.background.used_pages += 1;
        let err = m.check().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("frames {} are held by", range(pfn, pfn + 1))), "{text}");
        assert!(
            text.contains("buffer `victim` (#1)") && text.contains("a movable background block (order 0)"),
            "{text}"
        );
    }

    #[test]
    fn detects_a_leak() {
        let (mut m, _b) = machine_with_buffer();
        // Take a block off the free lists without recording an owner.
        let got = m.areas[0].area.alloc(0, 0, u64::MAX).unwrap();
        let err = m.check().unwrap_err();
        assert!(matches!(err.0[0], InvariantViolation::Lost { .. }), "{err}");
        assert!(err.to_string().contains("neither free nor owned"), "{err}");
        assert!(err.to_string().contains(&PhysAddr::new(got * PAGE).to_string()), "{err}");
    }
}

/// Who holds a range of physical memory, for memory maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A buffer placed by [`Machine::allocate`], by name.
    Buffer(String),
    /// The background load ("other users"); movable blocks can be migrated out of CMA.
    Background {
        /// Whether the block is movable.
        movable: bool,
    },
}

impl Machine {
    /// Every held range of physical memory and who holds it, sorted by address.
    pub fn occupancy(&self) -> Vec<(PhysRange, Holder)> {
        let mut out: Vec<(PhysRange, Holder)> = Vec::new();
        for s in &self.slots {
            let Some(r) = &s.record else { continue };
            for c in &r.chunks {
                out.push((range(c.pfn, c.pfn + c.pages), Holder::Buffer(r.name.clone())));
            }
        }
        for (&p, b) in &self.background.blocks {
            out.push((range(p, p + (1 << b.order)), Holder::Background { movable: b.movable }));
        }
        out.sort_by_key(|(r, _)| r.start());
        out
    }
}
