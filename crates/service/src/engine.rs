//! What the service asks of whoever places and moves the memory: an [`Engine`].
//!
//! - [`CoreEngine`]: `dmaplace_core`'s [`Exporter`] over a [`Placer`] (the simulated
//!   machine, or this kernel's heaps): the daemon itself is the exporter, deciding and
//!   verifying every placement in userspace.
//! - [`crate::kmod::KmodEngine`]: the kernel module (`/dev/dmaplace`) is the exporter; the
//!   daemon creates its dma-bufs, attaches each participant's device in the kernel and
//!   turns the module's moves into `moved` events.
//!
//! The service keeps clients, handles, tokens and quotas; an engine keeps buffers,
//! attachments, mappings and accesses under its own ids, and answers with protocol
//! errors ([`ErrorReply`]) that name the device, constraint and values.

use std::fmt;
use std::hash::Hash;
use std::os::fd::OwnedFd;

use dmaplace_core::exporter::{
    AttachHow as CoreHow, AttachmentId, BufferId, BusyPolicy, Event as CoreEvent, ExportError, Exporter,
    ExporterConfig, FenceId, MappingId, MoveNotice,
};
use dmaplace_core::solver::ImageDesc;
use dmaplace_core::{BufferDesc, Platform, Size, Usage};
use dmaplace_proto::{AttachHow, Desc, ErrorCode, ErrorReply, Layout, Plane};
use serde_json::{Value, json};

use crate::placer::{Accounting, Placer};

/// An engine's id for one kind of object.
pub trait Id: Copy + Eq + Ord + Hash + fmt::Display + fmt::Debug {}
impl<T: Copy + Eq + Ord + Hash + fmt::Display + fmt::Debug> Id for T {}

/// A move told to the holder of one attachment: the userspace `move_notify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice<B, A, M> {
    /// The buffer that moved.
    pub buffer: B,
    /// The attachment whose holder is told.
    pub attachment: A,
    /// Moves of the buffer so far.
    pub generation: u32,
    /// That attachment's mappings that are now stale.
    pub invalidated: Vec<M>,
}

impl From<MoveNotice> for Notice<BufferId, AttachmentId, MappingId> {
    fn from(n: MoveNotice) -> Self {
        Notice { buffer: n.buffer, attachment: n.attachment, generation: n.generation, invalidated: n.invalidated }
    }
}

/// A mapping an engine made: the fd to hand over and the committed layout.
#[derive(Debug)]
pub struct Mapped<M> {
    /// The engine's id of the mapping.
    pub id: M,
    /// Moves of the buffer so far.
    pub generation: u32,
    /// The committed layout.
    pub layout: Layout,
    /// A new file descriptor for the client (close-on-exec).
    pub fd: OwnedFd,
}

/// Places, maps and moves buffers for the service.
pub trait Engine {
    /// A buffer.
    type Buffer: Id;
    /// An attachment.
    type Attachment: Id;
    /// A mapping.
    type Mapping: Id;
    /// DMA in flight on a mapping.
    type Access: Id;

