//! The exporter state machine: deferred allocation at first map, late attachers served
//! by logical attach, migration with `move_notify`, or refusal; fences; CPU access; the
//! `dma_alloc` helper for a list of devices; and sysmem-style explicit collections.
//!
//! It is generic over [`Backend`], so the simulated machine, the Linux backends and the
//! daemon all run the same logic. The flow of one buffer:
//!
//! ```text
//! export ─► attach* ─► first map: solve(all attachments) ─► allocate ─► verify ─► map
//!                         late attach ─► fits? logical attach
//!                                     └► idle? allocate anew, copy, move_notify, free old
//!                                     └► busy? refuse (Busy) or queue until fences signal
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::Usage;
use crate::backend::{Backend, CpuAccess, SgTable};
use crate::effective::Effective;
use crate::model::{Device, DeviceClass};
use crate::platform::Platform;
use crate::solver::{BufferDesc, Conflict, InvalidRequest, Plan, Request, SolveError, solve};
use crate::units::{PhysRange, Size};
use crate::verify::{Violation, verify};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A buffer (a dma-buf).
    BufferId,
    "buf"
);
id_type!(
    /// An attachment of a device to a buffer (`dma_buf_attachment`).
    AttachmentId,
    "att"
);
id_type!(
    /// A mapping of an attachment (an sg table from `dma_buf_map_attachment`).
    MappingId,
    "map"
);
id_type!(
    /// A fence for DMA in flight on a mapping.
    FenceId,
    "fence"
);
id_type!(
    /// A participant's token in an explicit collection.
    TokenId,
    "token"
);

/// What to do when a late attacher does not fit and DMA is in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusyPolicy {
    /// Refuse the attach with [`ExportError::Busy`] (what `dma_buf_ops.attach` may do).
    Refuse,
    /// Accept the attach and migrate when the last fence signals; maps wait until then.
    Queue,
}

/// When the backing is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationTime {
    /// At the first map, for every device attached by then (the seed's design).
    FirstMap,
    /// At export, knowing no device (what exporters do today; kept for comparison).
    Export,
}

/// Exporter settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExporterConfig {
    /// Late attach while busy.
    pub busy: BusyPolicy,
    /// When to allocate.
    pub allocation: AllocationTime,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig { busy: BusyPolicy::Refuse, allocation: AllocationTime::FirstMap }
    }
}

/// What the exporter tells an importer whose mappings a move invalidated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MoveNotice {
    /// The buffer that moved.
    pub buffer: BufferId,
    /// The attachment notified.
    pub attachment: AttachmentId,
    /// The buffer's generation after the move.
    pub generation: u32,
    /// The mappings of this attachment that are now invalid.
    pub invalidated: Vec<MappingId>,
}

/// An importer's `move_notify` callback.
pub type MoveNotify = Box<dyn FnMut(&MoveNotice)>;

/// Something that happened, for reports and `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A buffer was created without backing.
    Exported {
        /// Buffer.
        buffer: BufferId,
        /// Its name.
        name: String,
        /// Bytes requested (the layout may add padding).
        size: Size,
    },
    /// A device attached.
    Attached {
        /// Buffer.
        buffer: BufferId,
        /// Attachment.
        attachment: AttachmentId,
        /// Device.
        device: String,
        /// Hints.
        hints: Usage,
        /// How: before allocation, logically onto a fitting backing, with a move, or queued.
        how: AttachHow,
    },
    /// An attach was refused.
    Refused {
        /// Buffer.
        buffer: BufferId,
        /// Device.
        device: String,
        /// Why.
        reason: String,
    },
    /// The backing was allocated.
    Allocated {
        /// Buffer.
        buffer: BufferId,
        /// For which devices.
        devices: Vec<String>,
        /// Size.
        size: Size,
        /// Whether contiguous was required.
        contiguous: bool,
        /// The physical segments.
        segments: Vec<PhysRange>,
    },
    /// An attachment was mapped.
    Mapped {
        /// Buffer.
        buffer: BufferId,
        /// Mapping.
        mapping: MappingId,
        /// Device.
        device: String,
        /// The sg table as the device sees it.
        sg: SgTable,
    },
    /// The backing moved.
    Migrated {
        /// Buffer.
        buffer: BufferId,
        /// The device that needed it.
        for_device: String,
        /// Old segments.
        from: Vec<PhysRange>,
        /// New segments.
        to: Vec<PhysRange>,
        /// Bytes copied.
        copied: Size,
        /// Contents checksum before and after (equal).
        checksum: u64,
    },
    /// An importer was told to re-map.
    MoveNotify(MoveNotice),
    /// A move that nobody was waiting on failed; it stays pending and the next map of the
    /// buffer retries it.
    MoveFailed {
        /// Buffer.
        buffer: BufferId,
        /// Why.
        reason: String,
    },
    /// A fence signalled.
    FenceSignalled {
        /// The fence.
        fence: FenceId,
        /// Its mapping.
        mapping: MappingId,
    },
    /// CPU access began or ended.
    CpuAccess {
        /// Buffer.
        buffer: BufferId,
        /// Direction.
        access: CpuAccess,
        /// Begin (true) or end.
        begin: bool,
        /// Cache maintenance operations performed.
        maintenance_ops: u64,
    },
    /// A mapping was removed.
    Unmapped {
        /// Mapping.
        mapping: MappingId,
    },
    /// A device detached.
    Detached {
        /// Attachment.
        attachment: AttachmentId,
    },
    /// The buffer was released and its memory freed.
    Released {
        /// Buffer.
        buffer: BufferId,
    },
}

