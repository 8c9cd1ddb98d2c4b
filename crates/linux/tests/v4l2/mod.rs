//! Just enough V4L2 for the camera-to-display test: a capture node, a format,
//! DMABUF and MMAP buffers, one frame. Struct layouts are x86-64's
//! (`include/uapi/linux/videodev2.h`); every ioctl goes through one byte-buffer
//! wrapper whose length is the size the opcode encodes.
#![allow(unsafe_code, dead_code)]

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;

use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
    // CAST: the sizes here are below 1 << 14.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    (dir << 30) | (size << 16) | ((b'V' as u32) << 8) | nr as u32
}
const R: u32 = 2;
const W: u32 = 1;

/// `struct v4l2_capability`: 104 bytes.
const CAP_SIZE: usize = 104;
const VIDIOC_QUERYCAP: u32 = ioc(R, 0, CAP_SIZE);
/// `struct v4l2_format`: 208 bytes on 64-bit (the union is 8-byte aligned).
const FMT_SIZE: usize = 208;
const VIDIOC_S_FMT: u32 = ioc(R | W, 5, FMT_SIZE);
/// `struct v4l2_requestbuffers`: 20 bytes.
const REQBUFS_SIZE: usize = 20;
const VIDIOC_REQBUFS: u32 = ioc(R | W, 8, REQBUFS_SIZE);
/// `struct v4l2_buffer`: 88 bytes on 64-bit.
const BUF_SIZE: usize = 88;
const VIDIOC_QUERYBUF: u32 = ioc(R | W, 9, BUF_SIZE);
const VIDIOC_QBUF: u32 = ioc(R | W, 15, BUF_SIZE);
const VIDIOC_DQBUF: u32 = ioc(R | W, 17, BUF_SIZE);
const VIDIOC_STREAMON: u32 = ioc(W, 18, 4);
const VIDIOC_STREAMOFF: u32 = ioc(W, 19, 4);

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE`.
const BUF_TYPE_CAPTURE: u32 = 1;
/// `V4L2_MEMORY_MMAP`.
pub const MEMORY_MMAP: u32 = 1;
/// `V4L2_MEMORY_DMABUF`.
pub const MEMORY_DMABUF: u32 = 4;
/// `V4L2_CAP_VIDEO_CAPTURE`.
const CAP_VIDEO_CAPTURE: u32 = 1;
/// `V4L2_FIELD_NONE`.
const FIELD_NONE: u32 = 1;
/// `V4L2_PIX_FMT_XBGR32` ('XR24'): B, G, R, X in memory — DRM's XRGB8888.
pub const PIX_FMT_XR24: u32 = u32::from_le_bytes(*b"XR24");

struct Bytes<'a> {
    opcode: u32,
    buf: &'a mut [u8],
}

// SAFETY: the argument is `buf`, at least `_IOC_SIZE(opcode)` bytes long (checked in `ioctl`).
unsafe impl Ioctl for Bytes<'_> {
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

fn ioctl(fd: BorrowedFd<'_>, opcode: u32, buf: &mut [u8]) -> Result<i32, Errno> {
    assert!(buf.len() >= ((opcode >> 16) & 0x3fff) as usize, "ioctl buffer shorter than the opcode's size");
    // SAFETY: Bytes' contract holds (checked above); no V4L2 ioctl used here carries a pointer
    // except `m.fd`/`m.offset`, which are numbers.
    unsafe { rustix::ioctl::ioctl(fd, Bytes { opcode, buf }) }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// An open V4L2 capture node.
#[derive(Debug)]
pub struct Capture {
    file: File,
    /// `/dev/videoN`.
    pub path: PathBuf,
    /// The driver's name (QUERYCAP).
    pub driver: String,
}

/// What S_FMT settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// Pixels.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// Bytes per line.
    pub pitch: u32,
    /// Bytes per image.
    pub size: u32,
}

impl Capture {
    /// The first single-planar video capture node of `driver`.
    pub fn open(driver: &str) -> Result<Capture, String> {
        let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
            .map_err(|e| format!("/dev: {e}"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")))
            .collect();
        nodes.sort();
        for path in nodes {
            let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
            let mut cap = [0u8; CAP_SIZE];
            if ioctl(file.as_fd(), VIDIOC_QUERYCAP, &mut cap).is_err() {
                continue;
            }
            let name = String::from_utf8_lossy(&cap[..16]).trim_end_matches('\0').to_owned();
            if name == driver && u32_at(&cap, 88) & CAP_VIDEO_CAPTURE != 0 {
                return Ok(Capture { file, path, driver: name });
            }
        }
        Err(format!("no {driver} video capture node in /dev"))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// S_FMT: `width`x`height` in `fourcc`, progressive.
    pub fn set_format(&self, width: u32, height: u32, fourcc: u32) -> Result<Format, Errno> {
        let mut f = [0u8; FMT_SIZE];
        put_u32(&mut f, 0, BUF_TYPE_CAPTURE);
        put_u32(&mut f, 8, width);
        put_u32(&mut f, 12, height);
        put_u32(&mut f, 16, fourcc);
        put_u32(&mut f, 20, FIELD_NONE);
        ioctl(self.fd(), VIDIOC_S_FMT, &mut f)?;
        Ok(Format { width: u32_at(&f, 8), height: u32_at(&f, 12), pitch: u32_at(&f, 24), size: u32_at(&f, 28) })
    }

    /// REQBUFS: `count` buffers of `memory` (0 frees them).
    pub fn request_buffers(&self, count: u32, memory: u32) -> Result<u32, Errno> {
        let mut r = [0u8; REQBUFS_SIZE];
        put_u32(&mut r, 0, count);
        put_u32(&mut r, 4, BUF_TYPE_CAPTURE);
        put_u32(&mut r, 8, memory);
        ioctl(self.fd(), VIDIOC_REQBUFS, &mut r)?;
        Ok(u32_at(&r, 0))
    }

    fn buffer(index: u32, memory: u32) -> [u8; BUF_SIZE] {
        let mut b = [0u8; BUF_SIZE];
        put_u32(&mut b, 0, index);
        put_u32(&mut b, 4, BUF_TYPE_CAPTURE);
        put_u32(&mut b, 60, memory);
        b
    }

    /// QBUF of a DMABUF buffer: the driver imports `buf` (for videobuf2, attach + map).
    pub fn queue_dmabuf(&self, index: u32, buf: BorrowedFd<'_>, length: u32) -> Result<(), Errno> {
        let mut b = Self::buffer(index, MEMORY_DMABUF);
        // CAST: fds are non-negative i32; `m.fd` is an s32 at offset 64.
        put_u32(&mut b, 64, buf.as_raw_fd() as u32);
        put_u32(&mut b, 72, length);
        ioctl(self.fd(), VIDIOC_QBUF, &mut b).map(drop)
    }

    /// QUERYBUF of an MMAP buffer: `(offset, length)` to mmap.
    pub fn query_mmap(&self, index: u32) -> Result<(u64, u32), Errno> {
        let mut b = Self::buffer(index, MEMORY_MMAP);
        ioctl(self.fd(), VIDIOC_QUERYBUF, &mut b)?;
        Ok((u64::from(u32_at(&b, 64)), u32_at(&b, 72)))
    }

    /// QBUF of an MMAP buffer.
    pub fn queue_mmap(&self, index: u32) -> Result<(), Errno> {
        let mut b = Self::buffer(index, MEMORY_MMAP);
        ioctl(self.fd(), VIDIOC_QBUF, &mut b).map(drop)
    }

    /// DQBUF (blocks until a frame is done): `(index, bytesused, sequence)`.
    pub fn dequeue(&self, memory: u32) -> Result<(u32, u32, u32), Errno> {
        let mut b = Self::buffer(0, memory);
        ioctl(self.fd(), VIDIOC_DQBUF, &mut b)?;
        Ok((u32_at(&b, 0), u32_at(&b, 8), u32_at(&b, 56)))
    }

    /// STREAMON / STREAMOFF.
    pub fn stream(&self, on: bool) -> Result<(), Errno> {
        let mut t = BUF_TYPE_CAPTURE.to_ne_bytes();
        ioctl(self.fd(), if on { VIDIOC_STREAMON } else { VIDIOC_STREAMOFF }, &mut t).map(drop)
    }

    /// The node's fd, for mmap.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}
