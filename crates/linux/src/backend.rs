//! [`LinuxBackend`]: the [`Backend`] that places memory with this kernel's dma-heaps,
//! udmabuf or (when allowed) a memfd, and proves where it went.

use std::os::fd::{AsFd, OwnedFd};

use dmaplace_core::backend::{Backend, CpuAccess, SgEntry, SgTable};
use dmaplace_core::{Backing, BoundaryMask, CacheMode, DmaAddr, Effective, PhysRange, Plan, Size, verify};
use rustix::fs::{Mode, OFlags};

use crate::buffer::Buffer;
use crate::choose::{self, NoFit, Promise, Source};
use crate::error::{LinuxError, sys};
use crate::inventory::{self, HeapKind, Inventory};
use crate::phys::{self, Method};
use crate::sys::ioctl;
use crate::udmabuf;

/// Places buffers on this machine.
#[derive(Debug)]
pub struct LinuxBackend {
    inventory: Inventory,
    /// Heap device nodes, opened once, by their index in `inventory.heaps`.
    heaps: Vec<Option<OwnedFd>>,
    /// `/dev/udmabuf`, opened once.
    udmabuf: Option<OwnedFd>,
    allow_memfd: bool,
    track_cma: bool,
}

/// A device mapping made by [`LinuxBackend::map`]: the physical sg table a device
/// without an IOMMU would be given.
#[derive(Debug)]
pub struct LinuxMapping {
    /// The device.
    pub device: String,
}

impl Default for LinuxBackend {
    fn default() -> Self {
        LinuxBackend::new()
    }
}

impl LinuxBackend {
    /// A backend for this machine, with its inventory read now.
    pub fn new() -> LinuxBackend {
        LinuxBackend::with_inventory(Inventory::probe())
    }

    /// A backend using `inventory` (what a caller already probed).
    pub fn with_inventory(inventory: Inventory) -> LinuxBackend {
        let heaps = inventory.heaps.iter().map(|_| None).collect();
        LinuxBackend { inventory, heaps, udmabuf: None, allow_memfd: false, track_cma: false }
    }

    /// Allows the memfd fallback: CPU memory that is not a dma-buf, neither pinned nor
    /// placed, for when there is no dma-buf exporter at all.
    pub fn allow_memfd(mut self, allow: bool) -> Self {
        self.allow_memfd = allow;
        self
    }

    /// Records where CMA allocations land by reading the area's debugfs bitmap before and
    /// after each (root only; off by default: it costs about as much as the allocation
    /// itself). Without it, [`LinuxBackend::placement`] finds CMA buffers through
    /// `/proc/kcore`.
    pub fn track_cma(mut self, track: bool) -> Self {
        self.track_cma = track;
        self
    }

    /// What this kernel offers.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Where `plan`'s buffer would come from, or why it cannot.
    pub fn choose(&self, plan: &Plan) -> Result<Promise, NoFit> {
        choose::choose(&self.inventory, plan, self.allow_memfd)
    }

    /// Allocates `plan`'s buffer from `source`, after checking that the source's promise
    /// meets the plan.
    pub fn allocate_from(&mut self, source: &Source, plan: &Plan, name: &str) -> Result<Buffer, LinuxError> {
        let promise = choose::check_source(&self.inventory, plan, source, self.allow_memfd)?;
        self.allocate_promised(&promise, name)
    }

    fn allocate_promised(&mut self, p: &Promise, name: &str) -> Result<Buffer, LinuxError> {
        let size = p.alloc_size;
        let mut buf = match &p.source {
            Source::Heap(heap) => self.heap_alloc(heap, size, name)?,
            Source::Udmabuf | Source::UdmabufHuge => self.udmabuf_alloc(p.source == Source::UdmabufHuge, size, name)?,
            Source::Memfd => {
                let fd = udmabuf::sealed_memfd(name, size.bytes(), false)?;
                Buffer { fd, memfd: None, size, source: Source::Memfd, name: name.to_owned(), recorded: None }
            }
        };
        buf.set_name(name)?;
        Ok(buf)
    }

