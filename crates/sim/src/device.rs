//! Device-facing operations: mapping (IOMMU page tables or direct sg tables), CPU cache
//! maintenance, content access, IOTLB replay, and the [`Backend`] implementation.

use dmaplace_core::backend::{Backend, ByteCopy, CpuAccess, SgEntry, SgTable};
use dmaplace_core::iommu::{self, PteCounts};
use dmaplace_core::units::{DmaAddr, PhysRange, Size};
use dmaplace_core::{Backing, BoundaryMask, CacheMode, Effective, Plan};

use crate::content::PAGE;
use crate::error::SimError;
use crate::iommu::{
    AccessPattern, Domain, Iotlb, IotlbStats, PteRun, domain_space, iova_align, page_runs, replay, space_size,
};
use crate::machine::{Machine, MapRecord, SimBacking};

/// A device mapping: IOMMU page tables, or the physical sg table of a device without one.
#[derive(Debug, PartialEq, Eq)]
pub struct SimMapping {
    machine: u32,
    id: u64,
    device: String,
    buffer: u64,
    len: Size,
    iommu: Option<IommuMapping>,
}

/// What an IOMMU mapping wrote into the device's page tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuMapping {
    /// The IOMMU's name.
    pub iommu: String,
    /// The first IOVA (aligned to the largest page size no longer than the buffer).
    pub iova: DmaAddr,
    /// Bytes mapped.
    pub len: Size,
    /// Entries by page size.
    pub ptes: PteCounts,
    /// The entries, as runs of one page size, in IOVA order.
    pub runs: Vec<PteRun>,
}

impl SimMapping {
    /// The device it is for.
    pub fn device(&self) -> &str {
        &self.device
    }
    /// The mapped buffer's id ([`SimBacking::id`]).
    pub fn buffer(&self) -> u64 {
        self.buffer
    }
    /// Bytes mapped.
    pub fn len(&self) -> Size {
        self.len
    }
    /// Whether nothing is mapped (never: buffers are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len.is_zero()
    }
    /// The IOMMU side, for a device behind one.
    pub fn iommu(&self) -> Option<&IommuMapping> {
        self.iommu.as_ref()
    }
    /// Page-table entries used (empty without an IOMMU).
    pub fn ptes(&self) -> PteCounts {
        self.iommu.as_ref().map(|m| m.ptes.clone()).unwrap_or_default()
    }
    /// Replays `pattern` through `tlb`; without an IOMMU nothing is translated and
    /// nothing misses.
    pub fn replay(&self, pattern: AccessPattern, tlb: &mut Iotlb) -> Result<IotlbStats, SimError> {
        let spans = pattern.spans(self.len.bytes()).map_err(|reason| SimError::Pattern {
            pattern: pattern.to_string(),
            buffer: format!("#{}", self.buffer),
            len: self.len,
            reason,
        })?;
        let burst = pattern.burst();
        match &self.iommu {
            Some(m) => Ok(replay(&m.runs, m.iova.get(), &spans, burst, tlb)),
            None => Ok(IotlbStats { accesses: spans.iter().map(|s| s.1.div_ceil(burst)).sum(), lookups: 0, misses: 0 }),
        }
    }
}

/// Physically adjacent runs split at `cap` bytes and at boundary windows, as a direct
/// (no IOMMU) `dma_map_sg` presents them; matches [`dmaplace_core::verify::sg_entries`].
fn split_runs(runs: &[PhysRange], cap: Option<Size>, boundary: BoundaryMask) -> Vec<SgEntry> {
    let cap = cap.map_or(u64::MAX, Size::bytes).max(1);
    let mut out = Vec::new();
    for r in runs {
        let (mut start, end) = (r.start().get(), r.end().get());
        while start < end {
            let boundary_end = (start | boundary.get()).saturating_add(1);
            let piece_end = end.min(start.saturating_add(cap)).min(boundary_end.max(start + 1));
            out.push(SgEntry { dma_addr: DmaAddr::new(start), len: Size::new(piece_end - start) });
            start = piece_end;
        }
    }
    out
}

fn subtract(total: &mut PteCounts, gone: &PteCounts) {
    for (p, n) in &gone.by_size {
        if let Some((_, c)) = total.by_size.iter_mut().find(|(s, _)| s == p) {
            *c = c.saturating_sub(*n);
        }
    }
    total.by_size.retain(|(_, n)| *n > 0);
}

