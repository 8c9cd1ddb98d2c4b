//! `/dev/dmaplace`: CREATE and DECLARE.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;

use super::{DEV_DMAPLACE, abi, get_u32, get_u64, ioctl_bytes, open_rw, put_name, put_u32, put_u64};

/// A buffer CREATE returned: its dma-buf fd and its id in debugfs.
#[derive(Debug)]
pub struct Created {
    /// The dma-buf.
    pub fd: OwnedFd,
    /// The id debugfs lists it under.
    pub id: u64,
}

impl AsFd for Created {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `/dev/dmaplace`.
#[derive(Debug)]
pub struct Dmaplace {
    fd: OwnedFd,
}

/// An ioctl whose argument is a raw pointer (for [`Dmaplace::create_unwritable`]).
struct RawPtrIoctl {
    opcode: u32,
    ptr: *mut std::ffi::c_void,
}

// SAFETY: the pointer covers a mapping of at least the opcode's size, owned by the caller for the
// call (create_unwritable maps a whole page for a 64-byte struct).
unsafe impl rustix::ioctl::Ioctl for RawPtrIoctl {
    type Output = i32;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.ptr
    }

    unsafe fn output_from_ptr(out: rustix::ioctl::IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

/// The bytes of a CREATE request (for tests that corrupt them).
pub fn create_request(size: u64, fd_flags: u32, flags: u64, name: &str) -> Result<[u8; abi::CREATE_SIZE], Errno> {
    let mut b = [0u8; abi::CREATE_SIZE];
    put_u64(&mut b, abi::create::SIZE, size);
    put_u32(&mut b, abi::create::FD_FLAGS, fd_flags);
    put_u64(&mut b, abi::create::FLAGS, flags);
    put_name(&mut b, abi::create::NAME, abi::create::NAME_LEN, name)?;
    Ok(b)
}

/// The bytes of a DECLARE request.
pub fn declare_request(
    device: &str,
    max_segments: u32,
    flags: u32,
    alignment: u64,
) -> Result<[u8; abi::DECLARE_SIZE], Errno> {
    let mut b = [0u8; abi::DECLARE_SIZE];
    put_name(&mut b, abi::declare::DEVICE, abi::declare::DEVICE_LEN, device)?;
    put_u32(&mut b, abi::declare::MAX_SEGMENTS, max_segments);
    put_u32(&mut b, abi::declare::FLAGS, flags);
    put_u64(&mut b, abi::declare::ALIGNMENT, alignment);
    Ok(b)
}

/// `fd_flags` for CREATE: read-write, close-on-exec.
pub const FD_FLAGS_RDWR_CLOEXEC: u32 = 0o2000002;

impl Dmaplace {
    /// Opens `/dev/dmaplace`.
    pub fn open() -> std::io::Result<Dmaplace> {
        Ok(Dmaplace { fd: open_rw(DEV_DMAPLACE)? })
    }

    /// CREATE: a `size`-byte dma-buf with no pages behind it yet.
    #[doc(alias = "DMAPLACE_IOCTL_CREATE")]
    pub fn create(&self, size: u64, name: &str) -> Result<Created, Errno> {
        self.create_with_flags(size, name, 0)
    }

    /// CREATE with `flags` (`abi::CREATE_WRITECOMBINE`).
    pub fn create_with_flags(&self, size: u64, name: &str, flags: u64) -> Result<Created, Errno> {
        let mut b = create_request(size, FD_FLAGS_RDWR_CLOEXEC, flags, name)?;
        ioctl_bytes(self.fd.as_fd(), abi::IOCTL_CREATE, &mut b)?;
        let fd = get_u32(&b, abi::create::FD);
        let id = get_u64(&b, abi::create::ID);
        // CAST: the kernel returned a non-negative fd.
        let raw = fd as i32;
        if raw < 0 {
            return Err(Errno::BADF);
        }
        // SAFETY: CREATE installed this fd for us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Created { fd, id })
    }

    /// DECLARE: `device` needs at most `max_segments` segments (0: no limit, 1:
    /// contiguous) and its buffers aligned to `alignment` (0: 4 KiB).
    #[doc(alias = "DMAPLACE_IOCTL_DECLARE")]
    pub fn declare(&self, device: &str, max_segments: u32, alignment: u64) -> Result<(), Errno> {
        self.declare_with_segment_size(device, max_segments, alignment, 0)
    }

    /// DECLARE with a `max_segment_size` too (0: the device's own), for a driver
    /// that never called `dma_set_max_seg_size` (vivid with videobuf2-dma-contig).
    pub fn declare_with_segment_size(
        &self,
        device: &str,
        max_segments: u32,
        alignment: u64,
        max_segment_size: u64,
    ) -> Result<(), Errno> {
        let mut b = declare_request(device, max_segments, 0, alignment)?;
        put_u64(&mut b, abi::declare::MAX_SEGMENT_SIZE, max_segment_size);
        ioctl_bytes(self.fd.as_fd(), abi::IOCTL_DECLARE, &mut b).map(drop)
    }

    /// DECLARE with `DECLARE_FORGET`: drops `device`'s declaration.
    pub fn forget(&self, device: &str) -> Result<(), Errno> {
        let mut b = declare_request(device, 0, abi::DECLARE_FORGET, 0)?;
        ioctl_bytes(self.fd.as_fd(), abi::IOCTL_DECLARE, &mut b).map(drop)
    }

    /// Any `/dev/dmaplace` ioctl with raw bytes, for tests of the validation
    /// (none of its ioctls carries a pointer). On success with CREATE, the fd the
    /// kernel wrote into `buf` is the caller's to close ([`Dmaplace::take_fd`]).
    pub fn raw(&self, opcode: u32, buf: &mut [u8]) -> Result<i32, Errno> {
        ioctl_bytes(self.fd.as_fd(), opcode, buf)
    }

    /// CREATE with the request in memory the caller may read but not write, so
    /// that copying the result out fails (`EFAULT`). The module must then install
    /// no fd and release the buffer; returns the ioctl's result.
    pub fn create_unwritable(&self, request: &[u8; abi::CREATE_SIZE]) -> Result<i32, Errno> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
        let len = 4096;
        // SAFETY: a fresh anonymous mapping aliases nothing; it is only written before the
        // mprotect and unmapped before returning.
        unsafe {
            let p = rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )?;
            std::ptr::copy_nonoverlapping(request.as_ptr(), p.cast::<u8>(), request.len());
            let r = rustix::mm::mprotect(p, len, MprotectFlags::READ).and_then(|()| {
                rustix::ioctl::ioctl(self.fd.as_fd(), RawPtrIoctl { opcode: abi::IOCTL_CREATE, ptr: p })
            });
            let _ = rustix::mm::munmap(p, len);
            r
        }
    }

    /// Takes ownership of the fd a successful raw CREATE wrote into `buf`.
    pub fn take_fd(buf: &[u8]) -> Option<OwnedFd> {
        // CAST: an fd the kernel wrote.
        let raw = get_u32(buf, abi::create::FD) as i32;
        // SAFETY: a successful CREATE installed this fd for us and nothing else owns it.
        (raw > 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
    }
}
