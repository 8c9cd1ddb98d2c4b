//! Shared and anonymous memory mappings, unmapped on drop.
//!
//! A [`RawMap`] owns its address range. It does not borrow the object it maps: the
//! public types (`crate::buffer::Mapping`) add that borrow, so a mapping cannot outlive
//! its buffer.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::io::{Errno, Result};
use rustix::mm::{self, MapFlags, ProtFlags};

/// A mapping of `len` bytes, unmapped on drop.
#[derive(Debug)]
pub struct RawMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a RawMap is an address range owned by this value; nothing about it is tied to a thread.
unsafe impl Send for RawMap {}
// SAFETY: shared access only hands out `&[u8]`; mutation needs `&mut RawMap`.
unsafe impl Sync for RawMap {}

impl RawMap {
    /// Maps `len` bytes of `fd` at `offset`, shared, readable and (if `writable`) writable.
    #[doc(alias = "mmap")]
    pub fn shared(fd: BorrowedFd<'_>, len: usize, offset: u64, writable: bool) -> Result<RawMap> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
        // SAFETY: a fresh mapping at an address the kernel picks (null hint) cannot alias any Rust object.
        let p = unsafe { mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, offset)? };
        NonNull::new(p.cast()).map(|ptr| RawMap { ptr, len }).ok_or(Errno::NOMEM)
    }

    /// Maps `len` bytes of private anonymous memory, locked in RAM (`mlock`) so that its
    /// pages stay where they are.
    pub fn anonymous_locked(len: usize) -> Result<RawMap> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel picks cannot alias any Rust object.
        let p = unsafe {
            mm::mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE)?
        };
        let map = NonNull::new(p.cast()).map(|ptr| RawMap { ptr, len }).ok_or(Errno::NOMEM)?;
        // SAFETY: mlock only pins the pages of the range this RawMap owns.
        unsafe { mm::mlock(map.ptr.as_ptr().cast(), map.len)? };
        Ok(map)
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The virtual address of the first byte (for `/proc/self/pagemap`).
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The mapped bytes. Another process or a device may change them concurrently (the
    /// mapping is shared), as with any shared memory.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live mapping owned by self; the borrow of self keeps it mapped.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, writable (the mapping must have been made writable).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is a live mapping owned by self, and `&mut self` makes this the only Rust view of it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RawMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range this RawMap mapped; no slice of it outlives `self`.
        let _ = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_mapping_is_writable_and_sized() {
        let mut m = RawMap::anonymous_locked(8192).unwrap_or_else(|_| {
            // mlock may be refused by RLIMIT_MEMLOCK; the mapping itself is what is tested.
            panic!("mlock of 8 KiB refused: raise RLIMIT_MEMLOCK")
        });
        m.as_mut_slice()[8191] = 7;
        assert_eq!(m.as_slice()[8191], 7);
        assert_eq!(m.len(), 8192);
        assert_eq!(m.addr() % 4096, 0);
    }

    #[test]
    fn zero_length_mappings_are_refused() {
        assert_eq!(RawMap::anonymous_locked(0).unwrap_err(), Errno::INVAL);
    }
}
