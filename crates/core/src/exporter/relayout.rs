//! The explicit re-layout move: the only way a committed layout changes. LINEAR only
//! (tiled bytes cannot be re-pitched by copying rows), only when no DMA and no CPU access
//! is in flight, and never silently: the image is copied row by row into the new pitches
//! and offsets, every plane's rows are digested before and after and must match, and
//! every importer's move notice carries the new layout.

use super::error::{Result, backend_err};
use super::layout::{PlaneCopy, image_rows, misfit};
use super::*;
use crate::backend::ByteCopy;
use crate::layout::{Layout, MOD_LINEAR};

impl<B: Backend + ByteCopy> Exporter<B> {
    /// Attaches `device` like [`Exporter::attach_dynamic`] (or [`Exporter::attach`] when
    /// `notify` is `None`); when the layout committed at the first allocation does not
    /// meet it, re-lays the buffer out for every attachment instead of refusing:
    /// allocates the new plan, copies the image row by row, verifies it plane by plane,
    /// and tells every importer the new layout in its move notice.
    ///
    /// Refused ([`ExportError::Relayout`]) for a layout that is not LINEAR before and
    /// after, and ([`ExportError::Busy`]) while DMA or CPU access is in flight.
    pub fn attach_relayout(
        &mut self,
        buffer: BufferId,
        device: &str,
        hints: Usage,
        notify: Option<MoveNotify>,
    ) -> Result<AttachmentId> {
        let dev = self.platform.require_device(device)?.clone();
        let needs_relayout = self.buffer(buffer)?.layout.as_ref().is_some_and(|committed| {
            misfit(&self.platform, committed, &dev, &Effective::new(&self.platform, &dev, hints)).is_some()
        });
        if !needs_relayout {
            return self.attach_with(buffer, device, hints, notify);
        }
        let mut requests = self.attached_devices(self.buffer(buffer)?);
        requests.push((dev.clone(), hints));
        let plan = match self.solve_for(buffer, &requests) {
            Ok(plan) => plan,
            Err(e) => return Err(self.refused(buffer, device, e)),
        };
        let old = self.buffer(buffer)?.layout.clone().expect("checked above");
        let new = plan.layout.as_ref().map(|l| l.layout.clone()).expect("an image plan has a layout");
        if let Err(e) = self.relayout_allowed(buffer, device, &old, &new) {
            return Err(self.refused(buffer, device, e));
        }
        let id = AttachmentId(self.id());
        let effective = Effective::new(&self.platform, &dev, hints);
        self.attachments.insert(id, Attachment { buffer, device: dev, hints, effective, mappings: Vec::new(), notify });
        self.buffers.get_mut(&buffer).expect("checked above").attachments.push(id);
        self.events.push(Event::Attached {
            buffer,
            attachment: id,
            device: device.to_owned(),
            hints,
            how: AttachHow::Migrated,
        });
        if let Err(e) = self.relayout(buffer, plan, id, &old, &new) {
            self.undo_attach(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Records a refusal (event and counters) and returns the error.
    fn refused(&mut self, buffer: BufferId, device: &str, e: ExportError) -> ExportError {
        match &e {
            ExportError::Conflict { .. } => self.stats.conflicts += 1,
            ExportError::Busy { .. } => self.stats.busy_refusals += 1,
            _ => {}
        }
        self.events.push(Event::Refused { buffer, device: device.to_owned(), reason: e.to_string() });
        e
    }

    fn relayout_allowed(&self, buffer: BufferId, device: &str, old: &Layout, new: &Layout) -> Result<()> {
        let refuse = |reason: String| ExportError::Relayout { buffer, device: device.to_owned(), reason };
        if old.modifier != MOD_LINEAR || new.modifier != MOD_LINEAR {
            return Err(refuse(format!(
                "re-layout copies rows, so both layouts must be LINEAR; they are {} and {}",
                self.platform.modifier_name(old.modifier),
                self.platform.modifier_name(new.modifier)
            )));
        }
        if self.buffer(buffer)?.pending_move.is_some() {
            return Err(refuse("a move is already pending for another device".into()));
        }
        if let Some(busy) = self.busy_reason(buffer) {
            return Err(ExportError::Busy {
                buffer,
                device: device.to_owned(),
                reason: format!("the layout must change for it and cannot while {busy}"),
            });
        }
        Ok(())
    }

    /// Moves the buffer into a backing laid out by `plan`, copying the image row by row.
    fn relayout(
        &mut self,
        buffer: BufferId,
        plan: Plan,
        for_attachment: AttachmentId,
        old_layout: &Layout,
        new_layout: &Layout,
    ) -> Result<()> {
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
            self.buffers.get_mut(&buffer).expect("exists").backing.take().expect("a re-laid buffer has a backing");
        let copied = self.copy_image(&old, &new, old_layout, new_layout);
        let (from, planes) = match (self.backend.describe(&old).map_err(backend_err), copied) {
            (Ok(d), Ok(planes)) => (d.segments, planes),
            (Err(e), _) | (_, Err(e)) => {
                self.backend.free(new);
                self.buffers.get_mut(&buffer).expect("exists").backing = Some(old);
                return Err(e);
            }
        };
        self.invalidate_mappings(buffer);
        self.backend.free(old);
        let bytes: u64 = planes.iter().map(|p| u64::from(p.rows) * u64::from(p.row_bytes)).sum();
        let buf = self.buffers.get_mut(&buffer).expect("exists");
        buf.backing = Some(new);
        buf.content_len = plan.size;
        buf.layout = Some(new_layout.clone());
        buf.plan = Some(plan);
        buf.generation += 1;
        let generation = buf.generation;
        self.stats.allocations += 1;
        self.stats.migrations += 1;
        self.stats.relayouts += 1;
        self.stats.bytes_copied += bytes;
        self.events.push(Event::Relaid {
            buffer,
            for_device,
            from,
            to,
            old_layout: old_layout.clone(),
            new_layout: new_layout.clone(),
            planes,
        });
        self.notify_move(buffer, generation, Some(new_layout));
        Ok(())
    }

    /// Copies each plane's image rows from `old` (laid out as `from`) to `new` (as `to`)
    /// and checks the rows arrived: the digest over a plane's rows must be the same.
    fn copy_image(&mut self, old: &B::Backing, new: &B::Backing, from: &Layout, to: &Layout) -> Result<Vec<PlaneCopy>> {
        let rows = image_rows(from).map_err(|e| ExportError::Invalid(e.into()))?;
        let mut planes = Vec::with_capacity(rows.len());
        for (i, ((n, row_bytes), (a, b))) in rows.into_iter().zip(from.planes.iter().zip(&to.planes)).enumerate() {
            let at = |p: &crate::layout::PlaneLayout, r: u32| u64::from(p.offset) + u64::from(r) * u64::from(p.pitch);
            let (mut before, mut after) = (0u64, 0u64);
            for r in 0..n {
                self.backend.copy_range(old, at(a, r), new, at(b, r), row_bytes.into()).map_err(backend_err)?;
                before = fold(before, self.backend.digest_range(old, at(a, r), row_bytes.into()).map_err(backend_err)?);
                after = fold(after, self.backend.digest_range(new, at(b, r), row_bytes.into()).map_err(backend_err)?);
            }
            if before != after {
                return Err(ExportError::Backend(
                    format!("re-layout: plane {i}'s {n} rows read {after:#x} after the copy, {before:#x} before")
                        .into(),
                ));
            }
            planes.push(PlaneCopy {
                plane: i,
                rows: n,
                row_bytes,
                from: (a.offset, a.pitch),
                to: (b.offset, b.pitch),
                digest: after,
            });
        }
        Ok(planes)
    }
}

/// Folds a row's digest into a plane's (order matters: a row copied to the wrong place
/// changes it).
fn fold(acc: u64, row: u64) -> u64 {
    (acc.rotate_left(5) ^ row).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