impl Machine {
    /// Maps `b` for `device` (`dma_map_sgtable`). Behind an IOMMU: one IOVA range aligned
    /// to the largest page size that fits, each physical run mapped with the largest
    /// pages its alignment allows, one sg entry. Without: physical runs split at the
    /// device's `max_segment_size` and boundary. Fails when the device cannot reach a
    /// segment, or needs more sg entries than it allows.
    pub fn map_for(&mut self, device: &Effective, b: &SimBacking) -> Result<(SimMapping, SgTable), SimError> {
        let rec = self.record(b)?;
        let backing = rec.backing();
        let name = rec.name.clone();
        let id = rec.id;
        for s in &backing.segments {
            if !device.reach.value.contains_range(*s) {
                return Err(SimError::Unreachable {
                    device: device.device.clone(),
                    buffer: name,
                    segment: *s,
                    reach: format!("{} ({})", device.reach.value, device.reach.why),
                });
            }
        }
        let runs = backing.runs();
        let len = backing.len();
        let (iommu, table) = match &device.iommu {
            Some(mmu) => {
                let granule = mmu.granule();
                if let Some(bad) = runs.iter().find(|r| !r.start().is_aligned(granule) || !r.len().is_aligned(granule))
                {
                    return Err(SimError::IommuAlignment {
                        device: device.device.clone(),
                        buffer: name,
                        iommu: mmu.name.to_string(),
                        segment: *bad,
                        granule: granule.size(),
                    });
                }
                let space = device.iova_space.unwrap_or(mmu.iova_bits);
                let domain = self.domains.entry(device.device.clone()).or_insert_with(|| Domain {
                    iommu: mmu.name.clone(),
                    iova: domain_space(mmu.pgsize_bitmap, space),
                    ptes: PteCounts::default(),
                    live: Default::default(),
                });
                let pgs = mmu.pgsize_bitmap;
                let align = iova_align(pgs, len.bytes()).max(granule.get());
                let (s0, e0) = domain.iova.space();
                let Some(iova) = domain.iova.alloc(len.bytes(), align) else {
                    return Err(SimError::IovaExhausted {
                        device: device.device.clone(),
                        size: len,
                        align: Size::new(align),
                        space: space_size(s0, e0),
                    });
                };
                let mut ptes = PteCounts::default();
                let mut pte_runs = Vec::new();
                let mut off = 0u64;
                for r in &runs {
                    let (v, p, n) = (iova + off, r.start().get(), r.len().bytes());
                    let counts = iommu::map_entries(pgs, v, p, n).expect("runs are granule-aligned");
                    let mine = page_runs(pgs, v, p, n).expect("runs are granule-aligned");
                    debug_assert_eq!(mine.iter().map(|r| r.count).sum::<u64>(), counts.total());
                    ptes.merge(&counts);
                    pte_runs.extend(mine);
                    off += n;
                }
                domain.ptes.merge(&ptes);
                domain.live.insert(iova, len.bytes());
                let table = SgTable { entries: vec![SgEntry { dma_addr: DmaAddr::new(iova), len }] };
                (
                    Some(IommuMapping {
                        iommu: mmu.name.to_string(),
                        iova: DmaAddr::new(iova),
                        len,
                        ptes,
                        runs: pte_runs,
                    }),
                    table,
                )
            }
            None => {
                let entries = split_runs(&runs, device.max_segment_size.value, device.segment_boundary.value);
                if let Some(max) = device.max_segments.value
                    && entries.len() as u64 > u64::from(max.get())
                {
                    return Err(SimError::SegmentLimit {
                        device: device.device.clone(),
                        buffer: name,
                        needed: entries.len() as u64,
                        max: max.get(),
                    });
                }
                (None, SgTable { entries })
            }
        };
        let mid = self.next_mapping;
        self.next_mapping += 1;
        self.mappings.insert(
            mid,
            MapRecord {
                device: device.device.clone(),
                buffer: id,
                buffer_name: name,
                iova: iommu.as_ref().map(|m| (m.iova.get(), m.len.bytes())),
            },
        );
        self.counters.maps += 1;
        Ok((SimMapping { machine: self.id, id: mid, device: device.device.clone(), buffer: id, len, iommu }, table))
    }

    /// Undoes [`Machine::map_for`].
    pub fn unmap_for(&mut self, device: &Effective, m: SimMapping) -> Result<(), SimError> {
        let stale = SimError::StaleHandle { what: "mapping", id: m.id };
        if m.machine != self.id || m.device != device.device {
            return Err(stale);
        }
        self.mappings.remove(&m.id).ok_or(stale)?;
        if let Some(im) = &m.iommu
            && let Some(d) = self.domains.get_mut(&m.device)
        {
            d.iova.release(im.iova.get(), im.len.bytes());
            d.live.remove(&im.iova.get());
            subtract(&mut d.ptes, &im.ptes);
        }
        self.counters.unmaps += 1;
        Ok(())
    }

