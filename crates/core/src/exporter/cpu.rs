//! CPU access (`DMA_BUF_IOCTL_SYNC` semantics): cache maintenance for the mapped devices,
//! and a pending move that waited for the CPU runs when it ends.

use super::error::{Result, backend_err};
use super::*;

impl<B: Backend> Exporter<B> {
    /// CPU access begins (`DMA_BUF_IOCTL_SYNC` with `DMA_BUF_SYNC_START`). Allocates if no
    /// device has mapped yet. Returns the cache maintenance operations performed.
    pub fn begin_cpu_access(&mut self, buffer: BufferId, access: CpuAccess) -> Result<u64> {
        if self.buffer(buffer)?.cpu_access.is_some() {
            return Err(ExportError::CpuAccess { buffer, what: "CPU access already began" });
        }
        if self.buffer(buffer)?.backing.is_none() {
            self.allocate(buffer, None)?;
        }
        let ops = self.cpu_sync(buffer, access, true)?;
        self.buffers.get_mut(&buffer).expect("exists").cpu_access = Some(access);
        Ok(ops)
    }
    /// CPU access ends (`DMA_BUF_SYNC_END`).
    pub fn end_cpu_access(&mut self, buffer: BufferId) -> Result<u64> {
        let access =
            self.buffer(buffer)?.cpu_access.ok_or(ExportError::CpuAccess { buffer, what: "no CPU access to end" })?;
        let ops = self.cpu_sync(buffer, access, false)?;
        self.buffers.get_mut(&buffer).expect("exists").cpu_access = None;
        if self.buffer(buffer)?.pending_move.is_some() {
            self.settle_after(buffer);
        }
        Ok(ops)
    }
    pub(super) fn cpu_sync(&mut self, buffer: BufferId, access: CpuAccess, begin: bool) -> Result<u64> {
        let buf = self.buffers.get(&buffer).ok_or(ExportError::NoBuffer(buffer))?;
        let refs: Vec<&Effective> = buf
            .attachments
            .iter()
            .filter_map(|a| self.attachments.get(a))
            .filter(|a| !a.mappings.is_empty())
            .map(|a| &a.effective)
            .collect();
        let backing = buf.backing.as_ref().expect("CPU access needs a backing");
        let ops = self.backend.cpu_sync(backing, &refs, access, begin).map_err(backend_err)?;
        self.stats.maintenance_ops += ops;
        self.events.push(Event::CpuAccess { buffer, access, begin, maintenance_ops: ops });
        Ok(ops)
    }
}
