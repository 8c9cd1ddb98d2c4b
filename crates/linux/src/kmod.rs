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
//! The ABI numbers come from `kernel/abi.rs` itself (included below), so the two
//! sides cannot drift. `unsafe` is confined to one ioctl pattern (a byte buffer
//! at least as long as the size its opcode encodes) and to taking ownership of
//! the fds CREATE installs.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use dmaplace_core::effective::Effective as CoreEffective;
use dmaplace_core::model::{Device, DeviceClass, Iommu, LayoutCaps, Placement};
use dmaplace_core::platform::Region;
use dmaplace_core::requirements::Requirements;
use dmaplace_core::{
    BoundaryMask, BufferDesc, CacheMode, ConflictKind, DmaMask, PageSize, PageSizes, PhysAddr, PhysRange, Plan,
    Platform, Request, Size, SolveError, Usage, Window, solve,
};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// The ABI shared with the modules (`kernel/abi.rs`).
#[path = "../../../kernel/abi.rs"]
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
fn ioctl_bytes(fd: BorrowedFd<'_>, opcode: u32, buf: &mut [u8]) -> Result<i32, Errno> {
    if buf.len() < ioc_size(opcode) {
        return Err(Errno::INVAL);
    }
    // SAFETY: BytesIoctl's contract holds: `buf` covers the opcode's size (checked above).
    unsafe { rustix::ioctl::ioctl(fd, BytesIoctl { opcode, buf }) }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
fn put_name(b: &mut [u8], off: usize, len: usize, name: &str) -> Result<(), Errno> {
    if name.len() >= len {
        return Err(Errno::NAMETOOLONG);
    }
    b[off..off + name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

fn open_rw(path: &str) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(OpenOptions::new().read(true).write(true).open(path)?))
}

// ------------------------------------------------------------------ /dev/dmaplace

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
        let mut b = create_request(size, FD_FLAGS_RDWR_CLOEXEC, 0, name)?;
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
        let mut b = declare_request(device, max_segments, 0, alignment)?;
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

    /// Takes ownership of the fd a successful raw CREATE wrote into `buf`.
    pub fn take_fd(buf: &[u8]) -> Option<OwnedFd> {
        // CAST: an fd the kernel wrote.
        let raw = get_u32(buf, abi::create::FD) as i32;
        // SAFETY: a successful CREATE installed this fd for us and nothing else owns it.
        (raw > 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

// ------------------------------------------------------------------ /dev/dmaplace_testdev

/// A fake importer to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeDevice {
    /// Its name (at most 31 bytes).
    pub name: String,
    /// `dma_mask` (and the coherent mask).
    pub dma_mask: u64,
    /// `bus_dma_limit`; 0: none.
    pub bus_dma_limit: u64,
    /// `dma_parms->max_segment_size`; 0: the default (64 KiB).
    pub max_segment_size: u32,
    /// `dma_parms->segment_boundary_mask`; 0: the default (none).
    pub segment_boundary_mask: u64,
}

impl FakeDevice {
    /// A device named `name` with a `bits`-wide mask and segments of any length
    /// (`dma_set_max_seg_size(dev, UINT_MAX)`, as most DRM drivers do).
    pub fn new(name: &str, bits: u32) -> FakeDevice {
        FakeDevice {
            name: name.to_owned(),
            dma_mask: if bits >= 64 { u64::MAX } else { (1 << bits) - 1 },
            bus_dma_limit: 0,
            max_segment_size: u32::MAX,
            segment_boundary_mask: 0,
        }
    }

    /// What the module will read for this device once attached, given its
    /// declaration (`(max_segments, alignment)`); for conflict checks.
    pub fn attach_info(&self, declared: (u32, u64)) -> AttachInfo {
        AttachInfo {
            idx: 0,
            dev: self.name.clone(),
            dynamic: true,
            pinned: false,
            maps: 0,
            served: None,
            dma_mask: self.dma_mask,
            bus_dma_limit: self.bus_dma_limit,
            max_segment_size: if self.max_segment_size == 0 { 1 << 16 } else { u64::from(self.max_segment_size) },
            segment_boundary_mask: if self.segment_boundary_mask == 0 { u64::MAX } else { self.segment_boundary_mask },
            iommu: false,
            pgsize_bitmap: 0,
            aperture_end: 0,
            declared_max_segments: declared.0,
            declared_alignment: declared.1,
        }
    }
}

/// What a TD_MAP returned: the DMA side of the importer's sg table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgDma {
    /// `(dma_address, dma_length)` of each DMA entry.
    pub entries: Vec<(u64, u64)>,
    /// Entries of the table the exporter built.
    pub orig_nents: u32,
}

/// TD_STATUS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachStatus {
    /// `move_notify` calls seen (dynamic attachments).
    pub move_notifies: u64,
    /// Live mappings.
    pub maps: u32,
    /// The attach flags.
    pub flags: u32,
}