    /// Page-table entries currently mapped in `device`'s IOMMU domain.
    pub fn domain_ptes(&self, device: &str) -> PteCounts {
        self.domains.get(device).map(|d| d.ptes.clone()).unwrap_or_default()
    }

    /// Replays `pattern` over `m` through a cold IOTLB of `iotlb_entries` entries.
    pub fn replay(&self, m: &SimMapping, pattern: AccessPattern) -> Result<IotlbStats, SimError> {
        if m.machine != self.id || !self.mappings.contains_key(&m.id) {
            return Err(SimError::StaleHandle { what: "mapping", id: m.id });
        }
        m.replay(pattern, &mut Iotlb::new(self.config.iotlb_entries))
    }

    /// CPU access begins or ends. Counts cache maintenance, one operation per physical
    /// run per non-coherent device, for cached buffers: begin-read invalidates,
    /// begin-write cleans, begin-read-write does both; every end cleans (as arm64's
    /// `arch_sync_dma_for_device` does). Coherent devices need nothing. Write-combined
    /// and uncached buffers need no cache maintenance; a write-combined buffer gets one
    /// write-combine buffer flush at the end of a write. Returns the operations counted.
    pub fn sync_for_cpu(
        &mut self,
        b: &SimBacking,
        devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, SimError> {
        let rec = self.record(b)?;
        let writes = matches!(access, CpuAccess::Write | CpuAccess::ReadWrite);
        match rec.cache_mode {
            CacheMode::Cached => {
                let runs = rec.backing().runs().len() as u64;
                let noncoherent = devices.iter().filter(|d| !d.coherent).count() as u64;
                let per = runs * noncoherent;
                let (clean, inval) = match (begin, access) {
                    (true, CpuAccess::Read) => (0, per),
                    (true, CpuAccess::Write) => (per, 0),
                    (true, CpuAccess::ReadWrite) => (per, per),
                    (false, _) => (per, 0),
                };
                self.counters.cache_cleans += clean;
                self.counters.cache_invalidates += inval;
                Ok(clean + inval)
            }
            CacheMode::WriteCombined if !begin && writes => {
                self.counters.wc_flushes += 1;
                Ok(1)
            }
            CacheMode::WriteCombined | CacheMode::Uncached => Ok(0),
        }
    }

    /// Copies `from`'s content into `to` (at least as large). Returns the bytes copied.
    pub fn copy_content(&mut self, from: &SimBacking, to: &SimBacking) -> Result<Size, SimError> {
        let len = self.record(from)?.size;
        self.copy_prefix(from, to, len)
    }

    /// Copies the first `len` bytes of `from` into `to`, frame by frame.
    pub fn copy_prefix(&mut self, from: &SimBacking, to: &SimBacking, len: Size) -> Result<Size, SimError> {
        let (f, t) = (self.record(from)?, self.record(to)?);
        if t.size < len || f.size < len {
            return Err(SimError::CopyTooSmall {
                from: f.name.clone(),
                from_size: f.size,
                to: t.name.clone(),
                to_size: t.size,
            });
        }
        let (fr, tr) = (f.runs(), t.runs());
        let size = len;
        self.content.copy(&fr, &tr, size.bytes().div_ceil(PAGE));
        self.counters.copies += 1;
        self.counters.bytes_copied += size.bytes();
        Ok(size)
    }

    fn bounds(&self, b: &SimBacking, offset: u64, len: u64) -> Result<Vec<(u64, u64)>, SimError> {
        let rec = self.record(b)?;
        let end = dmaplace_core::units::add("offset", offset, "len", len)?;
        if end > rec.size.bytes() {
            return Err(SimError::OutOfBounds { buffer: rec.name.clone(), offset, len, size: rec.size });
        }
        Ok(rec.runs())
    }

    /// Writes `data` at `offset` into the buffer.
    pub fn write(&mut self, b: &SimBacking, offset: u64, data: &[u8]) -> Result<(), SimError> {
        let runs = self.bounds(b, offset, data.len() as u64)?;
        self.content.write(&runs, offset, data);
        Ok(())
    }

    /// Reads `len` bytes at `offset` (needs [`crate::ContentMode::Bytes`]).
    pub fn read(&self, b: &SimBacking, offset: u64, len: usize) -> Result<Vec<u8>, SimError> {
        let runs = self.bounds(b, offset, len as u64)?;
        self.content
            .read(&runs, offset, len)
            .ok_or_else(|| SimError::NoBytes { buffer: self.record(b).map(|r| r.name.clone()).unwrap_or_default() })
    }

    /// Fills the whole buffer with a pattern derived from `seed` (cheap in checksum mode).
    pub fn fill(&mut self, b: &SimBacking, seed: u64) -> Result<(), SimError> {
        let runs = self.record(b)?.runs();
        self.content.fill(&runs, seed);
        Ok(())
    }

    /// A digest of the buffer's content in buffer order, independent of where its frames
    /// are: equal before and after a migration that preserved the content.
    pub fn checksum(&self, b: &SimBacking) -> Result<u64, SimError> {
        Ok(self.content.checksum(&self.record(b)?.runs()))
    }

    /// The digest of the first `len` bytes (rounded up to whole frames).
    pub fn checksum_prefix(&self, b: &SimBacking, len: Size) -> Result<u64, SimError> {
        let mut frames = len.bytes().div_ceil(crate::content::PAGE);
        let runs: Vec<(u64, u64)> = self
            .record(b)?
            .runs()
            .into_iter()
            .map_while(|(pfn, n)| {
                let take = n.min(frames);
                frames -= take;
                (take > 0).then_some((pfn, take))
            })
            .collect();
        Ok(self.content.checksum(&runs))
    }

    /// Whether the machine keeps real bytes.
    pub fn keeps_bytes(&self) -> bool {
        self.content.mode() == crate::content::Mode::Bytes
    }

    /// Frames holding written content (host memory in use for content).
    pub fn content_frames(&self) -> usize {
        self.content.frames_held()
    }
}

/// The machine places memory for the exporter. `free` and `unmap` cannot fail through
/// the trait: a stale handle is recorded and reported by [`Machine::check`].
impl Backend for Machine {
    type Backing = SimBacking;
    type Mapping = SimMapping;
    type Error = SimError;