    fn heap_alloc(&mut self, heap: &str, size: Size, name: &str) -> Result<Buffer, LinuxError> {
        let index = self
            .inventory
            .heaps
            .iter()
            .position(|h| h.name == heap)
            .ok_or_else(|| LinuxError::Invalid(format!("no dma-heap `{heap}` on this kernel")))?;
        let info = &self.inventory.heaps[index];
        let debugfs = match &info.kind {
            HeapKind::Cma(area) if self.track_cma => area.debugfs.clone(),
            _ => None,
        };
        let dev = match &mut self.heaps[index] {
            Some(fd) => &*fd,
            slot @ None => {
                let fd = rustix::fs::open(&info.path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
                    .map_err(sys("open", info.path.display().to_string()))?;
                &*slot.insert(fd)
            }
        };
        let alloc = |dev: &OwnedFd| {
            ioctl::dma_heap_alloc(dev.as_fd(), size.bytes()).map_err(|errno| LinuxError::Sys {
                op: "DMA_HEAP_IOCTL_ALLOC",
                what: format!("{size} from dma-heap `{heap}`"),
                errno,
            })
        };
        let (fd, recorded) = match debugfs {
            Some(area) => {
                let _serial = phys::CMA_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let before = phys::cma_bitmap(&area);
                let fd = alloc(dev)?;
                let after = phys::cma_bitmap(&area);
                let recorded = match (before, after) {
                    (Ok(b), Ok(a)) => phys::cma_allocated(&area, &b, &a, size.bytes() / phys::PAGE).ok(),
                    _ => None,
                };
                (fd, recorded)
            }
            None => (alloc(dev)?, None),
        };
        Ok(Buffer { fd, memfd: None, size, source: Source::Heap(heap.to_owned()), name: name.to_owned(), recorded })
    }

    fn udmabuf_alloc(&mut self, huge: bool, size: Size, name: &str) -> Result<Buffer, LinuxError> {
        let info = self
            .inventory
            .udmabuf
            .clone()
            .ok_or_else(|| LinuxError::Invalid(format!("no {} on this kernel", inventory::UDMABUF_DEV)))?;
        if huge {
            let needed = size.bytes().div_ceil(udmabuf::HUGE_PAGE);
            let free = inventory::free_huge_2m().unwrap_or(0);
            if free < needed {
                return Err(udmabuf::UdmabufError::NoHugePages { needed, free }.into());
            }
        }
        let memfd = udmabuf::sealed_memfd(name, size.bytes(), huge)?;
        if self.udmabuf.is_none() {
            self.udmabuf = Some(udmabuf::open()?);
        }
        let dev = self.udmabuf.as_ref().expect("opened above");
        let fd = udmabuf::create(dev.as_fd(), memfd.as_fd(), 0, size.bytes(), info.size_limit)?;
        let source = if huge { Source::UdmabufHuge } else { Source::Udmabuf };
        Ok(Buffer { fd, memfd: Some(memfd), size, source, name: name.to_owned(), recorded: None })
    }

    /// Observes where `buf` lies with one method.
    pub fn observe(&self, buf: &Buffer, method: Method) -> Result<Vec<PhysRange>, String> {
        match method {
            Method::CmaBitmap => buf.recorded.clone().ok_or_else(|| {
                "no CMA bitmap record (not a CMA heap buffer, not root, or no debugfs cma directory)".into()
            }),
            Method::Pagemap => {
                let map = match buf.map_memfd() {
                    Some(m) => m,
                    None => buf.map(),
                }
                .map_err(|e| e.to_string())?;
                phys::touch(&map);
                phys::pagemap(map.addr(), map.len()).map(|p| phys::runs(&p))
            }
            Method::Kcore => {
                if !self.inventory.kcore {
                    return Err("/proc/kcore is not readable (needs root and CONFIG_PROC_KCORE)".into());
                }
                phys::kcore(buf).map(|p| phys::runs(&p))
            }
        }
    }

    /// Where `buf` lies, by the cheapest method that works here, and which one.
    pub fn placement(&self, buf: &Buffer) -> Result<(Vec<PhysRange>, Method), LinuxError> {
        if !self.inventory.root {
            return Err(LinuxError::NotRoot {
                what: format!("seeing where `{}` lies in physical memory", buf.name),
                why: "pagemap shows frame numbers, and debugfs and /proc/kcore open, only for root".into(),
            });
        }
        let mut why = Vec::new();
        for method in [Method::CmaBitmap, Method::Pagemap, Method::Kcore] {
            match self.observe(buf, method) {
                Ok(segments) => return Ok((segments, method)),
                Err(e) => why.push(format!("{method}: {e}")),
            }
        }
        Err(LinuxError::Unobservable {
            buffer: buf.name.clone(),
            source_name: buf.source.to_string(),
            why: why.join("; "),
        })
    }

    /// Proves `buf` meets every device of `plan`: observes its placement and runs
    /// [`dmaplace_core::verify`]. Returns the backing that was checked.
    pub fn verify(&self, plan: &Plan, buf: &Buffer) -> Result<Backing, LinuxError> {
        let backing = self.describe(buf)?;
        verify(plan, &plan.devices, &backing)?;
        Ok(backing)
    }
}

/// Splits physical runs into the sg entries a device without an IOMMU is given: runs cut
/// at `max_segment_size` and at segment boundaries (`dma_map_sgtable` on a direct-mapped
/// device, without bounce buffers).
pub fn physical_sg(runs: &[PhysRange], max_segment_size: Option<Size>, boundary: BoundaryMask) -> SgTable {
    let cap = max_segment_size.map_or(u64::MAX, Size::bytes).max(1);
    let mut entries = Vec::new();
    for r in runs {
        let (mut start, end) = (r.start().get(), r.end().get());
        while start < end {
            let boundary_end = (start | boundary.get()).saturating_add(1);
            let piece_end = end.min(start.saturating_add(cap)).min(boundary_end.max(start + 1));
            entries.push(SgEntry { dma_addr: DmaAddr::new(start), len: Size::new(piece_end - start) });
            start = piece_end;
        }
    }
    SgTable { entries }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern [`Backend::fill`] writes: word `i` is `splitmix64(seed + i)`.
pub fn fill_pattern(bytes: &mut [u8], seed: u64) {
    for (i, w) in bytes.chunks_mut(8).enumerate() {
        // CAST: a word index fits u64.
        let v = splitmix(seed.wrapping_add(i as u64)).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

/// FNV-1a over 64-bit little-endian words: what [`Backend::checksum`] returns.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Backend for LinuxBackend {
    type Backing = Buffer;
    type Mapping = LinuxMapping;
    type Error = LinuxError;

    fn allocate(&mut self, plan: &Plan, name: &str) -> Result<Buffer, LinuxError> {
        let promise = self.choose(plan)?;
        self.allocate_promised(&promise, name)
    }

    /// Observes the placement (root only: pagemap, the CMA bitmap or `/proc/kcore`).
    fn describe(&self, buf: &Buffer) -> Result<Backing, LinuxError> {
        let (segments, _) = self.placement(buf)?;
        // Heaps, udmabuf and memfds map cached on every kernel dmaplace knows.
        Ok(Backing { segments, cache_mode: CacheMode::Cached, protected: false })
    }

    fn copy(&mut self, from: &Buffer, to: &Buffer, len: Size) -> Result<Size, LinuxError> {
        let src = from.map()?;
        let mut dst = to.map()?;
        let n = usize::try_from(len.bytes()).unwrap_or(usize::MAX).min(src.len()).min(dst.len());
        from.sync(CpuAccess::Read, true)?;
        to.sync(CpuAccess::Write, true)?;
        dst[..n].copy_from_slice(&src[..n]);
        to.sync(CpuAccess::Write, false)?;
        from.sync(CpuAccess::Read, false)?;
        // CAST: usize fits u64.
        Ok(Size::new(n as u64))
    }

    fn free(&mut self, buf: Buffer) {
        drop(buf);
    }

    /// Devices without an IOMMU get the physical sg table (observed, so root only).
    /// Behind an IOMMU the IOVAs live in kernel page tables userspace cannot read.
    fn map(&mut self, device: &Effective, buf: &Buffer) -> Result<(LinuxMapping, SgTable), LinuxError> {
        if let Some(mmu) = &device.iommu {
            return Err(LinuxError::Unsupported(format!(
                "`{}` is behind the IOMMU `{}`: its IOVAs are in kernel page tables that userspace cannot see; import the dma-buf through the device's driver (DRM PRIME, V4L2 DMABUF) instead",
                device.device, mmu.name
            )));
        }
        if !buf.is_dma_buf() {
            return Err(LinuxError::Unsupported(format!(
                "`{}` is a memfd, not a dma-buf: no device can map it",
                buf.name
            )));
        }
        let backing = self.describe(buf)?;
        let sg = physical_sg(&backing.runs(), device.max_segment_size.value, device.segment_boundary.value);
        Ok((LinuxMapping { device: device.device.clone() }, sg))
    }

    fn unmap(&mut self, _device: &Effective, _mapping: LinuxMapping) {}

    fn fill(&mut self, buf: &Buffer, seed: u64) -> Result<(), LinuxError> {
        buf.cpu_access(CpuAccess::Write, |b| fill_pattern(b, seed))
    }

    fn checksum(&self, buf: &Buffer, len: Size) -> Result<u64, LinuxError> {
        if len > buf.size {
            return Err(LinuxError::Invalid(format!(
                "checksum of {len} asked of `{}`, which holds {}",
                buf.name, buf.size
            )));
        }
        let n = usize::try_from(len.bytes())
            .map_err(|_| LinuxError::Invalid(format!("{len} does not fit the address space")))?;
        buf.cpu_access(CpuAccess::Read, |b| digest(&b[..n]))
    }

    fn cpu_sync(
        &mut self,
        buf: &Buffer,
        _devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, LinuxError> {
        buf.sync(access, begin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmaplace_core::PhysAddr;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start), Size::new(len)).unwrap()
    }

    #[test]
    fn physical_sg_matches_verify_counting() {
        let runs = [r(0x1000, 0x40000), r(0x10_0000, 0x1000)];
        let sg = physical_sg(&runs, Some(Size::kib(64)), BoundaryMask::NONE);
        assert_eq!(sg.entries.len(), 5);
        assert_eq!(sg.len(), Size::new(0x41000));
        let b = Backing { segments: runs.to_vec(), cache_mode: CacheMode::Cached, protected: false };
        let n = dmaplace_core::verify::sg_entries(&b, Some(Size::kib(64)), BoundaryMask::NONE);
        assert_eq!(n, 5);
        let sg = physical_sg(&runs, None, BoundaryMask::new(0xffff).unwrap());
        assert_eq!(sg.entries[0], SgEntry { dma_addr: DmaAddr::new(0x1000), len: Size::new(0xf000) });
    }

    #[test]
    fn fill_and_digest_are_deterministic() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill_pattern(&mut a, 7);
        fill_pattern(&mut b, 7);
        assert_eq!(digest(&a), digest(&b));
        fill_pattern(&mut b, 8);
        assert_ne!(digest(&a), digest(&b));
    }

    #[test]
    fn the_memfd_fallback_allocates_on_any_kernel() {
        let p = dmaplace_core::builtin::load("x86-desktop").unwrap().unwrap();
        let plan = dmaplace_core::solve(
            &p,
            &dmaplace_core::BufferDesc::Size(Size::kib(64)),
            &[dmaplace_core::Request { device: p.device("dgpu").unwrap(), hints: dmaplace_core::Usage::RENDERING }],
        )
        .unwrap();
        let mut be = LinuxBackend::new().allow_memfd(true);
        let buf = be.allocate_from(&Source::Memfd, &plan, "memfd-test").unwrap();
        assert!(!buf.is_dma_buf());
        be.fill(&buf, 3).unwrap();
        let mut expect = vec![0u8; 64 << 10];
        fill_pattern(&mut expect, 3);
        assert_eq!(be.checksum(&buf, Size::kib(64)).unwrap(), digest(&expect));
        assert_eq!(be.checksum(&buf, Size::kib(4)).unwrap(), digest(&expect[..4096]));
        assert_eq!(be.cpu_sync(&buf, &[], CpuAccess::Read, true).unwrap(), 0);
        let e = be.map(&plan.devices[0], &buf).unwrap_err();
        assert!(e.to_string().contains("VT-d"), "{e}");
        be.free(buf);
    }
}
