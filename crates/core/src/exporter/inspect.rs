//! Queries for reports and tests, and the exporter's invariant check.

use super::error::Result;
use super::*;
use crate::verify::verify;

impl<B: Backend> Exporter<B> {
    /// The plan the buffer's backing was placed for, if allocated.
    pub fn plan(&self, buffer: BufferId) -> Result<Option<&Plan>> {
        Ok(self.buffer(buffer)?.plan.as_ref())
    }
    /// The buffer's backing, if allocated.
    pub fn backing(&self, buffer: BufferId) -> Result<Option<&B::Backing>> {
        Ok(self.buffer(buffer)?.backing.as_ref())
    }
    /// The backend's handle of a mapping (its IOMMU page tables, for counters); `None` once
    /// a move tore it down.
    pub fn backend_mapping(&self, mapping: MappingId) -> Result<Option<&B::Mapping>> {
        Ok(self.mapping(mapping)?.inner.as_ref())
    }
    /// How many times the buffer has moved.
    pub fn generation(&self, buffer: BufferId) -> Result<u32> {
        Ok(self.buffer(buffer)?.generation)
    }
    /// The live buffers.
    pub fn buffers(&self) -> impl Iterator<Item = BufferId> + '_ {
        self.buffers.keys().copied()
    }
    /// The buffer's name.
    pub fn name(&self, buffer: BufferId) -> Result<&str> {
        Ok(&self.buffer(buffer)?.name)
    }
    /// The buffer's attachments, in attach order.
    pub fn attachments_of(&self, buffer: BufferId) -> Result<&[AttachmentId]> {
        Ok(&self.buffer(buffer)?.attachments)
    }
    /// An attachment's mappings, live and stale, in map order.
    pub fn mappings_of(&self, attachment: AttachmentId) -> Result<&[MappingId]> {
        Ok(&self.attachment(attachment)?.mappings)
    }
    /// The device of an attachment.
    pub fn device_of(&self, attachment: AttachmentId) -> Result<&str> {
        Ok(&self.attachment(attachment)?.device.name)
    }
    /// Checks the exporter's invariants: every backing passes `verify` for every attached
    /// device (whose plan is the solve over all attachments), and no live mapping belongs
    /// to an older generation of its buffer.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, buf) in &self.buffers {
            if let (Some(backing), Some(plan)) = (&buf.backing, &buf.plan) {
                let described = self.backend.describe(backing).map_err(|e| format!("{id}: describe: {e}"))?;
                if buf.pending_move.is_none() {
                    let devices = self.attached_devices(buf);
                    if !devices.is_empty() {
                        let fresh = self
                            .solve_committed(*id, &devices)
                            .map_err(|e| format!("{id}: attached set no longer solves: {e}"))?;
                        verify(&fresh, &fresh.devices, &described).map_err(|v| format!("{id} ({}): {v}", buf.name))?;
                    }
                }
                verify(plan, &plan.devices, &described)
                    .map_err(|v| format!("{id} ({}): stored plan: {v}", buf.name))?;
                if plan.layout.as_ref().map(|l| &l.layout) != buf.layout.as_ref() {
                    return Err(format!("{id} ({}): the plan's layout is not the committed one", buf.name));
                }
            }
            for a in &buf.attachments {
                let att = self.attachments.get(a).ok_or_else(|| format!("{id} lists missing {a}"))?;
                for m in &att.mappings {
                    let map = self.mappings.get(m).ok_or_else(|| format!("{a} lists missing {m}"))?;
                    if map.inner.is_some() && map.generation != buf.generation {
                        return Err(format!(
                            "{m} of {id} is live but was made for generation {} (now {})",
                            map.generation, buf.generation
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
