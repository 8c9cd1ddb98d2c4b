//! The userspace side of dmaplace's kernel module (`kernel/`, `docs/KERNEL.md`).
//!
//! - [`Dmaplace`] opens `/dev/dmaplace`: CREATE a dma-buf with no backing,
//!   DECLARE a device's extra constraints.
//! - [`TestDev`] drives `/dev/dmaplace_testdev`: fake importers with chosen DMA
//!   parameters (or real PCI devices by name), attach / map / unmap / detach, and
//!   the DMA side of the sg table each map produced.
//! - [`Snapshot`] parses `/sys/kernel/debug/dmaplace/buffers`: buffers,
//!   attachments with their constraints, the merged plan with its causes, and the
//!   backing's segments; [`BufferInfo::check_against_core`] is the differential
//!   test against `dmaplace_core::solve`, and [`BufferInfo::backing`] feeds
//!   `dmaplace_core::verify`.
//!
//! - [`guest`]: what the guest tests need beyond that (physical memory through
//!   `/proc/kcore`, kernel configuration).
//!
//! The ABI numbers come from `kernel/abi.rs` itself (included below), so the two
//! sides cannot drift. `unsafe` is confined to one ioctl pattern (a byte buffer
//! at least as long as the size its opcode encodes) and to taking ownership of
//! the fds CREATE installs.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

mod core_check;
mod debugfs;
mod device;
mod fence;
pub mod guest;
mod testdev;

pub use core_check::{CoreVerdict, PlanMismatch, guest_platform, platform_from_regions};
pub use debugfs::{AttachInfo, BufferInfo, POOL_DEBUGFS, PlanInfo, PoolInfo, PoolList, SegmentInfo, Snapshot, parse};
pub use device::{Created, Dmaplace, FD_FLAGS_RDWR_CLOEXEC, create_request, declare_request};
pub use fence::{SW_SYNC, SwSync, import_sync_file};
pub use testdev::{AttachStatus, FakeDevice, Importer, SgDma, TestDev};

/// The ABI shared with the modules (`kernel/abi.rs`).
#[path = "../../../../kernel/abi.rs"]
#[allow(missing_docs, clippy::all, clippy::cast_possible_truncation)]
pub mod abi;

/// `/dev/dmaplace`.
pub const DEV_DMAPLACE: &str = "/dev/dmaplace";
/// `/dev/dmaplace_testdev`.
pub const DEV_TESTDEV: &str = "/dev/dmaplace_testdev";
/// The module's debugfs file.
pub const DEBUGFS: &str = "/sys/kernel/debug/dmaplace/buffers";

// ------------------------------------------------------------------ the one ioctl

/// An ioctl whose argument is a byte buffer at least as long as the size the
/// opcode encodes.
struct BytesIoctl<'a> {
    opcode: Opcode,
    buf: &'a mut [u8],
}

// SAFETY: the argument points to `buf`, which is at least `_IOC_SIZE(opcode)` bytes long (checked in
// `ioctl_bytes`), so the kernel reads and writes only memory we own; the output is the return value.
unsafe impl Ioctl for BytesIoctl<'_> {
    type Output = i32;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

fn ioc_size(opcode: u32) -> usize {
    // CAST: 14 bits.
    ((opcode >> 16) & 0x3fff) as usize
}

/// Issues `opcode` on `fd` with `buf` as its argument. Callers guarantee that the
/// ioctl carries no user pointers other than ones into memory they own for the
/// call (the dmaplace ABI's only pointer, TD_MAP's `entries`, is set by
/// [`TestDev::map`] itself).
pub(crate) fn ioctl_bytes(fd: BorrowedFd<'_>, opcode: u32, buf: &mut [u8]) -> Result<i32, Errno> {
    if buf.len() < ioc_size(opcode) {
        return Err(Errno::INVAL);
    }
    // SAFETY: BytesIoctl's contract holds: `buf` covers the opcode's size (checked above).
    unsafe { rustix::ioctl::ioctl(fd, BytesIoctl { opcode, buf }) }
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub(crate) fn put_name(b: &mut [u8], off: usize, len: usize, name: &str) -> Result<(), Errno> {
    if name.len() >= len {
        return Err(Errno::NAMETOOLONG);
    }
    b[off..off + name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

pub(crate) fn open_rw(path: &str) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(OpenOptions::new().read(true).write(true).open(path)?))
}

/// Whether the modules are loaded (both device nodes exist).
pub fn modules_loaded() -> bool {
    File::open(DEV_DMAPLACE).is_ok() && File::open(DEV_TESTDEV).is_ok()
}
