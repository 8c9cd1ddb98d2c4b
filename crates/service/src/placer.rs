//! What places memory for the daemon: a core [`Backend`] whose backings are files a
//! client can be handed (`SCM_RIGHTS`).
//!
//! - [`SimPlacer`]: the simulated machine decides where the pages would go (and checks
//!   every placement), and each backing is paired with a memfd holding its real bytes,
//!   so clients write, read and see contents survive a move exactly as on real heaps.
//! - [`HeapPlacer`]: this kernel's dma-heaps, udmabuf or memfd
//!   ([`dmaplace_linux::LinuxBackend`]). The daemon does not map for devices: each
//!   client imports the fd through its own driver (DRM PRIME, V4L2 DMABUF), so a
//!   daemon-side map is bookkeeping and its sg table is empty.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use dmaplace_core::backend::{Backend, CpuAccess, SgTable};
use dmaplace_core::{Backing, Effective, Plan, Platform, Size};
use dmaplace_linux::{LinuxBackend, LinuxError};
use dmaplace_sim::{Machine, SimBacking, SimConfig, SimError, SimMapping};
use rustix::fs::{MemfdFlags, SealFlags};

/// Why a placer failed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The simulated machine.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The Linux backend.
    #[error(transparent)]
    Linux(#[from] LinuxError),
    /// A memfd operation.
    #[error("{op} on the memfd of `{buffer}`: {errno}")]
    Memfd {
        /// What was done.
        op: &'static str,
        /// Buffer name.
        buffer: String,
        /// The error.
        errno: rustix::io::Errno,
    },
}

/// Live objects a placer holds, for leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    /// Backings allocated and not freed.
    pub backings: u64,
    /// Device mappings not unmapped.
    pub mappings: u64,
    /// Bytes of live backings.
    pub bytes: u64,
}

/// A [`Backend`] whose backings can be handed to clients as fds.
pub trait Placer: Backend<Error = PlaceError> + fmt::Debug {
    /// `sim`, `heaps` or `kmod`, as `hello` reports it.
    fn kind(&self) -> &'static str;
    /// The file a client maps or imports.
    fn fd<'a>(&'a self, backing: &'a Self::Backing) -> BorrowedFd<'a>;
    /// What is live now.
    fn accounting(&self) -> Accounting;
}

/// A simulated backing and the memfd with its bytes.
#[derive(Debug)]
pub struct SimFdBacking {
    sim: SimBacking,
    memfd: OwnedFd,
    name: String,
    size: u64,
}

/// The simulated machine, with real bytes in memfds.
#[derive(Debug)]
pub struct SimPlacer {
    machine: Machine,
    live: Accounting,
}

impl SimPlacer {
    /// A simulated `platform`, seeded.
    pub fn new(platform: &Platform, seed: u64) -> Result<SimPlacer, PlaceError> {
        Ok(SimPlacer { machine: Machine::new(platform, SimConfig::seeded(seed))?, live: Accounting::default() })
    }

