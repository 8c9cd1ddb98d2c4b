//! What can go wrong, with the values that caused it.

use rustix::io::Errno;

use crate::choose::NoFit;
use crate::udmabuf::UdmabufError;

/// An error from the Linux backends.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// No source on this kernel meets the plan.
    #[error("{0}")]
    NoFit(Box<NoFit>),
    /// A system call failed.
    #[error("{op} {what}: {errno}")]
    Sys {
        /// The call (`DMA_HEAP_IOCTL_ALLOC`, `open`, ...).
        op: &'static str,
        /// On what, with the values that matter.
        what: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// udmabuf's preconditions do not hold (checked before the ioctl).
    #[error(transparent)]
    Udmabuf(#[from] UdmabufError),
    /// Something needs root.
    #[error("{what} needs root ({why})")]
    NotRoot {
        /// What was attempted.
        what: String,
        /// Why root is needed.
        why: String,
    },
    /// Where the buffer is cannot be observed on this kernel.
    #[error("cannot see where `{buffer}` ({source_name}) lies in physical memory: {why}")]
    Unobservable {
        /// The buffer.
        buffer: String,
        /// Its source.
        source_name: String,
        /// Every method tried and why each failed.
        why: String,
    },
    /// An operation userspace cannot perform here.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The placement does not satisfy a device.
    #[error("the kernel's placement fails a device: {0}")]
    Violation(#[from] dmaplace_core::Violation),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

impl From<NoFit> for LinuxError {
    fn from(e: NoFit) -> Self {
        LinuxError::NoFit(Box::new(e))
    }
}

/// `Sys` error builder for cold paths: `.map_err(sys("open", path))` (the description
/// is built before the call; hot paths build it in the `map_err` closure).
pub(crate) fn sys(op: &'static str, what: impl Into<String>) -> impl FnOnce(Errno) -> LinuxError {
    let what = what.into();
    move |errno| LinuxError::Sys { op, what, errno }
}
