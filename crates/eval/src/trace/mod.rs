//! The trace format: what happened to dma-bufs, in order, with simulated time.
//!
//! A trace is a text file, one event per line (`docs/TRACE.md`). It names buffers,
//! attachments, mappings and fences by handles (`b1`, `a1`, `m1`, `f1`), so a recorder can
//! write events as they happen and a replay can run them against any policy. Parsing
//! checks every handle's life (created before use, not used after release, nothing
//! released while in use) and reports the first problem with its line number.
//!
//! ```
//! use dmaplace_eval::trace::Trace;
//!
//! let text = "dmaplace-trace 1\nplatform refsoc\ncreate b1 size=8MiB\nattach a1 b1 gpu hints=RENDERING\nmap m1 a1\n";
//! let trace = Trace::parse("example.trace", text).unwrap();
//! assert_eq!(trace.ops.len(), 3);
//! assert_eq!(Trace::parse("example.trace", &trace.to_text()).unwrap(), trace);
//! ```

mod check;
mod parse;
mod write;

use std::fmt;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::{BufferDesc, Usage};
use dmaplace_sim::BackgroundLoad;

pub use check::Lifecycle;
pub use write::{TraceWriter, WriteError};

/// The first line of every trace: the format and its version.
pub const MAGIC: &str = "dmaplace-trace";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// The most background churn steps one `other churn=` line may ask for.
pub const MAX_CHURN: u32 = 10_000_000;

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl $name {
            /// The letter handles of this kind start with.
            pub const PREFIX: char = $prefix;
            /// What the handle names, in words.
            pub const WHAT: &'static str = $what;
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
    };
}

handle!(
    /// A buffer (a dma-buf), `b<N>`.
    BufId,
    'b',
    "buffer"
);
handle!(
    /// An attachment of a device to a buffer, `a<N>`.
    AttId,
    'a',
    "attachment"
);
handle!(
    /// A mapping of an attachment, `m<N>`.
    MapId,
    'm',
    "mapping"
);
handle!(
    /// A fence: DMA in flight on a mapping until signalled, `f<N>`.
    FenceId,
    'f',
    "fence"
);

/// One event.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A buffer is created (`dma_buf_export`, a heap allocation request, `gbm_bo_create`).
    Create {
        /// Its handle.
        buf: BufId,
        /// Its size, or the image it holds.
        desc: BufferDesc,
        /// The usage declared to the allocator at creation (gralloc/GBM usage flags); what
        /// a hint-to-heap table sees. Empty when nothing was declared.
        usage: Usage,
        /// A label for reports.
        name: String,
    },
    /// A device attaches with hints (`dma_buf_attach`).
    Attach {
        /// The attachment's handle.
        att: AttId,
        /// The buffer.
        buf: BufId,
        /// A device of the platform.
        device: String,
        /// How it will use the buffer.
        hints: Usage,
    },
    /// The attachment is mapped (`dma_buf_map_attachment`).
    Map {
        /// The mapping's handle.
        map: MapId,
        /// The attachment.
        att: AttId,
    },
    /// DMA starts on a mapping: a fence that is unsignalled until [`Op::Signal`].
    Fence {
        /// The fence's handle.
        fence: FenceId,
        /// The mapping doing DMA.
        map: MapId,
    },
    /// The fence signals: that DMA is complete.
    Signal {
        /// The fence.
        fence: FenceId,
    },
    /// CPU access begins (`DMA_BUF_IOCTL_SYNC` start).
    CpuBegin {
        /// The buffer.
        buf: BufId,
        /// Read, write or both.
        access: CpuAccess,
    },
    /// CPU access ends.
    CpuEnd {
        /// The buffer.
        buf: BufId,
    },
    /// The mapping is undone (`dma_buf_unmap_attachment`).
    Unmap {
        /// The mapping.
        map: MapId,
    },
    /// The device detaches (`dma_buf_detach`).
    Detach {
        /// The attachment.
        att: AttId,
    },
    /// The last reference goes (`dma_buf_put`): the memory is freed.
    Release {
        /// The buffer.
        buf: BufId,
    },
    /// Simulated time passes.
    Advance {
        /// Nanoseconds.
        ns: u64,
    },
    /// The other users of memory (page cache, anonymous memory, slab) change the share of
    /// memory they settle at: pressure rises or eases.
    OtherFill {
        /// Share of buddy-managed memory, 0..=1.
        fill: f64,
    },
    /// The other users churn: each step frees a random block of theirs while they hold
    /// their share or more, and allocates one while they hold less.
    OtherChurn {
        /// Steps, at most [`MAX_CHURN`].
        steps: u32,
    },
}

impl Op {
    /// The verb that starts the op's line.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Attach { .. } => "attach",
            Op::Map { .. } => "map",
            Op::Fence { .. } => "fence",
            Op::Signal { .. } => "signal",
            Op::CpuBegin { .. } => "cpu-begin",
            Op::CpuEnd { .. } => "cpu-end",
            Op::Unmap { .. } => "unmap",
            Op::Detach { .. } => "detach",
            Op::Release { .. } => "release",
            Op::Advance { .. } => "advance",
            Op::OtherFill { .. } | Op::OtherChurn { .. } => "other",
        }
    }
}

/// What a trace says about where and how it ran, before its first event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    /// The platform it was recorded on or written for.
    pub platform: Option<String>,
    /// The seed of the simulated machine (its background load).
    pub seed: Option<u64>,
    /// The other users of memory at the start.
    pub background: Option<BackgroundLoad>,
    /// Free-form `key=value` facts (the scenario and its parameters), in order.
    pub meta: Vec<(String, String)>,
}

/// A whole trace: a header and the events in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// Where and how.
    pub header: Header,
    /// What happened.
    pub ops: Vec<Op>,
}

/// A malformed trace: the file, the 1-based line and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TraceError {
    /// The file name as given to the parser.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, naming the token and what was expected.
    pub message: String,
}

/// Parses a duration as traces write it: a whole number and a unit (`ns`, `us`, `ms`,
/// `s`, `min`, `h`), in ns.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    parse::duration(text)
}

impl Trace {
    /// Parses a trace. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Trace, TraceError> {
        parse::parse(file, text)
    }

    /// The trace as text, in the canonical form [`Trace::parse`] reads back unchanged.
    /// Writing does not check handle lifecycles (parsing does): use [`TraceWriter`] to
    /// check while recording.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        write::header(&self.header, &mut out);
        for op in &self.ops {
            write::op(op, &mut out);
        }
        out
    }

    /// Simulated time the trace covers.
    pub fn duration_ns(&self) -> u64 {
        self.ops.iter().map(|op| if let Op::Advance { ns } = op { *ns } else { 0 }).fold(0u64, u64::saturating_add)
    }

    /// The value of a `meta` key.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.header.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}
