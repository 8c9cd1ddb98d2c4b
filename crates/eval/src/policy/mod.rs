//! The placement policies compared, on the same machine model and the same trace.
//!
//! | policy | when memory is placed | where | late attacher that does not fit |
//! |---|---|---|---|
//! | `deferred` | first map, for every device attached by then | the solver's plan | moved when no DMA is in flight (queued until then) |
//! | `deferred-no-migrate` | same | same | refused |
//! | `eager-system` | at creation | the system heap: pages in chunks of up to 1 MiB, anywhere, cached | nothing to do: its import fails if it cannot use the pages |
//! | `eager-contiguous` | at creation | the CMA heap: one run from the default CMA area | same |
//! | `hint-heap` | at creation | a gralloc/ION-style table from the declared usage to a heap | same |
//!
//! The first two run dmaplace's [`dmaplace_core::exporter::Exporter`] on the simulated
//! machine; the eager ones allocate from the same machine with the plan of a heap (a
//! pseudo-device that knows nothing of the devices that will use the buffer) and judge
//! each import with [`dmaplace_core::verify()`] against the importing device alone, as a
//! kernel would at `dma_buf_map_attachment`.

mod deferred;
mod eager;

use std::fmt;
use std::str::FromStr;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::{BufferDesc, Usage};
use dmaplace_sim::{Machine, SimError};
use serde::Serialize;

pub(crate) use deferred::Deferred;
pub(crate) use eager::Eager;

use crate::metrics::{Failure, Meter, Reason};
use crate::trace::{AttId, BufId, FenceId, MapId};

/// A placement policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// dmaplace: allocate at first map for every attached device, move for late attachers.
    Deferred,
    /// dmaplace without moves: late attachers that do not fit are refused.
    DeferredNoMigrate,
    /// Allocate at creation from the system heap, as most userspace does.
    EagerSystem,
    /// Allocate every buffer from CMA at creation, the usual defensive choice.
    EagerContiguous,
    /// A gralloc/ION-style table from usage hints to heaps that knows nothing of devices.
    HintHeap,
}

impl Policy {
    /// Every policy, in table order.
    pub const ALL: [Policy; 5] =
        [Policy::Deferred, Policy::DeferredNoMigrate, Policy::EagerSystem, Policy::EagerContiguous, Policy::HintHeap];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Deferred => "deferred",
            Policy::DeferredNoMigrate => "deferred-no-migrate",
            Policy::EagerSystem => "eager-system",
            Policy::EagerContiguous => "eager-contiguous",
            Policy::HintHeap => "hint-heap",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy `{s}`; policies: {}", names.join(", "))
        })
    }
}

/// What a policy could not do: a counted failure, or a bug (the run stops).
#[derive(Debug)]
pub(crate) enum Fail {
    /// The policy could not serve the event; counted by reason.
    Policy(Failure),
    /// Something that must not happen (an exporter or machine invariant); the run stops.
    Internal(String),
}

impl From<Failure> for Fail {
    fn from(f: Failure) -> Fail {
        Fail::Policy(f)
    }
}

pub(crate) type Step<T = ()> = Result<T, Fail>;

/// A machine error as a counted failure; anything else is a bug.
pub(crate) fn sim_failure(e: &SimError) -> Fail {
    let f = |reason, contiguous| Fail::Policy(Failure::new(reason, contiguous, e.to_string()));
    match e {
        SimError::OutOfMemory { contiguous, .. } => f(Reason::OutOfMemory, *contiguous),
        SimError::IovaExhausted { .. } => f(Reason::IovaSpace, false),
        SimError::Unreachable { .. } => f(Reason::Reach, false),
        SimError::SegmentLimit { .. } => f(Reason::Segments, true),
        SimError::IommuAlignment { .. } => f(Reason::Alignment, false),
        other => Fail::Internal(other.to_string()),
    }
}

/// The first plane's pitch of an image layout: how a GPU's tiled walk strides.
pub(crate) fn pitch(layout: Option<&dmaplace_core::layout::Layout>) -> Option<u64> {
    layout.and_then(|l| l.planes.first()).map(|p| u64::from(p.pitch))
}

/// The runner passed a handle the engine does not know: a bug.
fn internal(what: &str) -> Fail {
    Fail::Internal(format!("the runner passed an unknown handle to {what}"))
}

/// How a map went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// The mapping is live.
    Live,
    /// The buffer waits to move; the mapping becomes live when the move is done.
    Waiting,
}

/// Who created a buffer and who will attach to it: what an eager allocator is told (the
/// declared usage) and what it is allowed to know for the layout (the attachers).
#[derive(Clone, Debug)]
pub(crate) struct Creation<'a> {
    pub(crate) buf: BufId,
    pub(crate) desc: &'a BufferDesc,
    pub(crate) usage: Usage,
    pub(crate) name: &'a str,
    /// Every device the trace will attach to this buffer, with its hints.
    pub(crate) attachers: &'a [(String, Usage)],
}

/// One policy replaying events. Handles come from a well-formed trace, and the runner
/// never passes one that failed earlier.
pub(crate) trait Engine {
    fn create(&mut self, meter: &mut Meter, c: &Creation<'_>) -> Step;
    fn attach(&mut self, meter: &mut Meter, att: AttId, buf: BufId, device: &str, hints: Usage) -> Step;
    fn map(&mut self, meter: &mut Meter, map: MapId, att: AttId) -> Step<Mapped>;
    fn fence(&mut self, meter: &mut Meter, fence: FenceId, map: MapId) -> Step;
    fn signal(&mut self, meter: &mut Meter, fence: FenceId) -> Step;
    fn cpu_begin(&mut self, meter: &mut Meter, buf: BufId, access: CpuAccess) -> Step;
    fn cpu_end(&mut self, meter: &mut Meter, buf: BufId) -> Step;
    fn unmap(&mut self, meter: &mut Meter, map: MapId) -> Step;
    fn detach(&mut self, meter: &mut Meter, att: AttId) -> Step;
    fn release(&mut self, meter: &mut Meter, buf: BufId) -> Step;
    /// Forgets a mapping that is still waiting (its importer gave up: the trace unmapped it).
    fn cancel_wait(&mut self, map: MapId);
    /// Waiting mappings whose wait ended since the last call: live, or failed.
    fn settled(&mut self) -> Vec<(MapId, Result<(), Failure>)>;
    fn machine(&self) -> &Machine;
    fn machine_mut(&mut self) -> &mut Machine;
}
