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
//!
//! The module is split along its seams: `lifecycle` (export, attach, map, fences, unmap,
//! detach, release: the state machine), `migrate` (allocation, moves, `move_notify`,
//! settling after a change), `cpu` (CPU access), `collection` (`alloc_for` and explicit
//! collections), `inspect` (queries and the invariant check), `events` and `error`.

mod collection;
mod cpu;
mod error;
mod events;
mod inspect;
mod layout;
mod lifecycle;
mod migrate;
mod relayout;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::Usage;
use crate::backend::{Backend, CpuAccess, SgTable};
use crate::effective::Effective;
use crate::model::Device;
use crate::platform::Platform;
use crate::solver::{BufferDesc, Plan};
use crate::units::Size;

pub use collection::Allocation;
pub use error::ExportError;
use error::Result;
pub use events::{AttachHow, Event, MoveNotice, MoveNotify};
pub use layout::{LayoutField, LayoutMisfit, PlaneCopy};

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
    /// The image layout importers were given at the first allocation; only an explicit
    /// re-layout changes it.
    layout: Option<crate::layout::Layout>,
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
    /// Attaches refused because the committed layout does not meet the device.
    pub layout_conflicts: u64,
    /// Explicit re-layout moves (LINEAR only).
    pub relayouts: u64,
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
    fn mapping(&self, id: MappingId) -> Result<&Mapping<B::Mapping>> {
        self.mappings.get(&id).ok_or(ExportError::NoMapping(id))
    }
}
