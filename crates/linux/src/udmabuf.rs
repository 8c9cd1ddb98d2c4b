//! udmabuf: a dma-buf over the pages of a sealed memfd.
//!
//! `drivers/dma-buf/udmabuf.c` takes a memfd (shmem or hugetlbfs) that is sealed against
//! shrinking but not against writing, a page-aligned offset and size inside it, and at
//! most `size_limit_mb` (default 64 MiB) in all. It answers anything else with a bare
//! EINVAL, so [`check`] tests every precondition first and names the one that fails.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use dmaplace_core::Size;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::error::{LinuxError, sys};

/// The page size udmabuf aligns to.
pub const PAGE: u64 = 4096;
/// A 2 MiB huge page.
pub const HUGE_PAGE: u64 = 2 << 20;
/// `TMPFS_MAGIC`: shmem memfds.
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `HUGETLBFS_MAGIC`: hugetlb memfds.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// A udmabuf precondition that does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UdmabufError {
    /// Zero bytes.
    #[error("udmabuf: size is zero")]
    ZeroSize,
    /// Offset or size not a multiple of the page size.
    #[error("udmabuf: {what} {value:#x} is not a multiple of the {page} B page size")]
    Unaligned {
        /// `offset` or `size`.
        what: &'static str,
        /// The value.
        value: u64,
        /// The page size it must be a multiple of.
        page: u64,
    },
    /// Over `size_limit_mb`.
    #[error(
        "udmabuf: {size} is over the module's size_limit_mb of {limit} (raise /sys/module/udmabuf/parameters/size_limit_mb)"
    )]
    TooLarge {
        /// Requested.
        size: Size,
        /// The limit.
        limit: Size,
    },
    /// Not a shmem or hugetlbfs file.
    #[error("udmabuf: the fd is not a memfd (filesystem magic {magic:#x}; udmabuf takes shmem or hugetlbfs memfds)")]
    NotMemfd {
        /// `statfs.f_type`.
        magic: u64,
    },
    /// Created without `MFD_ALLOW_SEALING`.
    #[error("udmabuf: the memfd does not allow sealing (create it with MFD_ALLOW_SEALING)")]
    NotSealable,
    /// `F_SEAL_SHRINK` missing.
    #[error("udmabuf: the memfd is not sealed against shrinking (add F_SEAL_SHRINK)")]
    NotSealedShrink,
    /// `F_SEAL_WRITE` or `F_SEAL_FUTURE_WRITE` present.
    #[error(
        "udmabuf: the memfd is sealed against writing ({seals:?}); udmabuf refuses F_SEAL_WRITE/F_SEAL_FUTURE_WRITE"
    )]
    SealedWrite {
        /// The seals found.
        seals: SealFlags,
    },
    /// The range lies past the end of the memfd.
    #[error("udmabuf: offset {offset:#x} + size {size:#x} is past the memfd's end ({file_size:#x})")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// The memfd's size.
        file_size: u64,
    },
    /// Not enough free huge pages for a hugetlb memfd.
    #[error(
        "udmabuf: {needed} huge pages of 2 MiB needed, {free} free (reserve more: echo N > /proc/sys/vm/nr_hugepages)"
    )]
    NoHugePages {
        /// Needed.
        needed: u64,
        /// Free.
        free: u64,
    },
}

/// Checks udmabuf's preconditions for `size` bytes at `offset` of `memfd`, given the
/// module's `size_limit`.
pub fn check(memfd: BorrowedFd<'_>, offset: u64, size: u64, size_limit: Size) -> Result<(), UdmabufError> {
    if size == 0 {
        return Err(UdmabufError::ZeroSize);
    }
    for (what, value) in [("offset", offset), ("size", size)] {
        if value % PAGE != 0 {
            return Err(UdmabufError::Unaligned { what, value, page: PAGE });
        }
    }
    if size > size_limit.bytes() {
        return Err(UdmabufError::TooLarge { size: Size::new(size), limit: size_limit });
    }
    let magic = rustix::fs::fstatfs(memfd).map_or(0, |s| u64::try_from(s.f_type).unwrap_or(0));
    if magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC {
        return Err(UdmabufError::NotMemfd { magic });
    }
    let seals = rustix::fs::fcntl_get_seals(memfd).map_err(|_| UdmabufError::NotSealable)?;
    if seals.contains(SealFlags::SEAL) && !seals.contains(SealFlags::SHRINK) {
        return Err(UdmabufError::NotSealable);
    }
    if !seals.contains(SealFlags::SHRINK) {
        return Err(UdmabufError::NotSealedShrink);
    }
    if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
        return Err(UdmabufError::SealedWrite { seals });
    }
    let file_size = rustix::fs::fstat(memfd).map_or(0, |s| u64::try_from(s.st_size).unwrap_or(0));
    if offset.checked_add(size).is_none_or(|end| end > file_size) {
        return Err(UdmabufError::OutOfRange { offset, size, file_size });
    }
    Ok(())
}

