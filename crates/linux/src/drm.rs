//! DRM devices as importers: open a card by driver name, import a dma-buf with PRIME
//! (which attaches the device to the buffer), and vgem's fences.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{LinuxError, sys};
use crate::sys::ioctl;

/// An open DRM card node.
#[derive(Debug)]
pub struct DrmCard {
    fd: OwnedFd,
    path: PathBuf,
    driver: String,
}

impl AsFd for DrmCard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl DrmCard {
    /// Opens a card node (read-write, close-on-exec).
    pub fn open(path: &Path) -> Result<DrmCard, LinuxError> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys("open", path.display().to_string()))?;
        let driver =
            ioctl::drm_driver_name(fd.as_fd()).map_err(sys("DRM_IOCTL_VERSION", path.display().to_string()))?;
        Ok(DrmCard { fd, path: path.to_owned(), driver })
    }

    /// Opens the first `/dev/dri/card*` whose driver is one of `drivers`.
    pub fn open_driver(drivers: &[&str]) -> Result<DrmCard, LinuxError> {
        let mut seen = Vec::new();
        let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("card")))
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        for p in nodes {
            match DrmCard::open(&p) {
                Ok(c) if drivers.contains(&c.driver.as_str()) => return Ok(c),
                Ok(c) => seen.push(format!("{}: {}", p.display(), c.driver)),
                Err(e) => seen.push(e.to_string()),
            }
        }
        Err(LinuxError::Invalid(format!(
            "no DRM card with driver {} (found: {})",
            drivers.join(" or "),
            if seen.is_empty() { "none".into() } else { seen.join(", ") }
        )))
    }

    /// The driver's name.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// The node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Imports a dma-buf (`DRM_IOCTL_PRIME_FD_TO_HANDLE`); the handle is closed on drop.
    #[doc(alias = "DRM_IOCTL_PRIME_FD_TO_HANDLE")]
    pub fn import(&self, buf: &impl AsFd) -> Result<GemHandle<'_>, LinuxError> {
        let handle = ioctl::drm_prime_fd_to_handle(self.fd.as_fd(), buf.as_fd())
            .map_err(sys("DRM_IOCTL_PRIME_FD_TO_HANDLE", format!("into {} ({})", self.driver, self.path.display())))?;
        Ok(GemHandle { card: self, handle })
    }
}

/// A GEM handle on a card; `DRM_IOCTL_GEM_CLOSE` on drop.
#[derive(Debug)]
pub struct GemHandle<'a> {
    card: &'a DrmCard,
    handle: u32,
}

impl GemHandle<'_> {
    /// The handle number (for ADDFB2 and friends).
    pub fn get(&self) -> u32 {
        self.handle
    }

    /// Attaches a vgem fence to the buffer (vgem only); `poll()` on the dma-buf waits
    /// until it is signalled (or vgem's 10 s timeout). `write` makes it exclusive.
    #[doc(alias = "DRM_IOCTL_VGEM_FENCE_ATTACH")]
    pub fn vgem_fence(&self, write: bool) -> Result<VgemFence<'_>, LinuxError> {
        let flags = if write { ioctl::VGEM_FENCE_WRITE } else { 0 };
        let id = ioctl::vgem_fence_attach(self.card.fd.as_fd(), self.handle, flags)
            .map_err(sys("DRM_IOCTL_VGEM_FENCE_ATTACH", format!("handle {} on {}", self.handle, self.card.driver)))?;
        Ok(VgemFence { card: self.card, id, signalled: false })
    }
}

impl Drop for GemHandle<'_> {
    fn drop(&mut self) {
        let _ = ioctl::drm_gem_close(self.card.fd.as_fd(), self.handle);
    }
}

/// A vgem fence; signalled on drop if it was not before, so nothing waits forever.
#[derive(Debug)]
pub struct VgemFence<'a> {
    card: &'a DrmCard,
    id: u32,
    signalled: bool,
}

impl VgemFence<'_> {
    /// Signals it.
    #[doc(alias = "DRM_IOCTL_VGEM_FENCE_SIGNAL")]
    pub fn signal(mut self) -> Result<(), LinuxError> {
        self.signalled = true;
        ioctl::vgem_fence_signal(self.card.fd.as_fd(), self.id)
            .map_err(sys("DRM_IOCTL_VGEM_FENCE_SIGNAL", format!("fence {}", self.id)))
    }

    /// The fence's id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for VgemFence<'_> {
    fn drop(&mut self) {
        if !self.signalled {
            let _ = ioctl::vgem_fence_signal(self.card.fd.as_fd(), self.id);
        }
    }
}