    /// `sim`, `heaps` or `kmod`, as `hello` reports it.
    fn kind(&self) -> &'static str;
    /// The platform's name, as `hello` reports it.
    fn platform(&self) -> &str;
    /// A buffer with no memory yet; returns it and the bytes to charge.
    fn export(&mut self, desc: &Desc, name: &str) -> Result<(Self::Buffer, u64), ErrorReply>;
    /// Attaches `device` with `hints` (already checked to be usage bits).
    fn attach(
        &mut self,
        buffer: Self::Buffer,
        device: &str,
        hints: Usage,
    ) -> Result<(Self::Attachment, AttachHow), ErrorReply>;
    /// Maps an attachment of `buffer`: the first map allocates for every attachment.
    fn map(&mut self, buffer: Self::Buffer, attachment: Self::Attachment) -> Result<Mapped<Self::Mapping>, ErrorReply>;
    /// The mapping's device starts DMA: the buffer must not move until it ends.
    fn begin_access(&mut self, mapping: Self::Mapping) -> Result<Self::Access, ErrorReply>;
    /// That DMA is complete (a queued move may run now).
    fn end_access(&mut self, access: Self::Access) -> Result<(), ErrorReply>;
    /// Drops a mapping.
    fn unmap(&mut self, mapping: Self::Mapping) -> Result<(), ErrorReply>;
    /// Drops an attachment (its mappings are gone already).
    fn detach(&mut self, attachment: Self::Attachment) -> Result<(), ErrorReply>;
    /// Frees the buffer (its attachments are gone already).
    fn release(&mut self, buffer: Self::Buffer) -> Result<(), ErrorReply>;
    /// The moves since the last call, one notice per attachment of a buffer that moved.
    fn take_notices(&mut self) -> Vec<Notice<Self::Buffer, Self::Attachment, Self::Mapping>>;
    /// Called about every 200 ms by the server: an engine that learns of moves from
    /// outside (the kernel module) looks for them here.
    fn poll(&mut self) {}
    /// The device of an attachment.
    fn device_of(&self, attachment: Self::Attachment) -> Option<&str>;
    /// A buffer's name.
    fn name(&self, buffer: Self::Buffer) -> Option<&str>;
    /// Moves of the buffer so far.
    fn generation(&self, buffer: Self::Buffer) -> u32;
    /// Whether the buffer has memory.
    fn allocated(&self, buffer: Self::Buffer) -> bool;
    /// The administrator's view of one buffer: `attachments` (with `mappings` counts),
    /// `plan`, `backing` (with `segments`).
    fn buffer_json(&self, buffer: Self::Buffer) -> Value;
    /// Counters (`allocations`, `migrations`, ...).
    fn stats_json(&self) -> Value;
    /// What is live in the backend.
    fn accounting(&self) -> Accounting;
}

// ------------------------------------------------------------------ the core exporter

/// `dmaplace_core`'s exporter over a [`Placer`]: the daemon decides and verifies every
/// placement itself.
pub struct CoreEngine<P: Placer> {
    exporter: Exporter<P>,
    /// The buffer of each live mapping (for the notices' routing and fences).
    notices: Vec<Notice<BufferId, AttachmentId, MappingId>>,
}

impl<P: Placer> fmt::Debug for CoreEngine<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreEngine").field("exporter", &self.exporter).finish_non_exhaustive()
    }
}

impl<P: Placer> CoreEngine<P> {
    /// The exporter on `platform` with `placer`; a late attach while busy per `busy`.
    pub fn new(platform: Platform, placer: P, busy: BusyPolicy) -> CoreEngine<P> {
        let exporter = Exporter::new(platform, placer, ExporterConfig { busy, ..ExporterConfig::default() });
        CoreEngine { exporter, notices: Vec::new() }
    }

    /// The exporter (tests).
    pub fn exporter(&self) -> &Exporter<P> {
        &self.exporter
    }

    /// Turns the exporter's events into notices and log lines.
    fn drain(&mut self) {
        for e in self.exporter.take_events() {
            match e {
                CoreEvent::MoveNotify(n) => self.notices.push(n.into()),
                CoreEvent::Migrated { buffer, for_device, copied, checksum, .. } => {
                    tracing::info!(buffer = %buffer, for_device, copied = copied.bytes(), checksum, "migrated");
                }
                CoreEvent::Allocated { buffer, devices, size, contiguous, segments } => {
                    tracing::debug!(buffer = %buffer, ?devices, size = size.bytes(), contiguous, segments = segments.len(), "allocated");
                }
                CoreEvent::MoveFailed { buffer, reason } => tracing::warn!(buffer = %buffer, reason, "move failed"),
                other => tracing::trace!(event = ?other, "exporter"),
            }
        }
    }

    /// Runs `f` on the exporter, collects its events, and turns its error into a reply.
    fn run<T>(&mut self, f: impl FnOnce(&mut Exporter<P>) -> Result<T, ExportError>) -> Result<T, ErrorReply> {
        let r = f(&mut self.exporter);
        self.drain();
        r.map_err(export_error)
    }
}

