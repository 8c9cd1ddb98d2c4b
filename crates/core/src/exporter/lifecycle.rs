//! The state machine of one buffer: export, attach (refuse, fit, migrate or queue), map,
//! device access and fences, unmap, detach, release.

use super::error::{Result, backend_err};
use super::*;
use crate::backend::SgTable;
use crate::model::DeviceClass;
use crate::solver::{InvalidRequest, Request, SolveError, solve};
use crate::verify::verify;

impl<B: Backend> Exporter<B> {
    /// Creates a buffer with no backing (`dma_buf_export` without pages).
    pub fn export(&mut self, desc: BufferDesc, name: &str) -> Result<BufferId> {
        crate::solver::validate_desc(&desc)?;
        let id = BufferId(self.id());
        let size = match &desc {
            BufferDesc::Size(s) => *s,
            // The packed LINEAR size; devices' alignments may add padding at the first map.
            BufferDesc::Image(img) => {
                let linear = crate::layout::modifier_info(crate::layout::MOD_LINEAR, &[]).expect("LINEAR is built in");
                let packed = crate::layout::compute(
                    img.format,
                    linear,
                    img.width,
                    img.height,
                    crate::layout::LayoutAlign::PACKED,
                );
                Size::new(packed.map_err(InvalidRequest::from)?.size)
            }
        };
        self.buffers.insert(
            id,
            Buffer {
                name: name.to_owned(),
                desc,
                attachments: Vec::new(),
                backing: None,
                plan: None,
                generation: 0,
                cpu_access: None,
                pending_move: None,
                tokens: None,
                content_len: Size::ZERO,
                layout: None,
            },
        );
        self.events.push(Event::Exported { buffer: id, name: name.to_owned(), size });
        if self.config.allocation == AllocationTime::Export {
            self.allocate(id, None)?;
        }
        Ok(id)
    }
    /// Attaches `device` (a platform device name) with `hints` (`dma_buf_attach`).
    pub fn attach(&mut self, buffer: BufferId, device: &str, hints: Usage) -> Result<AttachmentId> {
        self.attach_with(buffer, device, hints, None)
    }
    /// Attaches as a dynamic importer whose `notify` is called when the buffer moves
    /// (`dma_buf_dynamic_attach` with `move_notify`).
    pub fn attach_dynamic(
        &mut self,
        buffer: BufferId,
        device: &str,
        hints: Usage,
        notify: MoveNotify,
    ) -> Result<AttachmentId> {
        self.attach_with(buffer, device, hints, Some(notify))
    }
    pub(super) fn attach_with(
        &mut self,
        buffer: BufferId,
        device: &str,
        hints: Usage,
        notify: Option<MoveNotify>,
    ) -> Result<AttachmentId> {
        let dev = self.platform.require_device(device)?.clone();
        let buf = self.buffer(buffer)?;
        // Solve over every current attachment plus the newcomer: refuses a device that no
        // placement could ever satisfy alongside the others, with the solver's reasons.
        let mut requests: Vec<(Device, Usage)> = self.attached_devices(buf);
        requests.push((dev.clone(), hints));
        let plan = match self.solve_committed(buffer, &requests) {
            Ok(plan) => plan,
            Err(ExportError::LayoutConflict { misfit, .. }) => {
                self.stats.layout_conflicts += 1;
                let e = ExportError::LayoutConflict { buffer, device: device.to_owned(), misfit };
                self.events.push(Event::Refused { buffer, device: device.to_owned(), reason: e.to_string() });
                return Err(e);
            }
            Err(ExportError::Conflict { conflict, .. }) => {
                self.stats.conflicts += 1;
                self.events.push(Event::Refused {
                    buffer,
                    device: device.to_owned(),
                    reason: conflict.message.clone(),
                });
                return Err(ExportError::Conflict { buffer, device: device.to_owned(), conflict });
            }
            Err(e) => return Err(e),
        };
        let how = match &self.buffer(buffer)?.backing {
            None => AttachHow::BeforeAllocation,
            Some(b) => {
                let described = self.backend.describe(b).map_err(backend_err)?;
                match verify(&plan, &plan.devices, &described) {
                    Ok(()) => AttachHow::Fits,
                    Err(misfit) => match self.busy_reason(buffer) {
                        None => AttachHow::Migrated,
                        Some(busy) if self.config.busy == BusyPolicy::Refuse => {
                            self.stats.busy_refusals += 1;
                            let reason =
                                format!("the backing does not fit it ({misfit}) and it cannot move while {busy}");
                            self.events.push(Event::Refused {
                                buffer,
                                device: device.to_owned(),
                                reason: reason.clone(),
                            });
                            return Err(ExportError::Busy { buffer, device: device.to_owned(), reason });
                        }
                        Some(_) => AttachHow::Queued,
                    },
                }
            }
        };
        let id = AttachmentId(self.id());
        let effective = Effective::new(&self.platform, &dev, hints);
        self.attachments.insert(id, Attachment { buffer, device: dev, hints, effective, mappings: Vec::new(), notify });
        let buf = self.buffers.get_mut(&buffer).expect("checked above");
        buf.attachments.push(id);
        self.events.push(Event::Attached { buffer, attachment: id, device: device.to_owned(), hints, how });
        match how {
            AttachHow::BeforeAllocation => {}
            AttachHow::Fits => {
                self.stats.logical_attaches += 1;
                self.buffers.get_mut(&buffer).expect("exists").plan = Some(plan);
            }
            AttachHow::Migrated => {
                if let Err(e) = self.migrate(buffer, plan, id) {
                    self.undo_attach(id);
                    return Err(e);
                }
            }
            AttachHow::Queued => self.buffers.get_mut(&buffer).expect("exists").pending_move = Some(id),
        }
        Ok(id)
    }
    pub(super) fn undo_attach(&mut self, id: AttachmentId) {
        if let Some(a) = self.attachments.remove(&id)
            && let Some(b) = self.buffers.get_mut(&a.buffer)
        {
            b.attachments.retain(|x| *x != id);
        }
    }
    pub(super) fn attached_devices(&self, buf: &Buffer<B::Backing>) -> Vec<(Device, Usage)> {
        buf.attachments.iter().filter_map(|a| self.attachments.get(a)).map(|a| (a.device.clone(), a.hints)).collect()
    }
    pub(super) fn solve_for(&self, buffer: BufferId, devices: &[(Device, Usage)]) -> Result<Plan> {
        let buf = self.buffer(buffer)?;
        let cpu;
        let requests: Vec<Request<'_>> = if devices.is_empty() {
            // Nobody attached yet (eager allocation, or CPU access first): only the CPU.
            cpu = Device::new("cpu", DeviceClass::Other);
            vec![Request { device: &cpu, hints: Usage::empty() }]
        } else {
            devices.iter().map(|(device, hints)| Request { device, hints: *hints }).collect()
        };
        solve(&self.platform, &buf.desc, &requests).map_err(|e| match e {
            SolveError::Conflict(conflict) => {
                ExportError::Conflict { buffer, device: conflict.devices.join("+"), conflict }
            }
            SolveError::Invalid(i) => ExportError::Invalid(i),
        })
    }
    /// `Some(what)` when DMA is in flight or the CPU is accessing the buffer.
    pub(super) fn busy_reason(&self, buffer: BufferId) -> Option<String> {
        let buf = self.buffers.get(&buffer)?;
        let mut busy: Vec<String> = Vec::new();
        for a in &buf.attachments {
            let Some(att) = self.attachments.get(a) else { continue };
            for m in &att.mappings {
                let n = self.unsignalled(*m);
                if n > 0 {
                    busy.push(format!("`{}` has {n} unsignalled fence(s) on {m}", att.device.name));
                }
            }
        }
        if let Some(access) = buf.cpu_access {
            busy.push(format!("the CPU holds {access:?} access"));
        }
        (!busy.is_empty()).then(|| busy.join(", "))
    }
    pub(super) fn unsignalled(&self, mapping: MappingId) -> usize {
        self.mappings.get(&mapping).map_or(0, |m| m.fences.len())
    }
    /// Maps an attachment (`dma_buf_map_attachment`). The first map of a buffer solves
    /// over every current attachment and allocates once.
    pub fn map(&mut self, attachment: AttachmentId) -> Result<(MappingId, SgTable)> {
        let buffer = self.attachment(attachment)?.buffer;
        let buf = self.buffer(buffer)?;
        if let Some(waiting) = buf.tokens.filter(|n| *n > 0) {
            return Err(ExportError::CollectionIncomplete { buffer, waiting });
        }
        if buf.pending_move.is_some() && self.busy_reason(buffer).is_none() {
            // A move that failed earlier (or was left pending) is retried now, and its
            // error goes to the mapper.
            self.settle(buffer)?;
        }
        let buf = self.buffer(buffer)?;
        if let Some(pending) = buf.pending_move {
            let device = self.attachment(pending).map_or_else(|_| String::from("?"), |a| a.device.name.clone());
            let fences = buf
                .attachments
                .iter()
                .filter_map(|a| self.attachments.get(a))
                .flat_map(|a| &a.mappings)
                .map(|m| self.unsignalled(*m))
                .sum();
            return Err(ExportError::MovePending { buffer, device, fences });
        }
        if buf.backing.is_none() {
            self.allocate(buffer, None)?;
        }
        let att = self.attachments.get(&attachment).ok_or(ExportError::NoAttachment(attachment))?;
        let buf = self.buffers.get(&buffer).expect("exists");
        let backing = buf.backing.as_ref().expect("allocated above");
        let generation = buf.generation;
        let (inner, sg) = self.backend.map(&att.effective, backing).map_err(backend_err)?;
        let device = att.device.name.clone();
        let id = MappingId(self.id());
        self.mappings
            .insert(id, Mapping { attachment, generation, inner: Some(inner), sg: sg.clone(), fences: Vec::new() });
        self.attachments.get_mut(&attachment).expect("exists").mappings.push(id);
        self.events.push(Event::Mapped { buffer, mapping: id, device, sg: sg.clone() });
        Ok((id, sg))
    }
    /// The sg table of a live mapping; a stale one (the buffer moved) is an error.
    pub fn sg_table(&self, mapping: MappingId) -> Result<&SgTable> {
        self.check_live(mapping)?;
        Ok(&self.mapping(mapping)?.sg)
    }
    pub(super) fn check_live(&self, id: MappingId) -> Result<BufferId> {
        let m = self.mapping(id)?;
        let buffer = self.attachment(m.attachment)?.buffer;
        let current = self.buffer(buffer)?.generation;
        if m.inner.is_none() || m.generation != current {
            return Err(ExportError::StaleMapping { mapping: id, buffer, mapped: m.generation, current });
        }
        Ok(buffer)
    }
    /// A device writes the whole buffer through `mapping` (content derived from `seed`).
    pub fn dma_write(&mut self, mapping: MappingId, seed: u64) -> Result<()> {
        let buffer = self.check_live(mapping)?;
        let buf = self.buffers.get(&buffer).ok_or(ExportError::NoBuffer(buffer))?;
        let backing = buf.backing.as_ref().expect("a live mapping has a backing");
        self.backend.fill(backing, seed).map_err(backend_err)
    }
    /// A device reads the buffer through `mapping`: the checksum of the contents every
    /// backing so far has held (a move to a larger backing adds only padding).
    pub fn dma_read(&self, mapping: MappingId) -> Result<u64> {
        let buffer = self.check_live(mapping)?;
        let buf = self.buffer(buffer)?;
        let backing = buf.backing.as_ref().expect("a live mapping has a backing");
        self.backend.checksum(backing, buf.content_len).map_err(backend_err)
    }
    /// Adds an unsignalled fence to a mapping: DMA is in flight.
    pub fn fence(&mut self, mapping: MappingId) -> Result<FenceId> {
        self.check_live(mapping)?;
        let id = FenceId(self.id());
        self.mappings.get_mut(&mapping).expect("checked").fences.push(id);
        self.fences.insert(id, mapping);
        Ok(id)
    }
    /// Signals a fence. When it was the last one holding up a queued move, the move runs.
    pub fn signal(&mut self, fence: FenceId) -> Result<()> {
        let mapping = self.fences.remove(&fence).ok_or(ExportError::NoFence(fence))?;
        if let Some(m) = self.mappings.get_mut(&mapping) {
            m.fences.retain(|f| *f != fence);
        }
        self.events.push(Event::FenceSignalled { fence, mapping });
        let buffer = self.attachment(self.mapping(mapping)?.attachment)?.buffer;
        if self.buffer(buffer)?.pending_move.is_some() {
            self.settle_after(buffer);
        }
        Ok(())
    }
    /// Unmaps (`dma_buf_unmap_attachment`). DMA must be complete.
    pub fn unmap(&mut self, mapping: MappingId) -> Result<()> {
        let m = self.mapping(mapping)?;
        if !m.fences.is_empty() {
            return Err(ExportError::FencesPending { mapping, fences: m.fences.len() });
        }
        let m = self.mappings.remove(&mapping).expect("checked");
        if let Some(att) = self.attachments.get_mut(&m.attachment) {
            att.mappings.retain(|x| *x != mapping);
            if let Some(inner) = m.inner {
                self.backend.unmap(&att.effective, inner);
            }
        }
        self.events.push(Event::Unmapped { mapping });
        Ok(())
    }
    /// Detaches (`dma_buf_detach`). The attachment must have no mappings.
    pub fn detach(&mut self, attachment: AttachmentId) -> Result<()> {
        let att = self.attachment(attachment)?;
        if !att.mappings.is_empty() {
            return Err(ExportError::StillMapped { attachment, mappings: att.mappings.len() });
        }
        let buffer = att.buffer;
        self.undo_attach(attachment);
        // The remaining devices' plan is looser, unless a move is still pending for one of
        // them: settle keeps the plan true to the backing either way.
        self.settle_after(buffer);
        self.events.push(Event::Detached { attachment });
        Ok(())
    }
    /// Releases the buffer (last `dma_buf_put`) and frees its memory.
    pub fn release(&mut self, buffer: BufferId) -> Result<()> {
        let buf = self.buffer(buffer)?;
        if !buf.attachments.is_empty() {
            return Err(ExportError::StillAttached { buffer, attachments: buf.attachments.len() });
        }
        let buf = self.buffers.remove(&buffer).expect("checked");
        self.tokens.retain(|_, b| *b != buffer);
        if let Some(backing) = buf.backing {
            self.backend.free(backing);
        }
        self.events.push(Event::Released { buffer });
        Ok(())
    }
}
