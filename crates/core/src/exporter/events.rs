//! What the exporter reports: events for logs and `--json`, and move notices for importers.

use serde::Serialize;

use super::{AttachmentId, BufferId, FenceId, MappingId};
use crate::Usage;
use crate::backend::{CpuAccess, SgTable};
use crate::layout::Layout;
use crate::units::{PhysRange, Size};

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
    /// The new layout (modifier, pitches, offsets) when the move changed it: only an
    /// explicit re-layout does. `None`: the layout importers were given still holds.
    pub layout: Option<Layout>,
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
    /// The backing moved and its image was re-laid out (an explicit LINEAR re-layout):
    /// copied row by row into new pitches and offsets, each plane verified.
    Relaid {
        /// Buffer.
        buffer: BufferId,
        /// The device that needed the new layout.
        for_device: String,
        /// Old segments.
        from: Vec<PhysRange>,
        /// New segments.
        to: Vec<PhysRange>,
        /// The layout importers had.
        old_layout: Layout,
        /// The layout they have now (also in every move notice).
        new_layout: Layout,
        /// Each plane's rows copied and their digest, equal in both layouts.
        planes: Vec<super::PlaneCopy>,
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