/// The protocol's answer to an exporter error.
pub fn export_error(e: ExportError) -> ErrorReply {
    let code = match &e {
        ExportError::NoBuffer(_)
        | ExportError::NoAttachment(_)
        | ExportError::NoMapping(_)
        | ExportError::NoFence(_)
        | ExportError::NoToken(_) => ErrorCode::Internal,
        ExportError::UnknownDevice(_) => ErrorCode::UnknownDevice,
        ExportError::Invalid(_) => ErrorCode::Invalid,
        // The committed layout is part of what every holder was told: a device that needs
        // another one conflicts with the holders, as a placement conflict does.
        ExportError::Conflict { .. } | ExportError::LayoutConflict { .. } => ErrorCode::Conflict,
        // The daemon offers no re-layout request, so the exporter cannot refuse one.
        ExportError::Relayout { .. } => ErrorCode::Internal,
        ExportError::Busy { .. } => ErrorCode::Busy,
        ExportError::MovePending { .. } => ErrorCode::MovePending,
        ExportError::StaleMapping { .. } => ErrorCode::Stale,
        ExportError::CollectionIncomplete { .. }
        | ExportError::FencesPending { .. }
        | ExportError::StillMapped { .. }
        | ExportError::StillAttached { .. }
        | ExportError::CpuAccess { .. } => ErrorCode::InUse,
        ExportError::Misplaced { .. } | ExportError::Backend(_) => ErrorCode::Backend,
    };
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "exporter lost track of an object the daemon holds");
    }
    let message = match &e {
        // The code already says "backend".
        ExportError::Backend(inner) => inner.to_string(),
        other => other.to_string(),
    };
    ErrorReply::new(code, message)
}

/// The core's description of a protocol buffer description.
pub fn core_desc(desc: &Desc) -> Result<BufferDesc, ErrorReply> {
    match desc {
        Desc::Size(n) => Ok(BufferDesc::Size(Size::new(*n))),
        Desc::Image { width, height, fourcc, modifiers } => {
            let format = drm_fourcc::DrmFourcc::try_from(*fourcc).map_err(|_| {
                let text: String =
                    fourcc.to_le_bytes().iter().map(|b| if b.is_ascii_graphic() { *b as char } else { '?' }).collect();
                ErrorReply::new(ErrorCode::Invalid, format!("unknown DRM fourcc {fourcc:#010x} ({text:?})"))
            })?;
            Ok(BufferDesc::Image(ImageDesc { width: *width, height: *height, format, modifiers: modifiers.clone() }))
        }
    }
}

fn layout_of(plan: Option<&dmaplace_core::Plan>) -> Layout {
    let Some(plan) = plan else { return Layout::sized(0) };
    match &plan.layout {
        Some(l) => Layout {
            size: plan.size.bytes(),
            fourcc: l.layout.format as u32,
            modifier: l.layout.modifier,
            width: l.layout.width,
            height: l.layout.height,
            planes: l.layout.planes.iter().map(|p| Plane { offset: p.offset, pitch: p.pitch }).collect(),
        },
        None => Layout::sized(plan.size.bytes()),
    }
}

fn how_of(h: CoreHow) -> AttachHow {
    match h {
        CoreHow::BeforeAllocation => AttachHow::BeforeAllocation,
        CoreHow::Fits => AttachHow::Fits,
        CoreHow::Migrated => AttachHow::Migrated,
        CoreHow::Queued => AttachHow::Queued,
    }
}

impl<P: Placer> Engine for CoreEngine<P> {
    type Buffer = BufferId;
    type Attachment = AttachmentId;
    type Mapping = MappingId;
    type Access = FenceId;

