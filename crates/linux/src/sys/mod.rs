//! Every `unsafe` block of dmaplace: ioctls through `rustix::ioctl` and shared memory
//! mappings. Each safe wrapper holds one `unsafe` block with one `// SAFETY:` line, takes
//! `BorrowedFd`/`AsFd` and returns `OwnedFd`; no raw fd leaves this module.
#![allow(unsafe_code)]

pub mod ioctl;
pub mod map;