/// How an attach was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachHow {
    /// No backing yet: it will be placed for this device too.
    BeforeAllocation,
    /// The backing already satisfies the device: a logical attach, no move.
    Fits,
    /// The backing moved for the device.
    Migrated,
    /// A move is queued until DMA in flight completes.
    Queued,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No such buffer.
    #[error("no buffer {0}")]
    NoBuffer(BufferId),
    /// No such attachment.
    #[error("no attachment {0}")]
    NoAttachment(AttachmentId),
    /// No such mapping.
    #[error("no mapping {0}")]
    NoMapping(MappingId),
    /// No such fence.
    #[error("no fence {0}")]
    NoFence(FenceId),
    /// No such token, or it was already used.
    #[error("no outstanding token {0}")]
    NoToken(TokenId),
    /// The platform has no such device.
    #[error(transparent)]
    UnknownDevice(#[from] crate::platform::UnknownDevice),
    /// The buffer description is malformed.
    #[error("invalid buffer: {0}")]
    Invalid(#[from] InvalidRequest),
    /// No placement satisfies the device together with the current attachments.
    #[error("cannot attach `{device}` to {buffer}: {conflict}")]
    Conflict {
        /// Buffer.
        buffer: BufferId,
        /// Device refused.
        device: String,
        /// The solver's explanation.
        conflict: Box<Conflict>,
    },
    /// The backing does not fit the device and DMA is in flight, so it cannot move now.
    #[error("cannot attach `{device}` to {buffer} now: {reason}")]
    Busy {
        /// Buffer.
        buffer: BufferId,
        /// Device refused.
        device: String,
        /// What does not fit and what is in flight.
        reason: String,
    },
    /// A migration is queued; maps wait for the last fence.
    #[error("{buffer} is waiting to move for `{device}` until DMA in flight completes ({fences} fence(s) unsignalled)")]
    MovePending {
        /// Buffer.
        buffer: BufferId,
        /// The device it will move for.
        device: String,
        /// Fences still unsignalled.
        fences: usize,
    },
    /// The mapping belonged to a backing that has since moved.
    #[error(
        "mapping {mapping} of {buffer} is stale: the buffer moved (generation {mapped} -> {current}); re-map after move_notify"
    )]
    StaleMapping {
        /// Mapping.
        mapping: MappingId,
        /// Buffer.
        buffer: BufferId,
        /// Generation it was made for.
        mapped: u32,
        /// Current generation.
        current: u32,
    },
    /// The collection is still waiting for participants to declare.
    #[error(
        "{buffer} belongs to a collection still waiting for {waiting} participant(s) to declare; nothing is allocated yet"
    )]
    CollectionIncomplete {
        /// Buffer.
        buffer: BufferId,
        /// Tokens not yet declared.
        waiting: usize,
    },
    /// The operation needs the mapping's DMA to be complete.
    #[error("mapping {mapping} has {fences} unsignalled fence(s)")]
    FencesPending {
        /// Mapping.
        mapping: MappingId,
        /// Count.
        fences: usize,
    },
    /// Detach with live mappings.
    #[error("attachment {attachment} still has {mappings} mapping(s)")]
    StillMapped {
        /// Attachment.
        attachment: AttachmentId,
        /// Count.
        mappings: usize,
    },
    /// Release with live attachments.
    #[error("{buffer} still has {attachments} attachment(s)")]
    StillAttached {
        /// Buffer.
        buffer: BufferId,
        /// Count.
        attachments: usize,
    },
    /// CPU access nesting error.
    #[error("{buffer}: {what}")]
    CpuAccess {
        /// Buffer.
        buffer: BufferId,
        /// What is wrong.
        what: &'static str,
    },
    /// The backend placed memory that fails a device's constraints: a backend bug.
    #[error("backend placed {buffer} where device constraints fail: {violation}")]
    Misplaced {
        /// Buffer.
        buffer: BufferId,
        /// The violation.
        violation: Violation,
    },
    /// The backend failed.
    #[error("backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

