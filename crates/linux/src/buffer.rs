//! A placed buffer: a dma-buf (or, for the memfd fallback, a memfd) and what dmaplace
//! knows about it. CPU access goes through a [`Mapping`] that borrows the buffer, so it
//! cannot outlive it, or through [`Buffer::cpu_access`], which also brackets the access
//! with `DMA_BUF_IOCTL_SYNC`.

use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::{PhysRange, Size};

use crate::choose::Source;
use crate::error::{LinuxError, sys};
use crate::sys::ioctl::{self, DMA_BUF_NAME_LEN, DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE};
use crate::sys::map::RawMap;

/// A buffer placed by a Linux backend.
///
/// Dropping it closes the dma-buf; the memory goes back when the last importer lets go.
pub struct Buffer {
    // Drop order is field order: the dma-buf closes before the memfd whose pages back it.
    pub(crate) fd: OwnedFd,
    pub(crate) memfd: Option<OwnedFd>,
    pub(crate) size: Size,
    pub(crate) source: Source,
    pub(crate) name: String,
    /// Physical runs recorded at allocation (CMA bitmap), if any.
    pub(crate) recorded: Option<Vec<PhysRange>>,
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("size", &self.size)
            .field("fd", &self.fd)
            .finish_non_exhaustive()
    }
}

impl AsFd for Buffer {
    /// The dma-buf (or, from the memfd fallback, the memfd).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Buffer {
    /// Bytes allocated (at least the plan's size).
    pub fn size(&self) -> Size {
        self.size
    }

    /// Where it came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether devices can import it (everything but the memfd fallback).
    pub fn is_dma_buf(&self) -> bool {
        self.source != Source::Memfd
    }

    /// The memfd behind a udmabuf or the memfd fallback.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        match self.source {
            Source::Memfd => Some(self.fd.as_fd()),
            _ => self.memfd.as_ref().map(AsFd::as_fd),
        }
    }

    /// The dma-buf's inode number, as `bufinfo` lists it.
    pub fn inode(&self) -> Result<u64, LinuxError> {
        rustix::fs::fstat(&self.fd).map(|s| s.st_ino).map_err(sys("fstat", self.name.clone()))
    }

    /// Names the buffer (`DMA_BUF_SET_NAME`): the name shows in
    /// `/sys/kernel/debug/dma_buf/bufinfo`. The kernel keeps at most 31 bytes, so longer
    /// names are cut at a character boundary; NUL bytes become `?`.
    #[doc(alias = "DMA_BUF_SET_NAME")]
    pub fn set_name(&mut self, name: &str) -> Result<(), LinuxError> {
        let mut cut = name.replace('\0', "?");
        while cut.len() >= DMA_BUF_NAME_LEN {
            cut.pop();
        }
        if self.is_dma_buf() {
            // The kernel copies at most DMA_BUF_NAME_LEN bytes: a NUL-padded array of that
            // size holds any cut name (no heap allocation on the allocation path).
            let mut bytes = [0u8; DMA_BUF_NAME_LEN];
            bytes[..cut.len()].copy_from_slice(cut.as_bytes());
            let c = CStr::from_bytes_until_nul(&bytes).map_err(|_| {
                LinuxError::Invalid(format!("buffer name {name:?} does not fit {DMA_BUF_NAME_LEN} bytes"))
            })?;
            ioctl::dma_buf_set_name(self.fd.as_fd(), c).map_err(|errno| LinuxError::Sys {
                op: "DMA_BUF_SET_NAME",
                what: format!("{cut:?}"),
                errno,
            })?;
        }
        self.name = cut;
        Ok(())
    }

    /// Begins (`begin`) or ends CPU access (`DMA_BUF_IOCTL_SYNC`, restarted on EINTR and
    /// EAGAIN). Returns the number of sync calls made: 1, or 0 for a memfd.
    #[doc(alias = "DMA_BUF_IOCTL_SYNC")]
    pub fn sync(&self, access: CpuAccess, begin: bool) -> Result<u64, LinuxError> {
        if !self.is_dma_buf() {
            return Ok(0);
        }
        let mut flags = match access {
            CpuAccess::Read => DMA_BUF_SYNC_READ,
            CpuAccess::Write => DMA_BUF_SYNC_WRITE,
            CpuAccess::ReadWrite => DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE,
        };
        if !begin {
            flags |= DMA_BUF_SYNC_END;
        }
        ioctl::dma_buf_sync(self.fd.as_fd(), flags).map_err(|errno| LinuxError::Sys {
            op: "DMA_BUF_IOCTL_SYNC",
            what: format!("`{}` {access:?} {}", self.name, if begin { "start" } else { "end" }),
            errno,
        })?;
        Ok(1)
    }

    /// Maps the whole buffer, shared and writable. The mapping borrows the buffer.
    pub fn map(&self) -> Result<Mapping<'_>, LinuxError> {
        let len = usize::try_from(self.size.bytes())
            .map_err(|_| LinuxError::Invalid(format!("{} does not fit the address space", self.size)))?;
        let map = RawMap::shared(self.fd.as_fd(), len, 0, true)
            .map_err(sys("mmap", format!("`{}` ({})", self.name, self.size)))?;
        Ok(Mapping { map, _buffer: PhantomData })
    }

    /// Maps the memfd behind a udmabuf (whose own mapping hides its pages from
    /// `/proc/self/pagemap`); `None` for other sources.
    pub(crate) fn map_memfd(&self) -> Option<Result<Mapping<'_>, LinuxError>> {
        let memfd = self.memfd.as_ref()?;
        let len = usize::try_from(self.size.bytes()).ok()?;
        Some(
            RawMap::shared(memfd.as_fd(), len, 0, true)
                .map(|map| Mapping { map, _buffer: PhantomData })
                .map_err(sys("mmap", format!("memfd of `{}`", self.name))),
        )
    }

    /// Runs `f` on the buffer's bytes between `DMA_BUF_IOCTL_SYNC` start and end; the
    /// mapping lives only for the call. (If `f` panics the end is skipped; the kernel keeps
    /// no per-process sync state, so the next start recovers.)
    pub fn cpu_access<R>(&self, access: CpuAccess, f: impl FnOnce(&mut [u8]) -> R) -> Result<R, LinuxError> {
        let mut map = self.map()?;
        self.sync(access, true)?;
        let r = f(&mut map);
        self.sync(access, false)?;
        Ok(r)
    }
}

/// A CPU mapping of a [`Buffer`]; unmapped on drop, and unable to outlive the buffer.
pub struct Mapping<'a> {
    pub(crate) map: RawMap,
    _buffer: PhantomData<&'a Buffer>,
}

impl fmt::Debug for Mapping<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({:#x}+{:#x})", self.map.addr(), self.map.len())
    }
}

impl Mapping<'_> {
    /// The virtual address of the first byte.
    pub fn addr(&self) -> usize {
        self.map.addr()
    }
}

impl Deref for Mapping<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_slice()
    }
}

impl DerefMut for Mapping<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }
}