/// `/dev/dmaplace_testdev`. Attachments belong to this open file and are torn
/// down when it is dropped.
#[derive(Debug)]
pub struct TestDev {
    fd: OwnedFd,
}

impl TestDev {
    /// Opens `/dev/dmaplace_testdev`.
    pub fn open() -> std::io::Result<TestDev> {
        Ok(TestDev { fd: open_rw(DEV_TESTDEV)? })
    }

    /// Creates a fake importer (`EEXIST` if the name is taken).
    #[doc(alias = "DMAPLACE_TD_CREATE_DEVICE")]
    pub fn create_device(&self, d: &FakeDevice) -> Result<(), Errno> {
        let mut b = [0u8; abi::TD_DEVICE_SIZE];
        put_name(&mut b, abi::td_device::NAME, abi::td_device::NAME_LEN, &d.name)?;
        put_u64(&mut b, abi::td_device::DMA_MASK, d.dma_mask);
        put_u64(&mut b, abi::td_device::BUS_DMA_LIMIT, d.bus_dma_limit);
        put_u32(&mut b, abi::td_device::MAX_SEGMENT_SIZE, d.max_segment_size);
        put_u64(&mut b, abi::td_device::SEGMENT_BOUNDARY_MASK, d.segment_boundary_mask);
        ioctl_bytes(self.fd.as_fd(), abi::TD_CREATE_DEVICE, &mut b).map(drop)
    }

