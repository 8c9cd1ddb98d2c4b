//! Software fences (sw_sync), for the late-attach tests.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

use super::{get_u32, ioctl_bytes, open_rw, put_name, put_u32};

/// `/sys/kernel/debug/sync/sw_sync`: a software timeline (CONFIG_SW_SYNC).
pub const SW_SYNC: &str = "/sys/kernel/debug/sync/sw_sync";

const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    // CAST: the sizes here are a few dozen bytes.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}
/// `SW_SYNC_IOC_CREATE_FENCE`: `_IOWR('W', 0, struct sw_sync_create_fence_data)` (40 bytes).
const SW_SYNC_IOC_CREATE_FENCE: u32 = ioc(3, b'W', 0, 40);
/// `SW_SYNC_IOC_INC`: `_IOW('W', 1, __u32)`.
const SW_SYNC_IOC_INC: u32 = ioc(1, b'W', 1, 4);
/// `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: `_IOW('b', 3, struct dma_buf_import_sync_file)` (8 bytes).
const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: u32 = ioc(1, b'b', 3, 8);

/// A sw_sync timeline: fences on it signal when it is advanced past their value.
#[derive(Debug)]
pub struct SwSync {
    fd: OwnedFd,
}

impl SwSync {
    /// A new timeline at 0.
    pub fn open() -> std::io::Result<SwSync> {
        Ok(SwSync { fd: open_rw(SW_SYNC)? })
    }

    /// A sync_file fence that signals when the timeline reaches `value`.
    #[doc(alias = "SW_SYNC_IOC_CREATE_FENCE")]
    pub fn fence(&self, value: u32) -> Result<OwnedFd, Errno> {
        let mut b = [0u8; 40];
        put_u32(&mut b, 0, value);
        put_name(&mut b, 4, 32, "dmaplace-test")?;
        ioctl_bytes(self.fd.as_fd(), SW_SYNC_IOC_CREATE_FENCE, &mut b)?;
        // CAST: the s32 fence fd the kernel wrote.
        let raw = get_u32(&b, 36) as i32;
        if raw < 0 {
            return Err(Errno::BADF);
        }
        // SAFETY: SW_SYNC_IOC_CREATE_FENCE installed this fd for us and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Advances the timeline by `n`, signalling the fences it passes.
    #[doc(alias = "SW_SYNC_IOC_INC")]
    pub fn inc(&self, n: u32) -> Result<(), Errno> {
        let mut b = n.to_ne_bytes();
        ioctl_bytes(self.fd.as_fd(), SW_SYNC_IOC_INC, &mut b).map(drop)
    }
}

/// Adds a sync_file's fence to a dma-buf's reservation object, as a write
/// (exclusive) fence or a read fence.
#[doc(alias = "DMA_BUF_IOCTL_IMPORT_SYNC_FILE")]
pub fn import_sync_file(buf: BorrowedFd<'_>, fence: BorrowedFd<'_>, write: bool) -> Result<(), Errno> {
    let mut b = [0u8; 8];
    put_u32(&mut b, 0, if write { 2 } else { 1 });
    // CAST: fds are non-negative i32.
    put_u32(&mut b, 4, std::os::fd::AsRawFd::as_raw_fd(&fence) as u32);
    ioctl_bytes(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &mut b).map(drop)
}