type Result<T, E = ExportError> = std::result::Result<T, E>;

struct Buffer<M> {
    name: String,
    desc: BufferDesc,
    attachments: Vec<AttachmentId>,
    backing: Option<M>,
    plan: Option<Plan>,
    generation: u32,
    cpu_access: Option<CpuAccess>,
    pending_move: Option<AttachmentId>,
    tokens: Option<usize>,
    /// Bytes whose contents every backing so far has held: what a move must preserve.
    content_len: Size,
}

struct Attachment {
    buffer: BufferId,
    device: Device,
    hints: Usage,
    /// The device's constraints for this use, what its maps and CPU syncs are done for.
    effective: Effective,
    mappings: Vec<MappingId>,
    notify: Option<MoveNotify>,
}

struct Mapping<M> {
    attachment: AttachmentId,
    generation: u32,
    /// `None` once torn down by a move.
    inner: Option<M>,
    sg: SgTable,
    fences: Vec<FenceId>,
}

/// Counters over the exporter's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Backings allocated (first maps and migrations).
    pub allocations: u64,
    /// Migrations.
    pub migrations: u64,
    /// Bytes copied by migrations.
    pub bytes_copied: u64,
    /// Late attaches served without a move.
    pub logical_attaches: u64,
    /// Attaches refused as busy.
    pub busy_refusals: u64,
    /// Attaches refused for a conflict.
    pub conflicts: u64,
    /// `move_notify` deliveries.
    pub move_notifies: u64,
    /// Cache maintenance operations for CPU access.
    pub maintenance_ops: u64,
}

/// The exporter: owns the buffers, their attachments and mappings, and the backend.
pub struct Exporter<B: Backend> {
    platform: Platform,
    backend: B,
    config: ExporterConfig,
    buffers: BTreeMap<BufferId, Buffer<B::Backing>>,
    attachments: BTreeMap<AttachmentId, Attachment>,
    mappings: BTreeMap<MappingId, Mapping<B::Mapping>>,
    fences: BTreeMap<FenceId, MappingId>,
    tokens: BTreeMap<TokenId, BufferId>,
    next_id: u32,
    events: Vec<Event>,
    stats: Stats,
}