    /// Creates `d` unless a device of that name exists already.
    pub fn ensure_device(&self, d: &FakeDevice) -> Result<(), Errno> {
        match self.create_device(d) {
            Err(Errno::EXIST) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Attaches `buf` to `device` (a fake device or a PCI device name); dynamic
    /// importers map nothing until [`TestDev::map`]. Returns a handle.
    #[doc(alias = "DMAPLACE_TD_ATTACH")]
    pub fn attach(&self, buf: BorrowedFd<'_>, device: &str, dynamic: bool) -> Result<u64, Errno> {
        let mut b = [0u8; abi::TD_ATTACH_SIZE];
        put_name(&mut b, abi::td_attach::DEVICE, abi::td_attach::DEVICE_LEN, device)?;
        // CAST: fds are non-negative i32; the field is an s32.
        put_u32(&mut b, abi::td_attach::FD, std::os::fd::AsRawFd::as_raw_fd(&buf) as u32);
        put_u32(&mut b, abi::td_attach::FLAGS, if dynamic { abi::TD_ATTACH_DYNAMIC } else { 0 });
        ioctl_bytes(self.fd.as_fd(), abi::TD_ATTACH, &mut b)?;
        Ok(get_u64(&b, abi::td_attach::HANDLE))
    }

    /// Maps the attachment (bidirectional) and returns the DMA side of its table.
    #[doc(alias = "DMAPLACE_TD_MAP")]
    pub fn map(&self, handle: u64) -> Result<SgDma, Errno> {
        let mut cap = 1024usize;
        loop {
            let mut out = vec![0u8; cap * abi::TD_ENTRY_SIZE];
            let mut b = [0u8; abi::TD_MAP_SIZE];
            put_u64(&mut b, abi::td_map::HANDLE, handle);
            // CAST: a user pointer into `out`, which outlives the call.
            put_u64(&mut b, abi::td_map::ENTRIES, out.as_mut_ptr() as u64);
            put_u32(&mut b, abi::td_map::MAX_ENTRIES, u32::try_from(cap).map_err(|_| Errno::NOMEM)?);
            ioctl_bytes(self.fd.as_fd(), abi::TD_MAP, &mut b)?;
            // CAST: u32 -> usize.
            let nents = get_u32(&b, abi::td_map::NENTS) as usize;
            if nents > cap {
                // Too small: undo this mapping and retry with room for all entries.
                self.unmap(handle)?;
                cap = nents;
                continue;
            }
            let entries =
                out.chunks_exact(abi::TD_ENTRY_SIZE).take(nents).map(|e| (get_u64(e, 0), get_u64(e, 8))).collect();
            return Ok(SgDma { entries, orig_nents: get_u32(&b, abi::td_map::ORIG_NENTS) });
        }
    }

    fn handle_op(&self, opcode: u32, handle: u64) -> Result<(), Errno> {
        let mut b = [0u8; abi::TD_HANDLE_SIZE];
        put_u64(&mut b, 0, handle);
        ioctl_bytes(self.fd.as_fd(), opcode, &mut b).map(drop)
    }

    /// Unmaps the attachment's latest mapping.
    #[doc(alias = "DMAPLACE_TD_UNMAP")]
    pub fn unmap(&self, handle: u64) -> Result<(), Errno> {
        self.handle_op(abi::TD_UNMAP, handle)
    }

    /// Unmaps everything and detaches.
    #[doc(alias = "DMAPLACE_TD_DETACH")]
    pub fn detach(&self, handle: u64) -> Result<(), Errno> {
        self.handle_op(abi::TD_DETACH, handle)
    }

    /// The attachment's `move_notify` count and mappings.
    #[doc(alias = "DMAPLACE_TD_STATUS")]
    pub fn status(&self, handle: u64) -> Result<AttachStatus, Errno> {
        let mut b = [0u8; abi::TD_STATUS_SIZE];
        put_u64(&mut b, abi::td_status::HANDLE, handle);
        ioctl_bytes(self.fd.as_fd(), abi::TD_STATUS, &mut b)?;
        Ok(AttachStatus {
            move_notifies: get_u64(&b, abi::td_status::MOVE_NOTIFIES),
            maps: get_u32(&b, abi::td_status::MAPS),
            flags: get_u32(&b, abi::td_status::FLAGS),
        })
    }
}

// ------------------------------------------------------------------ debugfs

/// One attachment as debugfs lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    /// Index in the buffer's attachment list (bit `idx` of a cause set).
    pub idx: usize,
    /// The importing device's name.
    pub dev: String,
    /// A dynamic importer.
    pub dynamic: bool,
    /// Pinned.
    pub pinned: bool,
    /// Live mappings.
    pub maps: u32,
    /// Whether the current backing serves it (`None`: no backing).
    pub served: Option<bool>,
    /// `dma_get_mask`.
    pub dma_mask: u64,
    /// `bus_dma_limit`.
    pub bus_dma_limit: u64,
    /// `dma_get_max_seg_size`.
    pub max_segment_size: u64,
    /// `dma_get_seg_boundary`.
    pub segment_boundary_mask: u64,
    /// Behind an IOMMU (DMA domain).
    pub iommu: bool,
    /// The domain's `pgsize_bitmap`.
    pub pgsize_bitmap: u64,
    /// The domain's aperture end.
    pub aperture_end: u64,
    /// DECLAREd max segments (0: none).
    pub declared_max_segments: u32,
    /// DECLAREd alignment (0: default).
    pub declared_alignment: u64,
}

/// The merged plan as the module reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PlanInfo {
    /// Attachments merged.
    pub devices: usize,
    /// Bytes.
    pub size: u64,
    /// `none`, `no_devices` or `segment_limit`.
    pub conflict: String,
    /// One segment.
    pub contiguous: bool,
    /// The window's end and causes.
    pub window_end: (u64, Vec<usize>),
    /// Max segments and causes.
    pub max_segments: (Option<u64>, Vec<usize>),
    /// Max segment size and causes.
    pub max_segment_size: (Option<u64>, Vec<usize>),
    /// Segment boundary mask and causes.
    pub segment_boundary: (u64, Vec<usize>),
    /// Alignment and causes.
    pub alignment: (u64, Vec<usize>),
    /// Granule and causes.
    pub granule: (u64, Vec<usize>),
    /// Minimum chunk for the segment limit.
    pub min_chunk: Option<u64>,
    /// `contiguous` or `orders:9,0`.
    pub strategy: String,
    /// Preferred chunk sizes with the devices whose IOMMU maps each in one entry.
    pub chunk_prefs: Vec<(u64, Vec<usize>)>,
}