/// Creates a memfd of `size` bytes ready for udmabuf: close-on-exec, sealable, sized,
/// then sealed against shrinking (and growing) but not writing. `huge` backs it with
/// 2 MiB huge pages (`MFD_HUGETLB | MFD_HUGE_2MB`; `size` must be a multiple of 2 MiB).
pub fn sealed_memfd(name: &str, size: u64, huge: bool) -> Result<OwnedFd, LinuxError> {
    let mut flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    if huge {
        flags |= MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB;
    }
    let label = format!("memfd `{name}` ({size:#x} bytes{})", if huge { ", hugetlb" } else { "" });
    let fd = rustix::fs::memfd_create(name.replace('\0', "?"), flags).map_err(sys("memfd_create", label.clone()))?;
    rustix::fs::ftruncate(&fd, size).map_err(sys("ftruncate", label.clone()))?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(sys("F_ADD_SEALS", label))?;
    Ok(fd)
}

/// Turns `size` bytes of `memfd` from `offset` into a dma-buf, after checking the
/// preconditions.
#[doc(alias = "UDMABUF_CREATE")]
pub fn create(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
    size_limit: Size,
) -> Result<OwnedFd, LinuxError> {
    check(memfd, offset, size, size_limit)?;
    crate::sys::ioctl::udmabuf_create(dev, memfd, offset, size).map_err(|errno| LinuxError::Sys {
        op: "UDMABUF_CREATE",
        what: format!(
            "{size:#x} bytes at {offset:#x}{}",
            if errno == Errno::NOMEM { " (out of memory, or huge pages ran out)" } else { "" }
        ),
        errno,
    })
}

/// Opens `/dev/udmabuf`.
pub fn open() -> Result<OwnedFd, LinuxError> {
    rustix::fs::open(
        crate::inventory::UDMABUF_DEV,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(sys("open", crate::inventory::UDMABUF_DEV))
}

/// A memfd's fd, for the checks (convenience for `AsFd` holders).
pub fn check_fd(memfd: &impl AsFd, size: u64, size_limit: Size) -> Result<(), UdmabufError> {
    check(memfd.as_fd(), 0, size, size_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Size = Size::mib(64);

    fn memfd(size: u64, seals: SealFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, size).unwrap();
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        }
        fd
    }

    #[test]
    fn a_sealed_memfd_passes() {
        let fd = sealed_memfd("ok", 64 << 10, false).unwrap();
        assert_eq!(check_fd(&fd, 64 << 10, LIMIT), Ok(()));
        // Still writable: udmabuf needs that.
        assert_eq!(rustix::io::pwrite(&fd, b"x", 10), Ok(1));
    }

    #[test]
    fn each_precondition_has_its_own_error() {
        let fd = memfd(1 << 20, SealFlags::SHRINK);
        assert_eq!(check(fd.as_fd(), 0, 0, LIMIT), Err(UdmabufError::ZeroSize));
        assert_eq!(
            check(fd.as_fd(), 100, 4096, LIMIT),
            Err(UdmabufError::Unaligned { what: "offset", value: 100, page: 4096 })
        );
        assert_eq!(
            check(fd.as_fd(), 0, 5000, LIMIT),
            Err(UdmabufError::Unaligned { what: "size", value: 5000, page: 4096 })
        );
        assert_eq!(
            check(fd.as_fd(), 0, 2 << 20, LIMIT),
            Err(UdmabufError::OutOfRange { offset: 0, size: 2 << 20, file_size: 1 << 20 })
        );
        assert_eq!(
            check(fd.as_fd(), 0, 128 << 20, LIMIT),
            Err(UdmabufError::TooLarge { size: Size::mib(128), limit: LIMIT })
        );
        let unsealed = memfd(1 << 20, SealFlags::empty());
        assert_eq!(check(unsealed.as_fd(), 0, 4096, LIMIT), Err(UdmabufError::NotSealedShrink));
        let write_sealed = memfd(1 << 20, SealFlags::SHRINK | SealFlags::WRITE);
        assert!(matches!(check(write_sealed.as_fd(), 0, 4096, LIMIT), Err(UdmabufError::SealedWrite { .. })));
        let no_sealing = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&no_sealing, 4096).unwrap();
        assert_eq!(check(no_sealing.as_fd(), 0, 4096, LIMIT), Err(UdmabufError::NotSealable));
        let proc_file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(matches!(check(proc_file.as_fd(), 0, 4096, LIMIT), Err(UdmabufError::NotMemfd { .. })));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert_eq!(
            UdmabufError::NotSealedShrink.to_string(),
            "udmabuf: the memfd is not sealed against shrinking (add F_SEAL_SHRINK)"
        );
        assert!(
            UdmabufError::TooLarge { size: Size::mib(128), limit: LIMIT }
                .to_string()
                .contains("size_limit_mb of 64 MiB")
        );
    }
}