    fn allocate(&mut self, plan: &Plan, name: &str) -> Result<SimBacking, SimError> {
        self.allocate_plan(plan, name)
    }

    fn describe(&self, backing: &SimBacking) -> Result<Backing, SimError> {
        self.backing(backing)
    }

    fn copy(&mut self, from: &SimBacking, to: &SimBacking, len: Size) -> Result<Size, SimError> {
        self.copy_prefix(from, to, len)
    }

    fn free(&mut self, backing: SimBacking) {
        if let Err(e) = self.release(backing) {
            self.warnings.push(format!("free: {e}"));
        }
    }

    fn map(&mut self, device: &Effective, backing: &SimBacking) -> Result<(SimMapping, SgTable), SimError> {
        self.map_for(device, backing)
    }

    fn unmap(&mut self, device: &Effective, mapping: SimMapping) {
        if let Err(e) = self.unmap_for(device, mapping) {
            self.warnings.push(format!("unmap: {e}"));
        }
    }

    fn fill(&mut self, backing: &SimBacking, seed: u64) -> Result<(), SimError> {
        Machine::fill(self, backing, seed)
    }

    fn checksum(&self, backing: &SimBacking, len: Size) -> Result<u64, SimError> {
        Machine::checksum_prefix(self, backing, len)
    }

    fn cpu_sync(
        &mut self,
        backing: &SimBacking,
        devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, SimError> {
        self.sync_for_cpu(backing, devices, access, begin)
    }
}

/// Byte ranges for re-layout moves; needs [`crate::ContentMode::Bytes`] (in checksum mode
/// the machine keeps one digest per frame, not bytes, and says so).
impl ByteCopy for Machine {
    fn copy_range(
        &mut self,
        from: &SimBacking,
        from_offset: u64,
        to: &SimBacking,
        to_offset: u64,
        len: u64,
    ) -> Result<(), SimError> {
        let len_usize = usize::try_from(len).map_err(|_| SimError::OutOfBounds {
            buffer: self.record(from).map(|r| r.name.clone()).unwrap_or_default(),
            offset: from_offset,
            len,
            size: self.record(from).map(|r| r.size).unwrap_or(Size::ZERO),
        })?;
        let bytes = self.read(from, from_offset, len_usize)?;
        self.write(to, to_offset, &bytes)?;
        self.counters.bytes_copied += len;
        Ok(())
    }

    fn digest_range(&self, backing: &SimBacking, offset: u64, len: u64) -> Result<u64, SimError> {
        let len_usize = usize::try_from(len).map_err(|_| SimError::OutOfBounds {
            buffer: self.record(backing).map(|r| r.name.clone()).unwrap_or_default(),
            offset,
            len,
            size: self.record(backing).map(|r| r.size).unwrap_or(Size::ZERO),
        })?;
        Ok(crate::content::hash_bytes(0, &self.read(backing, offset, len_usize)?))
    }
}
