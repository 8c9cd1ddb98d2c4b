//! The kernel ABI dmaplace speaks: dma-heap, udmabuf, dma-buf and DRM ioctls.
//!
//! Structures mirror `include/uapi/linux/{dma-heap,udmabuf,dma-buf}.h` and
//! `include/uapi/drm/{drm,vgem_drm}.h`; opcodes are computed with `rustix::ioctl::opcode`
//! the way the C headers compute them with `_IOW`/`_IOWR`, and unit tests pin them to the
//! numbers the headers give on x86-64.

use std::ffi::{CStr, c_void};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::fs::OFlags;
use rustix::io::{Errno, Result};
use rustix::ioctl::{self, IntegerSetter, Ioctl, IoctlOutput, Opcode, Setter, Updater, opcode};

// ------------------------------------------------------------------ dma-heap

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `DMA_HEAP_IOCTL_ALLOC`: `_IOWR('H', 0x0, struct dma_heap_allocation_data)`.
pub const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);

/// Allocates `len` bytes from the heap whose device node is `heap`; the new dma-buf is
/// read-write and close-on-exec.
#[doc(alias = "DMA_HEAP_IOCTL_ALLOC")]
pub fn dma_heap_alloc(heap: BorrowedFd<'_>, len: u64) -> Result<OwnedFd> {
    // CAST: O_RDWR | O_CLOEXEC fit the u32 fd_flags field (0o2000002).
    let fd_flags = (OFlags::RDWR | OFlags::CLOEXEC).bits();
    let mut data = DmaHeapAllocationData { len, fd: 0, fd_flags, heap_flags: 0 };
    // SAFETY: DMA_HEAP_IOCTL_ALLOC is a read-write opcode on a struct dma_heap_allocation_data, which `data` is.
    unsafe { ioctl::ioctl(heap, Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data))? };
    // SAFETY: on success the kernel stored a new descriptor in `data.fd` that nothing else owns.
    unsafe { owned_fd(data.fd) }
}

