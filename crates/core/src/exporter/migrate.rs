//! Placing memory: the first allocation, moves for late attachers (copy, checksum,
//! tear down old mappings, `move_notify`), and settling a buffer after its attachments change.

use super::error::{Result, backend_err};
use super::*;
use crate::units::PhysRange;
use crate::verify::verify;

impl<B: Backend> Exporter<B> {
    pub(super) fn allocate(&mut self, buffer: BufferId, plan: Option<Plan>) -> Result<()> {
        let plan = match plan {
            Some(p) => p,
            None => {
                let devices = self.attached_devices(self.buffer(buffer)?);
                self.solve_for(buffer, &devices)?
            }
        };
        let name = self.buffer(buffer)?.name.clone();
        let backing = self.backend.allocate(&plan, &name).map_err(backend_err)?;
        let segments = self.check_placement(buffer, &plan, &backing)?;
        self.stats.allocations += 1;
        self.events.push(Event::Allocated {
            buffer,
            devices: plan.devices.iter().map(|e| e.device.clone()).collect(),
            size: plan.size,
            contiguous: plan.contiguous(),
            segments,
        });
        let buf = self.buffers.get_mut(&buffer).expect("checked above");
        buf.content_len = plan.size;
        // The first allocation commits the layout: importers learn it from now on.
        buf.layout = plan.layout.as_ref().map(|l| l.layout.clone());
        buf.backing = Some(backing);
        buf.plan = Some(plan);
        Ok(())
    }
    /// Verifies a fresh backing against every device; frees it and fails loudly if the
    /// backend misplaced it.
    pub(super) fn check_placement(
        &mut self,
        buffer: BufferId,
        plan: &Plan,
        backing: &B::Backing,
    ) -> Result<Vec<PhysRange>> {
        let described = self.backend.describe(backing).map_err(backend_err)?;
        match verify(plan, &plan.devices, &described) {
            Ok(()) => Ok(described.segments),
            Err(violation) => Err(ExportError::Misplaced { buffer, violation }),
        }
    }
    pub(super) fn migrate(&mut self, buffer: BufferId, plan: Plan, for_attachment: AttachmentId) -> Result<()> {
        let name = self.buffer(buffer)?.name.clone();
        let for_device = self.attachment(for_attachment)?.device.name.clone();
        let new = self.backend.allocate(&plan, &name).map_err(backend_err)?;
        let to = match self.check_placement(buffer, &plan, &new) {
            Ok(s) => s,
            Err(e) => {
                self.backend.free(new);
                return Err(e);
            }
        };
        let old =
            self.buffers.get_mut(&buffer).expect("exists").backing.take().expect("a migrating buffer has a backing");
        let from = self.backend.describe(&old).map_err(backend_err)?.segments;
        let content_len = self.buffer(buffer)?.content_len.min(plan.size);
        let before = self.backend.checksum(&old, content_len).map_err(backend_err);
        let copied = self.backend.copy(&old, &new, content_len).map_err(backend_err);
        let after = self.backend.checksum(&new, content_len).map_err(backend_err);
        let (copied, checksum) = match (before, copied, after) {
            (Ok(b), Ok(c), Ok(a)) if a == b => (c, a),
            (Ok(b), Ok(_), Ok(a)) => {
                self.backend.free(new);
                self.buffers.get_mut(&buffer).expect("exists").backing = Some(old);
                return Err(ExportError::Backend(
                    format!("the copy did not preserve the contents: checksum {b:#x} became {a:#x}").into(),
                ));
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                self.backend.free(new);
                self.buffers.get_mut(&buffer).expect("exists").backing = Some(old);
                return Err(e);
            }
        };
        self.invalidate_mappings(buffer);
        self.backend.free(old);
        let buf = self.buffers.get_mut(&buffer).expect("exists");
        buf.backing = Some(new);
        buf.plan = Some(plan);
        buf.content_len = content_len;
        buf.generation += 1;
        buf.pending_move = None;
        let generation = buf.generation;
        self.stats.allocations += 1;
        self.stats.migrations += 1;
        self.stats.bytes_copied += copied.bytes();
        self.events.push(Event::Migrated { buffer, for_device, from, to, copied, checksum });
        self.notify_move(buffer, generation, None);
        Ok(())
    }
    /// Tears down every mapping of the buffer in the backend; the entries stay, stale, so a
    /// later use is an error instead of a read of freed memory.
    pub(super) fn invalidate_mappings(&mut self, buffer: BufferId) {
        let atts = self.buffers.get(&buffer).map(|b| b.attachments.clone()).unwrap_or_default();
        for a in atts {
            let Some(att) = self.attachments.get(&a) else { continue };
            for m in &att.mappings {
                if let Some(inner) = self.mappings.get_mut(m).and_then(|m| m.inner.take()) {
                    self.backend.unmap(&att.effective, inner);
                }
            }
        }
    }
    pub(super) fn notify_move(&mut self, buffer: BufferId, generation: u32, layout: Option<&crate::layout::Layout>) {
        let atts = self.buffers.get(&buffer).map(|b| b.attachments.clone()).unwrap_or_default();
        for a in atts {
            let Some(att) = self.attachments.get_mut(&a) else { continue };
            let notice = MoveNotice {
                buffer,
                attachment: a,
                generation,
                invalidated: att.mappings.clone(),
                layout: layout.cloned(),
            };
            if let Some(cb) = att.notify.as_mut() {
                cb(&notice);
            }
            self.stats.move_notifies += 1;
            self.events.push(Event::MoveNotify(notice));
        }
    }
    /// Brings a buffer in line with its attachments after one left or DMA completed: the
    /// plan is re-solved; if the backing meets it, that plan is kept; if not, the buffer
    /// moves now when idle, or the move stays pending until it is.
    pub(super) fn settle(&mut self, buffer: BufferId) -> Result<()> {
        let buf = self.buffer(buffer)?;
        if buf.backing.is_none() || buf.attachments.is_empty() {
            self.buffers.get_mut(&buffer).expect("exists").pending_move = None;
            return Ok(());
        }
        let devices = self.attached_devices(buf);
        let pending = buf.pending_move.filter(|a| buf.attachments.contains(a));
        let last = *buf.attachments.last().expect("non-empty");
        let plan = self.solve_committed(buffer, &devices)?;
        let backing = self.buffer(buffer)?.backing.as_ref().expect("checked above");
        let described = self.backend.describe(backing).map_err(backend_err)?;
        if verify(&plan, &plan.devices, &described).is_ok() {
            let buf = self.buffers.get_mut(&buffer).expect("exists");
            buf.plan = Some(plan);
            buf.pending_move = None;
            return Ok(());
        }
        let for_attachment = pending.unwrap_or(last);
        // Pending until the move succeeds: a failed move is retried by the next map.
        self.buffers.get_mut(&buffer).expect("exists").pending_move = Some(for_attachment);
        if self.busy_reason(buffer).is_some() {
            return Ok(());
        }
        self.migrate(buffer, plan, for_attachment)
    }
    /// [`Exporter::settle`] for callers that did not ask for the move (a fence signalled, the
    /// CPU finished, another device detached): a failure is an event, and the move stays
    /// pending for the device that needs it, whose next map retries and reports it.
    pub(super) fn settle_after(&mut self, buffer: BufferId) {
        if let Err(e) = self.settle(buffer) {
            self.events.push(Event::MoveFailed { buffer, reason: e.to_string() });
        }
    }
}