    /// The machine (counters, invariant checks).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

fn memfd(name: &str, size: u64) -> Result<OwnedFd, PlaceError> {
    let err = |op| move |errno| PlaceError::Memfd { op, buffer: name.to_owned(), errno };
    let fd = rustix::fs::memfd_create(format!("dmaplace:{name}"), MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(err("memfd_create"))?;
    rustix::fs::ftruncate(&fd, size).map_err(err("ftruncate"))?;
    // Clients may write the bytes but never change the size the daemon placed.
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(err("F_ADD_SEALS"))?;
    Ok(fd)
}

/// Reads `len` bytes from `fd` in blocks, handing each with its offset to `f`.
fn for_each_block(
    fd: BorrowedFd<'_>,
    name: &str,
    len: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), PlaceError>,
) -> Result<(), PlaceError> {
    let mut block = vec![0u8; 1 << 16];
    let mut off = 0u64;
    while off < len {
        let want = usize::try_from(len - off).map_or(block.len(), |left| left.min(block.len()));
        let n = rustix::io::pread(fd, &mut block[..want], off).map_err(|errno| PlaceError::Memfd {
            op: "pread",
            buffer: name.to_owned(),
            errno,
        })?;
        if n == 0 {
            // Past the end of the file reads as zeros (it never is: the size is sealed).
            block[..want].fill(0);
        }
        let n = if n == 0 { want } else { n };
        f(off, &block[..n])?;
        off += n as u64;
    }
    Ok(())
}

fn write_all(fd: BorrowedFd<'_>, name: &str, mut off: u64, mut bytes: &[u8]) -> Result<(), PlaceError> {
    while !bytes.is_empty() {
        let n = rustix::io::pwrite(fd, bytes, off).map_err(|errno| PlaceError::Memfd {
            op: "pwrite",
            buffer: name.to_owned(),
            errno,
        })?;
        bytes = &bytes[n..];
        off += n as u64;
    }
    Ok(())
}

/// FNV-1a over 64-bit little-endian words, streamed: equal to
/// [`dmaplace_linux::backend::digest`] of the same bytes when blocks are multiples of 8.
fn digest_fd(fd: BorrowedFd<'_>, name: &str, len: u64) -> Result<u64, PlaceError> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for_each_block(fd, name, len, |_, block| {
        for w in block.chunks(8) {
            let mut word = [0u8; 8];
            word[..w.len()].copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    })?;
    Ok(h)
}

impl Backend for SimPlacer {
    type Backing = SimFdBacking;
    type Mapping = SimMapping;
    type Error = PlaceError;

    fn allocate(&mut self, plan: &Plan, name: &str) -> Result<SimFdBacking, PlaceError> {
        let sim = self.machine.allocate(plan, name)?;
        let size = plan.size.bytes();
        match memfd(name, size) {
            Ok(memfd) => {
                self.live.backings += 1;
                self.live.bytes += size;
                Ok(SimFdBacking { sim, memfd, name: name.to_owned(), size })
            }
            Err(e) => {
                self.machine.free(sim);
                Err(e)
            }
        }
    }

    fn describe(&self, b: &SimFdBacking) -> Result<Backing, PlaceError> {
        Ok(self.machine.describe(&b.sim)?)
    }

    fn copy(&mut self, from: &SimFdBacking, to: &SimFdBacking, len: Size) -> Result<Size, PlaceError> {
        self.machine.copy(&from.sim, &to.sim, len)?;
        let len = len.bytes().min(from.size).min(to.size);
        for_each_block(from.memfd.as_fd(), &from.name, len, |off, block| {
            write_all(to.memfd.as_fd(), &to.name, off, block)
        })?;
        Ok(Size::new(len))
    }

    fn free(&mut self, b: SimFdBacking) {
        self.live.backings -= 1;
        self.live.bytes -= b.size;
        self.machine.free(b.sim);
    }

    fn map(&mut self, device: &Effective, b: &SimFdBacking) -> Result<(SimMapping, SgTable), PlaceError> {
        let m = self.machine.map(device, &b.sim)?;
        self.live.mappings += 1;
        Ok(m)
    }

    fn unmap(&mut self, device: &Effective, mapping: SimMapping) {
        self.live.mappings -= 1;
        self.machine.unmap(device, mapping);
    }