/// One chunk of the backing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Physical address.
    pub phys: u64,
    /// Bytes of the buffer it holds.
    pub len: u64,
    /// Allocation order.
    pub order: u32,
    /// `buddy` or `cma`.
    pub source: String,
}

/// One buffer as debugfs lists it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BufferInfo {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Whether pages exist.
    pub has_backing: bool,
    /// (Re)allocations.
    pub generation: u32,
    /// Migrations for late attachers.
    pub migrations: u32,
    /// EBUSY refusals.
    pub refused: u32,
    /// Live mappings.
    pub maps: u32,
    /// Live vmaps.
    pub vmaps: u32,
    /// mmap calls.
    pub mmaps: u32,
    /// Attachments in order.
    pub attachments: Vec<AttachInfo>,
    /// The merged plan.
    pub plan: PlanInfo,
    /// The human-readable reasons (`# ...` lines).
    pub why: Vec<String>,
    /// The backing's chunks in buffer order.
    pub segments: Vec<SegmentInfo>,
}

/// The whole debugfs file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The first byte above RAM, as the module sees it.
    pub ram_end: u64,
    /// Bytes of backing allocated now over all buffers.
    pub live_bytes: u64,
    /// Chunks allocated since load.
    pub chunks_allocated: u64,
    /// Chunks freed since load.
    pub chunks_freed: u64,
    /// `(device, max_segments, alignment)` declarations.
    pub declarations: Vec<(String, u32, u64)>,
    /// Buffers.
    pub buffers: Vec<BufferInfo>,
}

impl Snapshot {
    /// Reads and parses the debugfs file.
    pub fn read() -> Result<Snapshot, String> {
        let text = std::fs::read_to_string(DEBUGFS).map_err(|e| format!("cannot read {DEBUGFS}: {e}"))?;
        parse(&text)
    }

    /// The buffer with id `id`.
    pub fn buffer(&self, id: u64) -> Option<&BufferInfo> {
        self.buffers.iter().find(|b| b.id == id)
    }
}

fn num(v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| format!("bad number {v:?}: {e}"))
}

fn opt_num(v: &str) -> Result<Option<u64>, String> {
    if v == "none" { Ok(None) } else { num(v).map(Some) }
}

fn list(v: &str) -> Result<Vec<usize>, String> {
    if v == "-" {
        return Ok(Vec::new());
    }
    v.split(',').map(|x| x.parse::<usize>().map_err(|e| format!("bad index {x:?}: {e}"))).collect()
}

struct Kv<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Kv<'a> {
    fn get(&self, k: &str) -> Result<&'a str, String> {
        self.0.iter().find(|(key, _)| *key == k).map(|(_, v)| *v).ok_or_else(|| format!("missing {k}"))
    }
    fn n(&self, k: &str) -> Result<u64, String> {
        num(self.get(k)?)
    }
    fn n32(&self, k: &str) -> Result<u32, String> {
        u32::try_from(self.n(k)?).map_err(|e| format!("{k}: {e}"))
    }
    fn b(&self, k: &str) -> Result<bool, String> {
        Ok(self.n(k)? != 0)
    }
}