impl<B: Backend> fmt::Debug for Exporter<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("platform", &self.platform.name)
            .field("buffers", &self.buffers.len())
            .field("attachments", &self.attachments.len())
            .field("mappings", &self.mappings.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn backend_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> ExportError {
    ExportError::Backend(Box::new(e))
}

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
    /// An exporter placing memory with `backend` on `platform`.
    pub fn new(platform: Platform, backend: B, config: ExporterConfig) -> Exporter<B> {
        Exporter {
            platform,
            backend,
            config,
            buffers: BTreeMap::new(),
            attachments: BTreeMap::new(),
            mappings: BTreeMap::new(),
            fences: BTreeMap::new(),
            tokens: BTreeMap::new(),
            next_id: 1,
            events: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }
    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The backend, mutably (for tests that disturb memory).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn buffer(&self, id: BufferId) -> Result<&Buffer<B::Backing>> {
        self.buffers.get(&id).ok_or(ExportError::NoBuffer(id))
    }

    fn attachment(&self, id: AttachmentId) -> Result<&Attachment> {
        self.attachments.get(&id).ok_or(ExportError::NoAttachment(id))
    }

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

    fn attach_with(
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
        let plan = match self.solve_for(buffer, &requests) {
            Ok(plan) => plan,
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

    fn undo_attach(&mut self, id: AttachmentId) {
        if let Some(a) = self.attachments.remove(&id)
            && let Some(b) = self.buffers.get_mut(&a.buffer)
        {
            b.attachments.retain(|x| *x != id);
        }
    }

    fn attached_devices(&self, buf: &Buffer<B::Backing>) -> Vec<(Device, Usage)> {
        buf.attachments.iter().filter_map(|a| self.attachments.get(a)).map(|a| (a.device.clone(), a.hints)).collect()
    }

    fn solve_for(&self, buffer: BufferId, devices: &[(Device, Usage)]) -> Result<Plan> {
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
    fn busy_reason(&self, buffer: BufferId) -> Option<String> {
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

    fn unsignalled(&self, mapping: MappingId) -> usize {
        self.mappings.get(&mapping).map_or(0, |m| m.fences.len())
    }

    fn allocate(&mut self, buffer: BufferId, plan: Option<Plan>) -> Result<()> {
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
        buf.backing = Some(backing);
        buf.plan = Some(plan);
        Ok(())
    }

    /// Verifies a fresh backing against every device; frees it and fails loudly if the
    /// backend misplaced it.
    fn check_placement(&mut self, buffer: BufferId, plan: &Plan, backing: &B::Backing) -> Result<Vec<PhysRange>> {
        let described = self.backend.describe(backing).map_err(backend_err)?;
        match verify(plan, &plan.devices, &described) {
            Ok(()) => Ok(described.segments),
            Err(violation) => Err(ExportError::Misplaced { buffer, violation }),
        }
    }

    fn migrate(&mut self, buffer: BufferId, plan: Plan, for_attachment: AttachmentId) -> Result<()> {
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
        self.notify_move(buffer, generation);
        Ok(())
    }

    /// Tears down every mapping of the buffer in the backend; the entries stay, stale, so a
    /// later use is an error instead of a read of freed memory.
    fn invalidate_mappings(&mut self, buffer: BufferId) {
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

    fn notify_move(&mut self, buffer: BufferId, generation: u32) {
        let atts = self.buffers.get(&buffer).map(|b| b.attachments.clone()).unwrap_or_default();
        for a in atts {
            let Some(att) = self.attachments.get_mut(&a) else { continue };
            let notice = MoveNotice { buffer, attachment: a, generation, invalidated: att.mappings.clone() };
            if let Some(cb) = att.notify.as_mut() {
                cb(&notice);
            }
            self.stats.move_notifies += 1;
            self.events.push(Event::MoveNotify(notice));
        }
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

    fn mapping(&self, id: MappingId) -> Result<&Mapping<B::Mapping>> {
        self.mappings.get(&id).ok_or(ExportError::NoMapping(id))
    }

    /// The sg table of a live mapping; a stale one (the buffer moved) is an error.
    pub fn sg_table(&self, mapping: MappingId) -> Result<&SgTable> {
        self.check_live(mapping)?;
        Ok(&self.mapping(mapping)?.sg)
    }

    fn check_live(&self, id: MappingId) -> Result<BufferId> {
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

    /// Brings a buffer in line with its attachments after one left or DMA completed: the
    /// plan is re-solved; if the backing meets it, that plan is kept; if not, the buffer
    /// moves now when idle, or the move stays pending until it is.
    fn settle(&mut self, buffer: BufferId) -> Result<()> {
        let buf = self.buffer(buffer)?;
        if buf.backing.is_none() || buf.attachments.is_empty() {
            self.buffers.get_mut(&buffer).expect("exists").pending_move = None;
            return Ok(());
        }
        let devices = self.attached_devices(buf);
        let pending = buf.pending_move.filter(|a| buf.attachments.contains(a));
        let last = *buf.attachments.last().expect("non-empty");
        let plan = self.solve_for(buffer, &devices)?;
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
    fn settle_after(&mut self, buffer: BufferId) {
        if let Err(e) = self.settle(buffer) {
            self.events.push(Event::MoveFailed { buffer, reason: e.to_string() });
        }
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

    fn cpu_sync(&mut self, buffer: BufferId, access: CpuAccess, begin: bool) -> Result<u64> {
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
    fn unwind(&mut self, buffer: BufferId, attachments: &[AttachmentId], mappings: &[MappingId]) {
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
                            .solve_for(*id, &devices)
                            .map_err(|e| format!("{id}: attached set no longer solves: {e}"))?;
                        verify(&fresh, &fresh.devices, &described).map_err(|v| format!("{id} ({}): {v}", buf.name))?;
                    }
                }
                verify(plan, &plan.devices, &described)
                    .map_err(|v| format!("{id} ({}): stored plan: {v}", buf.name))?;
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