// ------------------------------------------------------------------ udmabuf

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `UDMABUF_FLAGS_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// `UDMABUF_CREATE`: `_IOW('u', 0x42, struct udmabuf_create)`.
pub const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);

/// `UDMABUF_CREATE` returns the new dma-buf's fd as the ioctl's return value, which none
/// of rustix's patterns models: this is that pattern.
#[derive(Debug)]
struct UdmabufCreateIoctl(UdmabufCreate);

// SAFETY: UDMABUF_CREATE only reads a struct udmabuf_create (IS_MUTATING = false) and returns a new fd or -errno.
unsafe impl Ioctl for UdmabufCreateIoctl {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        UDMABUF_CREATE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        (&raw mut self.0).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> Result<OwnedFd> {
        let fd = u32::try_from(out).map_err(|_| Errno::INVAL)?;
        // SAFETY: UDMABUF_CREATE returns a new descriptor that nothing else owns (errors never get here).
        unsafe { owned_fd(fd) }
    }
}

/// Turns `size` bytes at `offset` of the sealed memfd `memfd` into a close-on-exec
/// dma-buf. The caller checks udmabuf's preconditions first (see `crate::udmabuf`).
#[doc(alias = "UDMABUF_CREATE")]
pub fn udmabuf_create(dev: BorrowedFd<'_>, memfd: BorrowedFd<'_>, offset: u64, size: u64) -> Result<OwnedFd> {
    let memfd = u32::try_from(memfd.as_raw_fd()).map_err(|_| Errno::BADF)?;
    let arg = UdmabufCreateIoctl(UdmabufCreate { memfd, flags: UDMABUF_FLAGS_CLOEXEC, offset, size });
    // SAFETY: UdmabufCreateIoctl passes a struct udmabuf_create to UDMABUF_CREATE and takes ownership of the returned fd.
    unsafe { ioctl::ioctl(dev, arg) }
}

// ------------------------------------------------------------------ dma-buf

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug)]
struct DmaBufSync {
    flags: u64,
}

/// `DMA_BUF_SYNC_READ`.
pub const DMA_BUF_SYNC_READ: u64 = 1;
/// `DMA_BUF_SYNC_WRITE`.
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
/// `DMA_BUF_SYNC_END` (`START` is 0).
pub const DMA_BUF_SYNC_END: u64 = 4;

/// `DMA_BUF_IOCTL_SYNC`: `_IOW('b', 0, struct dma_buf_sync)`.
pub const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);
/// `DMA_BUF_SET_NAME_B`: `_IOW('b', 1, u64)`, the 64-bit spelling of `DMA_BUF_SET_NAME`
/// (its argument is a pointer to the name).
pub const DMA_BUF_SET_NAME: Opcode = opcode::write::<u64>(b'b', 1);
/// `DMA_BUF_NAME_LEN`: names are at most this many bytes including the NUL.
pub const DMA_BUF_NAME_LEN: usize = 32;

/// Brackets CPU access to a dma-buf (`flags`: READ/WRITE, with END to finish). The
/// kernel may ask to be called again (EINTR, EAGAIN): this restarts until it is done.
#[doc(alias = "DMA_BUF_IOCTL_SYNC")]
pub fn dma_buf_sync(buf: BorrowedFd<'_>, flags: u64) -> Result<()> {
    loop {
        // SAFETY: DMA_BUF_IOCTL_SYNC is a write opcode that reads a struct dma_buf_sync, which Setter passes.
        let r = unsafe { ioctl::ioctl(buf, Setter::<DMA_BUF_IOCTL_SYNC, _>::new(DmaBufSync { flags })) };
        match r {
            Err(Errno::INTR | Errno::AGAIN) => continue,
            other => return other,
        }
    }
}

/// Names a dma-buf: the name shows in `/sys/kernel/debug/dma_buf/bufinfo` and in
/// `/proc/<pid>/fdinfo`. `name` must be shorter than [`DMA_BUF_NAME_LEN`].
#[doc(alias = "DMA_BUF_SET_NAME")]
pub fn dma_buf_set_name(buf: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    if name.to_bytes_with_nul().len() > DMA_BUF_NAME_LEN {
        return Err(Errno::INVAL);
    }
    // SAFETY: DMA_BUF_SET_NAME takes a pointer to a NUL-terminated string, which `name` is and outlives the call.
    unsafe { ioctl::ioctl(buf, IntegerSetter::<DMA_BUF_SET_NAME>::new_pointer(name.as_ptr().cast_mut().cast())) }
}

// ------------------------------------------------------------------ DRM

/// `struct drm_version`.
#[repr(C)]
#[derive(Debug)]
struct DrmVersion {
    major: i32,
    minor: i32,
    patchlevel: i32,
    name_len: usize,
    name: *mut u8,
    date_len: usize,
    date: *mut u8,
    desc_len: usize,
    desc: *mut u8,
}

/// `DRM_IOCTL_VERSION`: `DRM_IOWR(0x00, struct drm_version)`.
pub const DRM_IOCTL_VERSION: Opcode = opcode::read_write::<DrmVersion>(b'd', 0x00);

/// The DRM driver's name (`vgem`, `vkms`, `cirrus-qemu`, ...), truncated to 64 bytes.
#[doc(alias = "DRM_IOCTL_VERSION")]
pub fn drm_driver_name(card: BorrowedFd<'_>) -> Result<String> {
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        major: 0,
        minor: 0,
        patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: DRM_IOCTL_VERSION fills a struct drm_version, writing at most name_len (64) bytes to `name` and none to date/desc (length 0).
    unsafe { ioctl::ioctl(card, Updater::<DRM_IOCTL_VERSION, _>::new(&mut v))? };
    let n = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..n]).into_owned())
}

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug)]
struct DrmPrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}

/// `DRM_IOCTL_PRIME_FD_TO_HANDLE`: `DRM_IOWR(0x2e, struct drm_prime_handle)`.
pub const DRM_IOCTL_PRIME_FD_TO_HANDLE: Opcode = opcode::read_write::<DrmPrimeHandle>(b'd', 0x2e);

/// Imports the dma-buf `buf` into the DRM device `card` and returns the GEM handle
/// (the import attaches the device to the buffer).
#[doc(alias = "DRM_IOCTL_PRIME_FD_TO_HANDLE")]
pub fn drm_prime_fd_to_handle(card: BorrowedFd<'_>, buf: BorrowedFd<'_>) -> Result<u32> {
    let mut p = DrmPrimeHandle { handle: 0, flags: 0, fd: buf.as_raw_fd() };
    // SAFETY: DRM_IOCTL_PRIME_FD_TO_HANDLE is a read-write opcode on a struct drm_prime_handle, which `p` is.
    unsafe { ioctl::ioctl(card, Updater::<DRM_IOCTL_PRIME_FD_TO_HANDLE, _>::new(&mut p))? };
    Ok(p.handle)
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug)]
struct DrmGemClose {
    handle: u32,
    pad: u32,
}

/// `DRM_IOCTL_GEM_CLOSE`: `DRM_IOW(0x09, struct drm_gem_close)`.
pub const DRM_IOCTL_GEM_CLOSE: Opcode = opcode::write::<DrmGemClose>(b'd', 0x09);

/// Releases a GEM handle.
#[doc(alias = "DRM_IOCTL_GEM_CLOSE")]
pub fn drm_gem_close(card: BorrowedFd<'_>, handle: u32) -> Result<()> {
    // SAFETY: DRM_IOCTL_GEM_CLOSE is a write opcode that reads a struct drm_gem_close, which Setter passes.
    unsafe { ioctl::ioctl(card, Setter::<DRM_IOCTL_GEM_CLOSE, _>::new(DrmGemClose { handle, pad: 0 })) }
}

/// `struct drm_vgem_fence_attach`.
#[repr(C)]
#[derive(Debug)]
struct VgemFenceAttach {
    handle: u32,
    flags: u32,
    out_fence: u32,
    pad: u32,
}

/// `struct drm_vgem_fence_signal`.
#[repr(C)]
#[derive(Debug)]
struct VgemFenceSignal {
    fence: u32,
    flags: u32,
}

/// `VGEM_FENCE_WRITE`: the fence is exclusive (a write).
pub const VGEM_FENCE_WRITE: u32 = 0x1;
/// `DRM_IOCTL_VGEM_FENCE_ATTACH`: `DRM_IOWR(DRM_COMMAND_BASE + 0x1, ...)`.
pub const DRM_IOCTL_VGEM_FENCE_ATTACH: Opcode = opcode::read_write::<VgemFenceAttach>(b'd', 0x41);
/// `DRM_IOCTL_VGEM_FENCE_SIGNAL`: `DRM_IOW(DRM_COMMAND_BASE + 0x2, ...)`.
pub const DRM_IOCTL_VGEM_FENCE_SIGNAL: Opcode = opcode::write::<VgemFenceSignal>(b'd', 0x42);

/// Attaches a new vgem fence to the buffer behind `handle` (on vgem's `card`) and returns
/// the fence's id. Until it is signalled (or vgem's 10 s timeout), `poll()` on the
/// buffer's dma-buf waits.
#[doc(alias = "DRM_IOCTL_VGEM_FENCE_ATTACH")]
pub fn vgem_fence_attach(card: BorrowedFd<'_>, handle: u32, flags: u32) -> Result<u32> {
    let mut a = VgemFenceAttach { handle, flags, out_fence: 0, pad: 0 };
    // SAFETY: DRM_IOCTL_VGEM_FENCE_ATTACH is a read-write opcode on a struct drm_vgem_fence_attach, which `a` is.
    unsafe { ioctl::ioctl(card, Updater::<DRM_IOCTL_VGEM_FENCE_ATTACH, _>::new(&mut a))? };
    Ok(a.out_fence)
}

/// Signals a vgem fence.
#[doc(alias = "DRM_IOCTL_VGEM_FENCE_SIGNAL")]
pub fn vgem_fence_signal(card: BorrowedFd<'_>, fence: u32) -> Result<()> {
    // SAFETY: DRM_IOCTL_VGEM_FENCE_SIGNAL is a write opcode that reads a struct drm_vgem_fence_signal, which Setter passes.
    unsafe { ioctl::ioctl(card, Setter::<DRM_IOCTL_VGEM_FENCE_SIGNAL, _>::new(VgemFenceSignal { fence, flags: 0 })) }
}

// ------------------------------------------------------------------ helpers

/// Takes ownership of a descriptor the kernel just created for us.
///
/// # Safety
///
/// `fd` must be an open descriptor of this process that nothing else owns.
unsafe fn owned_fd(fd: u32) -> Result<OwnedFd> {
    let raw = RawFd::try_from(fd).map_err(|_| Errno::BADF)?;
    // SAFETY: the caller guarantees `raw` is open and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the C headers give on x86-64 (`printf("%#lx", DMA_HEAP_IOCTL_ALLOC)`).
    #[test]
    fn opcodes_match_the_c_headers() {
        assert_eq!(u64::from(DMA_HEAP_IOCTL_ALLOC), 0xc018_4800);
        assert_eq!(u64::from(UDMABUF_CREATE), 0x4018_7542);
        assert_eq!(u64::from(DMA_BUF_IOCTL_SYNC), 0x4008_6200);
        assert_eq!(u64::from(DMA_BUF_SET_NAME), 0x4008_6201);
        assert_eq!(u64::from(DRM_IOCTL_VERSION), 0xc040_6400);
        assert_eq!(u64::from(DRM_IOCTL_PRIME_FD_TO_HANDLE), 0xc00c_642e);
        assert_eq!(u64::from(DRM_IOCTL_GEM_CLOSE), 0x4008_6409);
        assert_eq!(u64::from(DRM_IOCTL_VGEM_FENCE_ATTACH), 0xc010_6441);
        assert_eq!(u64::from(DRM_IOCTL_VGEM_FENCE_SIGNAL), 0x4008_6442);
    }

    #[test]
    fn long_names_are_refused_before_the_ioctl() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let name = c"a name that is longer than thirty-one bytes";
        assert_eq!(dma_buf_set_name(std::os::fd::AsFd::as_fd(&f), name), Err(Errno::INVAL));
    }
}