/// Parses the text of the debugfs file.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let mut s = Snapshot::default();
    for (lineno, line) in text.lines().enumerate() {
        let ctx = |e: String| format!("{DEBUGFS} line {}: {e}: {line}", lineno + 1);
        if let Some(rest) = line.strip_prefix("# buf ") {
            let id = rest.split(':').next().unwrap_or("").trim();
            let id = num(id).map_err(ctx)?;
            if let Some(b) = s.buffers.iter_mut().find(|b| b.id == id) {
                b.why.push(line.to_owned());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(kind) = words.next() else { continue };
        let kv = Kv(words.filter_map(|w| w.split_once('=')).collect());
        let r: Result<(), String> = (|| {
            match kind {
                "dmaplace" => {
                    s.ram_end = kv.n("ram_end")?;
                    s.live_bytes = kv.n("live_bytes")?;
                    s.chunks_allocated = kv.n("chunks_allocated")?;
                    s.chunks_freed = kv.n("chunks_freed")?;
                }
                "declare" => {
                    s.declarations.push((kv.get("dev")?.to_owned(), kv.n32("max_segments")?, kv.n("alignment")?))
                }
                "buffer" => s.buffers.push(BufferInfo {
                    id: kv.n("id")?,
                    name: kv.get("name")?.to_owned(),
                    size: kv.n("size")?,
                    has_backing: kv.b("backing")?,
                    generation: kv.n32("generation")?,
                    migrations: kv.n32("migrations")?,
                    refused: kv.n32("refused")?,
                    maps: kv.n32("maps")?,
                    vmaps: kv.n32("vmaps")?,
                    mmaps: kv.n32("mmaps")?,
                    ..BufferInfo::default()
                }),
                "attach" | "plan" | "chunkpref" | "segment" => {
                    let id = kv.n("buf")?;
                    let b = s.buffers.iter_mut().find(|b| b.id == id).ok_or("a line for an unknown buffer")?;
                    match kind {
                        "attach" => b.attachments.push(AttachInfo {
                            idx: usize::try_from(kv.n("idx")?).map_err(|e| e.to_string())?,
                            dev: kv.get("dev")?.to_owned(),
                            dynamic: kv.b("dynamic")?,
                            pinned: kv.b("pinned")?,
                            maps: kv.n32("maps")?,
                            served: match kv.get("served")? {
                                "-" => None,
                                v => Some(num(v)? != 0),
                            },
                            dma_mask: kv.n("dma_mask")?,
                            bus_dma_limit: kv.n("bus_dma_limit")?,
                            max_segment_size: kv.n("max_segment_size")?,
                            segment_boundary_mask: kv.n("segment_boundary_mask")?,
                            iommu: kv.b("iommu")?,
                            pgsize_bitmap: kv.n("pgsize_bitmap")?,
                            aperture_end: kv.n("aperture_end")?,
                            declared_max_segments: kv.n32("declared_max_segments")?,
                            declared_alignment: kv.n("declared_alignment")?,
                        }),
                        "plan" => {
                            b.plan = PlanInfo {
                                devices: usize::try_from(kv.n("devices")?).map_err(|e| e.to_string())?,
                                size: kv.n("size")?,
                                conflict: kv.get("conflict")?.to_owned(),
                                contiguous: kv.b("contiguous")?,
                                window_end: (kv.n("window_end")?, list(kv.get("window_causes")?)?),
                                max_segments: (
                                    opt_num(kv.get("max_segments")?)?,
                                    list(kv.get("max_segments_causes")?)?,
                                ),
                                max_segment_size: (
                                    opt_num(kv.get("max_segment_size")?)?,
                                    list(kv.get("max_segment_size_causes")?)?,
                                ),
                                segment_boundary: (
                                    kv.n("segment_boundary")?,
                                    list(kv.get("segment_boundary_causes")?)?,
                                ),
                                alignment: (kv.n("alignment")?, list(kv.get("alignment_causes")?)?),
                                granule: (kv.n("granule")?, list(kv.get("granule_causes")?)?),
                                min_chunk: opt_num(kv.get("min_chunk")?)?,
                                strategy: kv.get("strategy")?.to_owned(),
                                chunk_prefs: Vec::new(),
                            }
                        }
                        "chunkpref" => b.plan.chunk_prefs.push((kv.n("size")?, list(kv.get("devices")?)?)),
                        _ => b.segments.push(SegmentInfo {
                            phys: kv.n("phys")?,
                            len: kv.n("len")?,
                            order: kv.n32("order")?,
                            source: kv.get("source")?.to_owned(),
                        }),
                    }
                }
                _ => return Err(format!("unknown record {kind:?}")),
            }
            Ok(())
        })();
        r.map_err(ctx)?;
    }
    Ok(s)
}

// ------------------------------------------------------------------ against dmaplace-core

fn mask_bits(mask: u64) -> u32 {
    (64 - mask.leading_zeros()).max(1)
}

impl AttachInfo {
    /// The core [`Device`] with the constraints the module read for this
    /// attachment (the kernel's `struct device` plus the declaration).
    pub fn to_device(&self) -> Result<Device, String> {
        let iommu = if self.iommu {
            let pg = PageSizes::from_bitmap(self.pgsize_bitmap & !0xfff);
            Some(Iommu {
                name: "iommu".into(),
                pgsize_bitmap: pg,
                iova_bits: DmaMask::new(mask_bits(self.aperture_end)).map_err(|e| e.to_string())?,
                phys_bits: None,
            })
        } else {
            None
        };
        let placement = Placement {
            dma_mask: DmaMask::new(mask_bits(self.dma_mask)).map_err(|e| e.to_string())?,
            bus_dma_limit: (self.bus_dma_limit != 0).then_some(self.bus_dma_limit),
            iommu,
            max_segments: NonZeroU32::new(self.declared_max_segments),
            max_segment_size: Some(Size::new(self.max_segment_size)),
            segment_boundary_mask: BoundaryMask::new(self.segment_boundary_mask).map_err(|e| e.to_string())?,
            alignment: PageSize::new(self.declared_alignment.max(4096)).map_err(|e| e.to_string())?,
            ..Placement::default()
        };
        Ok(Device {
            name: self.dev.clone(),
            class: DeviceClass::Other,
            bus: Default::default(),
            description: String::new(),
            placement,
            layout: LayoutCaps::default(),
        })
    }
}

/// This guest as a core [`Platform`]: RAM from `/proc/iomem`, the CMA area from
/// debugfs, the page allocator's 4 MiB blocks; no devices or rules (the devices
/// come from what the module reports).
pub fn guest_platform() -> Result<Platform, String> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    let banks: Vec<Region> = crate::parse::iomem(&iomem)
        .system_ram()
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| {
            // Whole pages only (the page allocator manages nothing smaller).
            let start = r.start().get().next_multiple_of(4096);
            let end = r.end().get() & !0xfff;
            (end > start).then(|| Region {
                name: format!("ram{i}"),
                start: PhysAddr::new(start),
                size: Size::new(end - start),
            })
        })
        .collect();
    if banks.is_empty() {
        return Err("/proc/iomem lists no System RAM (not root?)".into());
    }
    let mut cma = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/kernel/debug/cma") {
        for e in dir.flatten() {
            let rd =
                |f: &str| std::fs::read_to_string(e.path().join(f)).ok().and_then(|t| t.trim().parse::<u64>().ok());
            if let (Some(base), Some(count)) = (rd("base_pfn"), rd("count")) {
                cma.push(Region {
                    name: e.file_name().to_string_lossy().into_owned(),
                    start: PhysAddr::new(base * 4096),
                    size: Size::new(count * 4096),
                });
            }
        }
    }
    platform_from_regions("qemu-guest", &banks, &cma)
}

