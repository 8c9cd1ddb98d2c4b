//! What can go wrong, in the exporter's words.

use super::{AttachmentId, BufferId, FenceId, MappingId, TokenId};
use crate::solver::{Conflict, InvalidRequest};
use crate::verify::Violation;

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
    /// The layout committed at the first allocation does not meet the device's layout
    /// needs; a move would change where the pages are, never the layout.
    #[error(
        "cannot attach `{device}` to {buffer}: {misfit}; importers were given the layout at the first allocation, and a move changes where the pages are, never the layout"
    )]
    LayoutConflict {
        /// Buffer.
        buffer: BufferId,
        /// Device refused.
        device: String,
        /// The layout field, with the committed and the needed values.
        misfit: super::LayoutMisfit,
    },
    /// An explicit re-layout cannot be done.
    #[error("cannot re-lay out {buffer} for `{device}`: {reason}")]
    Relayout {
        /// Buffer.
        buffer: BufferId,
        /// Device refused.
        device: String,
        /// Why not.
        reason: String,
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

pub(super) type Result<T, E = ExportError> = std::result::Result<T, E>;

pub(super) fn backend_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> ExportError {
    ExportError::Backend(Box::new(e))
}