    fn fill(&mut self, b: &SimFdBacking, seed: u64) -> Result<(), PlaceError> {
        self.machine.fill(&b.sim, seed)?;
        let mut block = vec![0u8; 1 << 16];
        let mut off = 0u64;
        while off < b.size {
            let n = usize::try_from(b.size - off).map_or(block.len(), |left| left.min(block.len()));
            dmaplace_linux::backend::fill_pattern(&mut block[..n], seed.wrapping_add(off / 8));
            write_all(b.memfd.as_fd(), &b.name, off, &block[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    fn checksum(&self, b: &SimFdBacking, len: Size) -> Result<u64, PlaceError> {
        digest_fd(b.memfd.as_fd(), &b.name, len.bytes().min(b.size))
    }

    fn cpu_sync(
        &mut self,
        b: &SimFdBacking,
        devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, PlaceError> {
        Ok(self.machine.cpu_sync(&b.sim, devices, access, begin)?)
    }
}

impl Placer for SimPlacer {
    fn kind(&self) -> &'static str {
        "sim"
    }
    fn fd<'a>(&'a self, b: &'a SimFdBacking) -> BorrowedFd<'a> {
        b.memfd.as_fd()
    }
    fn accounting(&self) -> Accounting {
        self.live
    }
}

/// A bookkeeping-only device mapping on the heap placer.
#[derive(Debug)]
pub struct ClientImport {
    /// The device whose driver imports the fd in the client.
    pub device: String,
}

/// This kernel's dma-heaps, udmabuf or memfd.
#[derive(Debug)]
pub struct HeapPlacer {
    inner: LinuxBackend,
    live: Accounting,
}

impl HeapPlacer {
    /// The Linux backend for this machine; `allow_memfd` permits the memfd fallback.
    pub fn new(allow_memfd: bool) -> HeapPlacer {
        HeapPlacer { inner: LinuxBackend::new().allow_memfd(allow_memfd).track_cma(true), live: Accounting::default() }
    }

    /// The backend (inventory).
    pub fn inner(&self) -> &LinuxBackend {
        &self.inner
    }
}

impl Backend for HeapPlacer {
    type Backing = dmaplace_linux::Buffer;
    type Mapping = ClientImport;
    type Error = PlaceError;

    fn allocate(&mut self, plan: &Plan, name: &str) -> Result<dmaplace_linux::Buffer, PlaceError> {
        let b = self.inner.allocate(plan, name)?;
        self.live.backings += 1;
        self.live.bytes += b.size().bytes();
        Ok(b)
    }
    fn describe(&self, b: &dmaplace_linux::Buffer) -> Result<Backing, PlaceError> {
        Ok(self.inner.describe(b)?)
    }
    fn copy(
        &mut self,
        from: &dmaplace_linux::Buffer,
        to: &dmaplace_linux::Buffer,
        len: Size,
    ) -> Result<Size, PlaceError> {
        Ok(self.inner.copy(from, to, len)?)
    }
    fn free(&mut self, b: dmaplace_linux::Buffer) {
        self.live.backings -= 1;
        self.live.bytes -= b.size().bytes();
        self.inner.free(b);
    }
    /// The client's driver maps the fd; here only the count is kept.
    fn map(&mut self, device: &Effective, _b: &dmaplace_linux::Buffer) -> Result<(ClientImport, SgTable), PlaceError> {
        self.live.mappings += 1;
        Ok((ClientImport { device: device.device.clone() }, SgTable::default()))
    }
    fn unmap(&mut self, _device: &Effective, _m: ClientImport) {
        self.live.mappings -= 1;
    }
    fn fill(&mut self, b: &dmaplace_linux::Buffer, seed: u64) -> Result<(), PlaceError> {
        Ok(self.inner.fill(b, seed)?)
    }
    fn checksum(&self, b: &dmaplace_linux::Buffer, len: Size) -> Result<u64, PlaceError> {
        Ok(self.inner.checksum(b, len)?)
    }
    fn cpu_sync(
        &mut self,
        b: &dmaplace_linux::Buffer,
        devices: &[&Effective],
        access: CpuAccess,
        begin: bool,
    ) -> Result<u64, PlaceError> {
        Ok(self.inner.cpu_sync(b, devices, access, begin)?)
    }
}

impl Placer for HeapPlacer {
    fn kind(&self) -> &'static str {
        "heaps"
    }
    fn fd<'a>(&'a self, b: &'a dmaplace_linux::Buffer) -> BorrowedFd<'a> {
        b.as_fd()
    }
    fn accounting(&self) -> Accounting {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_digest_equals_the_linux_digest() {
        let mut bytes = vec![0u8; 200_000];
        dmaplace_linux::backend::fill_pattern(&mut bytes, 5);
        let fd = memfd("t", bytes.len() as u64).unwrap();
        write_all(fd.as_fd(), "t", 0, &bytes).unwrap();
        assert_eq!(digest_fd(fd.as_fd(), "t", 200_000).unwrap(), dmaplace_linux::backend::digest(&bytes));
        assert_eq!(digest_fd(fd.as_fd(), "t", 4096).unwrap(), dmaplace_linux::backend::digest(&bytes[..4096]));
    }
}