/// A core [`Platform`] with these RAM banks and CMA areas and nothing else
/// (built through its TOML form, so that fields added later keep their defaults).
pub fn platform_from_regions(name: &str, banks: &[Region], cma: &[Region]) -> Result<Platform, String> {
    use std::fmt::Write as _;
    let mut t = format!(
        "[platform]\nname = \"{name}\"\ndescription = \"RAM and CMA as the kernel reports them\"\n\n[memory]\n"
    );
    for (kind, regions) in [("bank", banks), ("cma", cma)] {
        for r in regions {
            let _ = write!(
                t,
                "[[memory.{kind}]]\nname = \"{}\"\nstart = {}\nsize = {}\n",
                r.name,
                r.start.get(),
                r.size.bytes()
            );
        }
    }
    Platform::from_toml(name, &t).map_err(|e| e.to_string())
}

/// A difference between the module's plan and the core solver's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanMismatch(pub Vec<String>);

impl fmt::Display for PlanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl BufferInfo {
    /// The backing as a core [`dmaplace_core::Backing`] (cached CPU mapping, unprotected).
    pub fn backing(&self) -> dmaplace_core::Backing {
        let segments = self
            .segments
            .iter()
            .filter_map(|s| PhysRange::from_start_size(PhysAddr::new(s.phys), Size::new(s.len)).ok())
            .collect();
        dmaplace_core::Backing { segments, cache_mode: CacheMode::Cached, protected: false }
    }

