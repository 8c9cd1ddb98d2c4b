//! The narrow trait between the exporter state machine and whatever places memory:
//! the simulated machine, the Linux dma-heap/udmabuf/memfd backends, the daemon.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::effective::Effective;
use crate::solver::Plan;
use crate::units::{DmaAddr, Size};
use crate::verify::Backing;

/// One entry of a device's scatter-gather table: an address as the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgEntry {
    /// `sg_dma_address()`: an IOVA behind an IOMMU, else the bus/physical address.
    pub dma_addr: DmaAddr,
    /// `sg_dma_len()`.
    pub len: Size,
}

/// A device's view of a mapped buffer (`struct sg_table` after `dma_map_sgtable`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgTable {
    /// The entries, in buffer order.
    pub entries: Vec<SgEntry>,
}

impl SgTable {
    /// Total mapped bytes.
    pub fn len(&self) -> Size {
        Size::new(self.entries.iter().map(|e| e.len.bytes()).sum())
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for SgTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}+{}", e.dma_addr, e.len)?;
        }
        Ok(())
    }
}

/// Direction of CPU access, as `DMA_BUF_SYNC_READ`/`WRITE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuAccess {
    /// The CPU reads.
    Read,
    /// The CPU writes.
    Write,
    /// Both.
    ReadWrite,
}

/// What places memory for the exporter.
///
/// The exporter decides *when* (first map, migration) and *what* (the [`Plan`]); the
/// backend decides *where*, and owns the memory it hands out. A backing must be returned
/// with [`Backend::free`]; the exporter never drops one silently.
pub trait Backend {
    /// A placed backing, owned by the backend's caller until freed.
    type Backing: fmt::Debug;
    /// A device mapping (IOMMU page tables, sg table), owned likewise.
    type Mapping: fmt::Debug;
    /// What can go wrong.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Allocates `plan.size` bytes meeting every hard requirement of `plan`, following its
    /// preferences where it can. `name` labels the buffer in reports.
    fn allocate(&mut self, plan: &Plan, name: &str) -> Result<Self::Backing, Self::Error>;

    /// Where the backing is: its physical segments, cache mode and protection (what
    /// [`crate::verify`] checks).
    fn describe(&self, backing: &Self::Backing) -> Result<Backing, Self::Error>;

    /// Copies the first `len` bytes of `from` into `to` (migration; `len` is a multiple of
    /// 4 KiB and fits both). Returns the bytes copied.
    fn copy(&mut self, from: &Self::Backing, to: &Self::Backing, len: Size) -> Result<Size, Self::Error>;

    /// Returns the memory.
    fn free(&mut self, backing: Self::Backing);

    /// Maps the backing for `device` and returns its sg table (`dma_map_sgtable`).
    fn map(&mut self, device: &Effective, backing: &Self::Backing) -> Result<(Self::Mapping, SgTable), Self::Error>;

    /// Undoes [`Backend::map`].
    fn unmap(&mut self, device: &Effective, mapping: Self::Mapping);

    /// Writes a deterministic pattern derived from `seed` over the whole backing (what a
    /// device's DMA write or a CPU fill would leave there).
    fn fill(&mut self, backing: &Self::Backing, seed: u64) -> Result<(), Self::Error>;

    /// A digest of the first `len` bytes of the backing (a multiple of 4 KiB), to prove a
    /// migration preserved them. The digest does not depend on where the pages are.
    fn checksum(&self, backing: &Self::Backing, len: Size) -> Result<u64, Self::Error>;

    /// CPU access begins (`DMA_BUF_IOCTL_SYNC` start) or ends; `devices` are the mapped
    /// attachments. Returns the number of cache-maintenance operations performed.
    fn cpu_sync(
        &mut self,
        backing: &Self::Backing,
        devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, Self::Error>;
}

/// Byte ranges of a backing, for the one move that changes the layout: an explicit LINEAR
/// re-layout copies the image row by row into new pitches and offsets and proves each
/// plane arrived ([`crate::exporter::Exporter::attach_relayout`]). A backend without it
/// offers no re-layout; late attachers the committed layout does not meet are refused.
pub trait ByteCopy: Backend {
    /// Copies `len` bytes at `from_offset` of `from` to `to_offset` of `to`.
    fn copy_range(
        &mut self,
        from: &Self::Backing,
        from_offset: u64,
        to: &Self::Backing,
        to_offset: u64,
        len: u64,
    ) -> Result<(), Self::Error>;

    /// A digest of the `len` bytes at `offset`: equal for equal bytes, wherever they lie.
    fn digest_range(&self, backing: &Self::Backing, offset: u64, len: u64) -> Result<u64, Self::Error>;
}