    fn kind(&self) -> &'static str {
        self.exporter.backend().kind()
    }

    fn platform(&self) -> &str {
        &self.exporter.platform().name
    }

    fn export(&mut self, desc: &Desc, name: &str) -> Result<(BufferId, u64), ErrorReply> {
        let desc = core_desc(desc)?;
        let buffer = self.exporter.export(desc, name).map_err(export_error)?;
        // Charged: the bytes asked for (an image's packed size; padding is the layout's).
        let size = self
            .exporter
            .take_events()
            .iter()
            .find_map(|e| match e {
                CoreEvent::Exported { buffer: b, size, .. } if *b == buffer => Some(size.bytes()),
                _ => None,
            })
            .unwrap_or(0);
        Ok((buffer, size))
    }

    fn attach(
        &mut self,
        buffer: BufferId,
        device: &str,
        hints: Usage,
    ) -> Result<(AttachmentId, AttachHow), ErrorReply> {
        let attachment = match self.exporter.attach(buffer, device, hints) {
            Ok(a) => a,
            Err(e) => {
                self.exporter.take_events();
                return Err(export_error(e));
            }
        };
        let mut how = AttachHow::BeforeAllocation;
        for e in self.exporter.take_events() {
            match e {
                CoreEvent::Attached { attachment: a, how: h, .. } if a == attachment => how = how_of(h),
                // The attach that caused a move learns it from its reply.
                CoreEvent::MoveNotify(n) if n.attachment == attachment => {}
                CoreEvent::MoveNotify(n) => self.notices.push(n.into()),
                CoreEvent::Migrated { buffer, for_device, copied, checksum, .. } => {
                    tracing::info!(buffer = %buffer, for_device, copied = copied.bytes(), checksum, "migrated");
                }
                other => tracing::trace!(event = ?other, "exporter"),
            }
        }
        Ok((attachment, how))
    }

    fn map(&mut self, buffer: BufferId, attachment: AttachmentId) -> Result<Mapped<MappingId>, ErrorReply> {
        let (mapping, _) = self.run(|e| e.map(attachment))?;
        let dup =
            self.exporter.backing(buffer).ok().flatten().map(|b| self.exporter.backend().fd(b).try_clone_to_owned());
        let fd = match dup {
            Some(Ok(fd)) => fd,
            other => {
                let _ = self.run(|e| e.unmap(mapping));
                let why = match other {
                    Some(Err(e)) => format!("dup of the buffer's fd: {e}"),
                    _ => "mapped, but the buffer has no backing".to_owned(),
                };
                return Err(ErrorReply::new(ErrorCode::Backend, why));
            }
        };
        let generation = self.exporter.generation(buffer).map_err(export_error)?;
        let layout = layout_of(self.exporter.plan(buffer).ok().flatten());
        Ok(Mapped { id: mapping, generation, layout, fd })
    }

    fn begin_access(&mut self, mapping: MappingId) -> Result<FenceId, ErrorReply> {
        self.run(|e| e.fence(mapping))
    }

    fn end_access(&mut self, access: FenceId) -> Result<(), ErrorReply> {
        self.run(|e| e.signal(access))
    }

    fn unmap(&mut self, mapping: MappingId) -> Result<(), ErrorReply> {
        self.run(|e| e.unmap(mapping))
    }

    fn detach(&mut self, attachment: AttachmentId) -> Result<(), ErrorReply> {
        self.run(|e| e.detach(attachment))
    }

    fn release(&mut self, buffer: BufferId) -> Result<(), ErrorReply> {
        self.run(|e| e.release(buffer))
    }

    fn take_notices(&mut self) -> Vec<Notice<BufferId, AttachmentId, MappingId>> {
        std::mem::take(&mut self.notices)
    }

    fn device_of(&self, attachment: AttachmentId) -> Option<&str> {
        self.exporter.device_of(attachment).ok()
    }

    fn name(&self, buffer: BufferId) -> Option<&str> {
        self.exporter.name(buffer).ok()
    }

    fn generation(&self, buffer: BufferId) -> u32 {
        self.exporter.generation(buffer).unwrap_or(0)
    }

    fn allocated(&self, buffer: BufferId) -> bool {
        self.exporter.backing(buffer).is_ok_and(|b| b.is_some())
    }

    fn buffer_json(&self, b: BufferId) -> Value {
        let attachments: Vec<Value> = self
            .exporter
            .attachments_of(b)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                json!({"attachment": a.to_string(), "device": self.exporter.device_of(*a).unwrap_or("?"),
                       "mappings": self.exporter.mappings_of(*a).map(<[_]>::len).unwrap_or(0)})
            })
            .collect();
        let backing = self
            .exporter
            .backing(b)
            .ok()
            .flatten()
            .and_then(|x| self.exporter.backend().describe(x).ok())
            .map(|d| json!({"segments": d.segments.iter().map(ToString::to_string).collect::<Vec<_>>(), "cache_mode": format!("{:?}", d.cache_mode)}));
        json!({
            "buffer": b.to_string(),
            "attachments": attachments,
            "plan": self.exporter.plan(b).ok().flatten().and_then(|p| serde_json::to_value(p).ok()),
            "backing": backing,
        })
    }

    fn stats_json(&self) -> Value {
        serde_json::to_value(self.exporter.stats()).unwrap_or(Value::Null)
    }

    fn accounting(&self) -> Accounting {
        self.exporter.backend().accounting()
    }
}
