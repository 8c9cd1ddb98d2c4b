//! `/dev/dmaplace_testdev`: fake importers with chosen DMA parameters.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::{AttachInfo, DEV_TESTDEV, abi, get_u32, get_u64, ioctl_bytes, open_rw, put_name, put_u32, put_u64};

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
            pins: 0,
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
    /// Pins held through [`TestDev::pin`].
    pub pins: u32,
    /// Mappings the importer dropped inside `move_notify` ([`Importer::EagerDynamic`]).
    pub unmapped_on_move: u32,
}

/// How a test importer attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importer {
    /// `dma_buf_attach`: the dma-buf core pins and maps at attach (like every DRM
    /// PRIME import in 6.12).
    Static,
    /// `dma_buf_dynamic_attach`, keeping its mappings across `move_notify` until it
    /// unmaps them (the exporter must keep the old pages until then).
    LazyDynamic,
    /// `dma_buf_dynamic_attach`, unmapping everything inside `move_notify`.
    EagerDynamic,
}

impl Importer {
    fn flags(self) -> u32 {
        match self {
            Importer::Static => 0,
            Importer::LazyDynamic => abi::TD_ATTACH_DYNAMIC,
            Importer::EagerDynamic => abi::TD_ATTACH_DYNAMIC | abi::TD_ATTACH_UNMAP_ON_MOVE,
        }
    }
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
        self.attach_as(buf, device, if dynamic { Importer::LazyDynamic } else { Importer::Static })
    }

    /// Attaches `buf` to `device` as the given kind of importer.
    pub fn attach_as(&self, buf: BorrowedFd<'_>, device: &str, importer: Importer) -> Result<u64, Errno> {
        let mut b = [0u8; abi::TD_ATTACH_SIZE];
        put_name(&mut b, abi::td_attach::DEVICE, abi::td_attach::DEVICE_LEN, device)?;
        // CAST: fds are non-negative i32; the field is an s32.
        put_u32(&mut b, abi::td_attach::FD, std::os::fd::AsRawFd::as_raw_fd(&buf) as u32);
        put_u32(&mut b, abi::td_attach::FLAGS, importer.flags());
        ioctl_bytes(self.fd.as_fd(), abi::TD_ATTACH, &mut b)?;
        Ok(get_u64(&b, abi::td_attach::HANDLE))
    }

    /// `dma_buf_pin` on a dynamic attachment (pins nest).
    #[doc(alias = "DMAPLACE_TD_PIN")]
    pub fn pin(&self, handle: u64) -> Result<(), Errno> {
        self.handle_op(abi::TD_PIN, handle)
    }

    /// `dma_buf_unpin`.
    #[doc(alias = "DMAPLACE_TD_UNPIN")]
    pub fn unpin(&self, handle: u64) -> Result<(), Errno> {
        self.handle_op(abi::TD_UNPIN, handle)
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
            pins: get_u32(&b, abi::td_status::PINS),
            unmapped_on_move: get_u32(&b, abi::td_status::UNMAPPED_ON_MOVE),
        })
    }
}
