//! dmaplace-linux: dmaplace's Linux backends.
//!
//! - [`Inventory`] reads what this kernel offers: dma-heaps classified by what they can
//!   promise (`system`; a CMA heap whatever its name, with its range read from the
//!   kernel; unknown heaps, reported and never used), udmabuf and its module limits,
//!   2 MiB huge pages, where RAM is, the DRM cards.
//! - [`choose`] picks a memory source for a core [`Plan`](dmaplace_core::Plan) or
//!   explains, naming the requirement, the devices behind it and why every source on
//!   this kernel fails.
//! - [`LinuxBackend`] implements core's [`Backend`](dmaplace_core::backend::Backend):
//!   it allocates (`DMA_HEAP_IOCTL_ALLOC`, `UDMABUF_CREATE` over a sealed memfd, or a
//!   memfd when allowed), names buffers, brackets CPU access with `DMA_BUF_IOCTL_SYNC`,
//!   and, as root, observes where the kernel put the pages (pagemap, the CMA bitmap or
//!   `/proc/kcore`) so that [`dmaplace_core::verify`] can check them against every device.
//! - [`drm`] imports buffers into DRM drivers (PRIME) and drives vgem's fences.
//!
//! This is the only dmaplace crate with `unsafe`, all of it in [`sys`]: one `// SAFETY:`
//! line per block, ioctls through `rustix::ioctl`, and no raw fds in the API.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod buffer;
pub mod choose;
pub mod drm;
pub mod error;
pub mod inventory;
pub mod kmod;
pub mod parse;
pub mod phys;
pub mod probe;
pub mod sys;
pub mod udmabuf;

pub use backend::{LinuxBackend, LinuxMapping};
pub use buffer::{Buffer, Mapping};
pub use choose::{NoFit, Promise, Rejection, Source};
pub use error::LinuxError;
pub use inventory::{HeapKind, Inventory};
pub use phys::Method;

/// Whether this process runs inside the qemu rig's guest (`DMAPLACE_IN_GUEST=1`).
pub fn in_guest() -> bool {
    std::env::var("DMAPLACE_IN_GUEST").as_deref() == Ok("1")
}
