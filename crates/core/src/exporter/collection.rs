//! Allocating for several devices at once: the seed's `dma_alloc_*()` for a list of devices,
//! and sysmem-style explicit collections that hold allocation until everyone has declared.

use super::error::Result;
use super::*;

/// The result of [`Exporter::alloc_for`].
#[derive(Debug)]
pub struct Allocation {
    /// The buffer.
    pub buffer: BufferId,
    /// One attachment per device, in order.
    pub attachments: Vec<AttachmentId>,
    /// One mapping per device, in order.
    pub mappings: Vec<MappingId>,
    /// Each device's sg table, in order.
    pub tables: Vec<SgTable>,
}

impl<B: Backend> Exporter<B> {
    /// The seed's `dma_alloc_*()` for a list of devices: exports, attaches every device,
    /// and maps each once; the backing is allocated once, for all of them.
    pub fn alloc_for(&mut self, devices: &[(&str, Usage)], desc: BufferDesc, name: &str) -> Result<Allocation> {
        let buffer = self.export(desc, name)?;
        let mut attachments = Vec::with_capacity(devices.len());
        for (device, hints) in devices {
            match self.attach(buffer, device, *hints) {
                Ok(a) => attachments.push(a),
                Err(e) => {
                    self.unwind(buffer, &attachments, &[]);
                    return Err(e);
                }
            }
        }
        let mut mappings = Vec::with_capacity(devices.len());
        let mut tables = Vec::with_capacity(devices.len());
        for a in &attachments {
            match self.map(*a) {
                Ok((m, sg)) => {
                    mappings.push(m);
                    tables.push(sg);
                }
                Err(e) => {
                    self.unwind(buffer, &attachments, &mappings);
                    return Err(e);
                }
            }
        }
        Ok(Allocation { buffer, attachments, mappings, tables })
    }
    /// Undoes a partial `alloc_for` in reverse order of acquisition.
    pub(super) fn unwind(&mut self, buffer: BufferId, attachments: &[AttachmentId], mappings: &[MappingId]) {
        for m in mappings.iter().rev() {
            let _ = self.unmap(*m);
        }
        for a in attachments.iter().rev() {
            let _ = self.detach(*a);
        }
        let _ = self.release(buffer);
    }
    /// Starts an explicit collection (sysmem/NvSciBuf style): a buffer whose allocation
    /// waits until every participant's token has declared its device. Returns the buffer
    /// and the first token; [`Exporter::duplicate`] hands out more.
    pub fn collection(&mut self, desc: BufferDesc, name: &str) -> Result<(BufferId, TokenId)> {
        let buffer = self.export(desc, name)?;
        self.buffers.get_mut(&buffer).expect("just made").tokens = Some(1);
        let token = TokenId(self.id());
        self.tokens.insert(token, buffer);
        Ok((buffer, token))
    }
    /// Another participant's token for the same collection.
    pub fn duplicate(&mut self, token: TokenId) -> Result<TokenId> {
        let buffer = *self.tokens.get(&token).ok_or(ExportError::NoToken(token))?;
        *self.buffers.get_mut(&buffer).and_then(|b| b.tokens.as_mut()).ok_or(ExportError::NoToken(token))? += 1;
        let new = TokenId(self.id());
        self.tokens.insert(new, buffer);
        Ok(new)
    }
    /// A participant declares its device with its token. Maps before the last declaration
    /// fail with [`ExportError::CollectionIncomplete`] instead of allocating early (the
    /// cenalloc pitfall); the last declaration allocates for everyone.
    pub fn declare(&mut self, token: TokenId, device: &str, hints: Usage) -> Result<AttachmentId> {
        let buffer = *self.tokens.get(&token).ok_or(ExportError::NoToken(token))?;
        let attachment = self.attach(buffer, device, hints)?;
        self.tokens.remove(&token);
        let buf = self.buffers.get_mut(&buffer).expect("exists");
        let left = buf.tokens.map_or(0, |n| n.saturating_sub(1));
        buf.tokens = Some(left);
        if left == 0 {
            self.allocate(buffer, None)?;
        }
        Ok(attachment)
    }
}