    /// The core devices for the current attachments, in order.
    pub fn devices(&self) -> Result<Vec<Device>, String> {
        self.attachments.iter().map(AttachInfo::to_device).collect()
    }

    /// `dmaplace_core::solve` for the same devices and size.
    pub fn core_plan(&self, platform: &Platform) -> Result<Plan, String> {
        let devices = self.devices()?;
        let requests: Vec<Request<'_>> = devices.iter().map(|d| Request { device: d, hints: Usage::empty() }).collect();
        solve(platform, &BufferDesc::Size(Size::new(self.size)), &requests).map_err(|e| format!("core solver: {e}"))
    }

    /// The differential test: the module's merged plan must equal the core's for
    /// the same devices: every requirement's value and causes (always), and, when
    /// the core solver finds a plan, its size, preferred chunk sizes with their
    /// devices and minimum chunk. The module does not model memory, so a core
    /// conflict about memory (no room, no CMA in the window) is an answer, not a
    /// mismatch: it comes back as [`CoreVerdict::conflict`].
    pub fn check_against_core(&self, platform: &Platform) -> Result<CoreVerdict, PlanMismatch> {
        let devices = self.devices().map_err(|e| PlanMismatch(vec![e]))?;
        let mut diffs = Vec::new();
        let causes = |s: dmaplace_core::DeviceSet| s.iter().collect::<Vec<usize>>();
        let mut check = |what: &str, module: String, core: String| {
            if module != core {
                diffs.push(format!("{what}: module {module}, core {core}"));
            }
        };
        let m = &self.plan;
        let ram = platform.memory.ram();
        let mut r: Option<Requirements> = None;
        for (i, d) in devices.iter().enumerate() {
            let one = Requirements::of(&CoreEffective::new(platform, d, Usage::empty()), i, &ram);
            r = Some(match r {
                None => one,
                Some(acc) => acc.merge(&one),
            });
        }
        let Some(r) = r else {
            return if m.conflict == "no_devices" {
                Ok(CoreVerdict { plan: None, conflict: Some("no devices".into()) })
            } else {
                Err(PlanMismatch(vec!["no devices but the module has a plan".into()]))
            };
        };
        check("window", format!("{:?}", Window::below(m.window_end.0)), format!("{:?}", r.window.value));
        check("window causes", format!("{:?}", m.window_end.1), format!("{:?}", causes(r.window.causes)));
        check(
            "max_segments",
            format!("{:?}", m.max_segments.0),
            format!("{:?}", r.max_segments.value.map(|n| u64::from(n.get()))),
        );
        check("max_segments causes", format!("{:?}", m.max_segments.1), format!("{:?}", causes(r.max_segments.causes)));
        check(
            "max_segment_size",
            format!("{:?}", m.max_segment_size.0),
            format!("{:?}", r.max_segment_size.value.map(Size::bytes)),
        );
        check(
            "max_segment_size causes",
            format!("{:?}", m.max_segment_size.1),
            format!("{:?}", causes(r.max_segment_size.causes)),
        );
        check(
            "segment_boundary",
            format!("{:#x}", m.segment_boundary.0),
            format!("{:#x}", r.segment_boundary.value.get()),
        );
        check(
            "segment_boundary causes",
            format!("{:?}", m.segment_boundary.1),
            format!("{:?}", causes(r.segment_boundary.causes)),
        );
        check("alignment", format!("{:#x}", m.alignment.0), format!("{:#x}", r.alignment.value.get()));
        check("alignment causes", format!("{:?}", m.alignment.1), format!("{:?}", causes(r.alignment.causes)));
        check("granule", format!("{:#x}", m.granule.0), format!("{:#x}", r.granule.value.get()));
        check("granule causes", format!("{:?}", m.granule.1), format!("{:?}", causes(r.granule.causes)));
        check("contiguous", format!("{}", m.contiguous), format!("{}", r.contiguous()));
        let requests: Vec<Request<'_>> = devices.iter().map(|d| Request { device: d, hints: Usage::empty() }).collect();
        let verdict = match solve(platform, &BufferDesc::Size(Size::new(self.size)), &requests) {
            Ok(plan) => {
                check("size", format!("{:#x}", m.size), format!("{:#x}", plan.size.bytes()));
                check("conflict", m.conflict.clone(), "none".into());
                let core_prefs: Vec<(u64, Vec<usize>)> =
                    plan.preferences.chunk_sizes.iter().map(|c| (c.size.get(), causes(c.devices))).collect();
                check("chunk sizes", format!("{:?}", m.chunk_prefs), format!("{core_prefs:?}"));
                check(
                    "min_chunk",
                    format!("{:?}", m.min_chunk),
                    format!("{:?}", plan.preferences.min_chunk.map(Size::bytes)),
                );
                CoreVerdict { plan: Some(plan), conflict: None }
            }
            Err(SolveError::Conflict(c)) => {
                let memory = matches!(
                    c.kind,
                    ConflictKind::NoRoom { .. }
                        | ConflictKind::NoContiguousPool { .. }
                        | ConflictKind::NoCommonMemory
                        | ConflictKind::IovaSpace { .. }
                );
                let segments = matches!(c.kind, ConflictKind::SegmentLimit { .. });
                if !(memory || segments && m.conflict == "segment_limit") {
                    check("conflict", m.conflict.clone(), format!("{:?}", c.kind));
                }
                CoreVerdict { plan: None, conflict: Some(c.message.clone()) }
            }
            Err(e) => {
                check("solve", "a plan".into(), e.to_string());
                CoreVerdict { plan: None, conflict: Some(e.to_string()) }
            }
        };
        if diffs.is_empty() { Ok(verdict) } else { Err(PlanMismatch(diffs)) }
    }
}

/// The core solver's answer for a buffer's devices.
#[derive(Clone, Debug)]
pub struct CoreVerdict {
    /// The plan, when one exists.
    pub plan: Option<Plan>,
    /// Why there is none (the core's explanation).
    pub conflict: Option<String>,
}

/// Whether the modules are loaded (both device nodes exist).
pub fn modules_loaded() -> bool {
    File::open(DEV_DMAPLACE).is_ok() && File::open(DEV_TESTDEV).is_ok()
}

// ------------------------------------------------------------------ fences (sw_sync), for late-attach tests

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
