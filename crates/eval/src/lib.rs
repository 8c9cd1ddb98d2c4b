//! dmaplace-eval: the evidence. Replays realistic dma-buf workloads on simulated
//! platforms under dmaplace's policy and under what userspace does today, and measures
//! the difference.
//!
//! - [`trace`]: the trace format (`docs/TRACE.md`): parse, write, check; a writer a
//!   recorder can call event by event.
//! - [`scenario`]: built-in, parameterised generators of traces (video playback, camera
//!   recording, a late screen recorder, app churn, an x86 capture desktop, a soak).
//! - [`policy`]: `deferred`, `deferred-no-migrate`, `eager-system`, `eager-contiguous`,
//!   `hint-heap`.
//! - [`mod@run`]: replays a trace under a policy on a fresh [`dmaplace_sim::Machine`].
//! - [`metrics`], [`report`], [`plot`]: what is measured, the text table, SVG plots.
//!
//! Everything is deterministic: the same trace, platform, policy and seed give the same
//! metrics. Nothing here reads a clock or a file.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod metrics;
pub mod platforms;
pub mod plot;
pub mod policy;
pub mod report;
pub mod run;
pub mod scenario;
pub mod trace;

pub use metrics::{DeviceMetrics, Reason, RunMetrics};
pub use policy::Policy;
pub use run::{RunError, RunOptions, run};
