//! Errors of the simulated machine. Each names the buffer or device, the constraint and
//! the values involved.

use dmaplace_core::Violation;
use dmaplace_core::units::{PhysRange, Size, UnitError};
use dmaplace_core::window::Window;

/// What the simulated machine refuses, or cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The platform's memory map cannot be simulated.
    #[error("platform `{platform}`: {reason}")]
    Platform {
        /// Platform name.
        platform: String,
        /// What is wrong.
        reason: String,
    },
    /// Not enough free memory of the right kind in the plan's placement.
    #[error(
        "buffer `{buffer}`: out of memory for {size}{} in {placement}: {reason} (free there: {free}, largest free block: {largest})",
        if *contiguous { " contiguous" } else { "" }
    )]
    OutOfMemory {
        /// Buffer name.
        buffer: String,
        /// Bytes asked for.
        size: Size,
        /// Whether one physically contiguous run was needed.
        contiguous: bool,
        /// Where the memory had to come from.
        placement: Window,
        /// Which step failed, in words.
        reason: String,
        /// Free bytes in the page allocator, CMA and usable carveouts inside the placement.
        free: Size,
        /// The largest free buddy block inside the placement.
        largest: Size,
    },
    /// The sg table a device would need has more entries than it allows.
    #[error("device `{device}`: the backing of `{buffer}` needs {needed} sg entries, over max_segments = {max}")]
    SegmentLimit {
        /// Device name (`*` for the plan as a whole).
        device: String,
        /// Buffer name.
        buffer: String,
        /// Entries needed.
        needed: u64,
        /// Entries allowed.
        max: u32,
    },
    /// A backing the machine placed failed [`dmaplace_core::verify`]: a bug in the
    /// simulator's placement policy.
    #[error("buffer `{buffer}`: placement failed verification: {violation}")]
    Verify {
        /// Buffer name.
        buffer: String,
        /// What verify found.
        violation: Violation,
    },
    /// A device cannot reach a segment of the backing.
    #[error("device `{device}` cannot reach segment {segment} of `{buffer}`: it reaches {reach}")]
    Unreachable {
        /// Device name.
        device: String,
        /// Buffer name.
        buffer: String,
        /// The segment.
        segment: PhysRange,
        /// What it reaches, and why (`0x0..0x1_0000_0000 (dma_mask = 32-bit)`).
        reach: String,
    },
    /// A segment is not aligned to the IOMMU's smallest page.
    #[error("device `{device}`: segment {segment} of `{buffer}` is not aligned to IOMMU {iommu}'s {granule} pages")]
    IommuAlignment {
        /// Device name.
        device: String,
        /// Buffer name.
        buffer: String,
        /// IOMMU name.
        iommu: String,
        /// The segment.
        segment: PhysRange,
        /// The smallest page size.
        granule: Size,
    },
    /// The device's IOVA space has no free range large enough.
    #[error("device `{device}`: no {size} IOVA range aligned to {align} left in its {space} IOVA space")]
    IovaExhausted {
        /// Device name.
        device: String,
        /// Bytes to map.
        size: Size,
        /// Alignment wanted.
        align: Size,
        /// The size of the space.
        space: Size,
    },
    /// A handle that this machine did not issue, or that was already released.
    #[error("{what} #{id} is not live on this machine (freed twice, or from another machine)")]
    StaleHandle {
        /// `backing` or `mapping`.
        what: &'static str,
        /// Its id.
        id: u64,
    },
    /// An access outside a buffer.
    #[error("buffer `{buffer}`: {len} bytes at offset {offset:#x} run past its end at {size}")]
    OutOfBounds {
        /// Buffer name.
        buffer: String,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Buffer size.
        size: Size,
    },
    /// Copy into a smaller buffer.
    #[error("cannot copy `{from}` ({from_size}) into the smaller `{to}` ({to_size})")]
    CopyTooSmall {
        /// Source buffer.
        from: String,
        /// Its size.
        from_size: Size,
        /// Destination buffer.
        to: String,
        /// Its size.
        to_size: Size,
    },
    /// Byte reads need [`crate::ContentMode::Bytes`].
    #[error(
        "buffer `{buffer}`: the machine keeps only per-frame checksums (ContentMode::Checksum); bytes cannot be read back"
    )]
    NoBytes {
        /// Buffer name.
        buffer: String,
    },
    /// An access pattern that does not fit the mapping.
    #[error("access pattern {pattern} does not fit the {len} mapping of `{buffer}`: {reason}")]
    Pattern {
        /// The pattern, in words.
        pattern: String,
        /// Buffer name.
        buffer: String,
        /// Mapping length.
        len: Size,
        /// What is wrong.
        reason: String,
    },
    /// Checked arithmetic overflowed.
    #[error(transparent)]
    Unit(#[from] UnitError),
}
