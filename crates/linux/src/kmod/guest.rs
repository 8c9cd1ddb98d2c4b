//! What the module's guest tests read besides its own files: physical memory
//! (`/proc/kcore`), the kernel's configuration (`/proc/config.gz`), dma-debug.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::parse;

/// Reads `buf.len()` bytes of physical memory at `phys` through `/proc/kcore`
/// (root only): what is really in the pages, independent of any mapping.
pub fn read_physical(phys: u64, buf: &mut [u8]) -> Result<(), String> {
    let kcore = File::open("/proc/kcore")
        .map_err(|e| format!("cannot open /proc/kcore: {e} (needs root and CONFIG_PROC_KCORE)"))?;
    let mut head = vec![0u8; 64];
    kcore.read_exact_at(&mut head, 0).map_err(|e| format!("reading /proc/kcore: {e}"))?;
    let (phoff, phnum, phentsize) = parse::kcore_phdr_table(&head).map_err(|e| e.to_string())?;
    let mut table = vec![0u8; usize::from(phnum) * usize::from(phentsize)];
    kcore.read_exact_at(&mut table, phoff).map_err(|e| format!("reading /proc/kcore program headers: {e}"))?;
    let cover =
        parse::kcore_physical_cover(&parse::kcore_segments(&table, phnum, phentsize).map_err(|e| e.to_string())?);
    let len = buf.len() as u64;
    let &(start, _, offset) = cover
        .iter()
        .find(|(p, l, _)| phys >= *p && phys + len <= p + l)
        .ok_or_else(|| format!("{phys:#x}+{len:#x} is not in /proc/kcore's linear map"))?;
    kcore.read_exact_at(buf, offset + (phys - start)).map_err(|e| format!("reading {phys:#x} from /proc/kcore: {e}"))
}

/// Whether the running kernel was built with `option` (`CONFIG_...=y`), from
/// `/proc/config.gz` (CONFIG_IKCONFIG_PROC) decompressed by busybox `zcat`.
pub fn kernel_config(option: &str) -> Result<bool, String> {
    let out = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .map_err(|e| format!("zcat /proc/config.gz: {e}"))?;
    if !out.status.success() {
        return Err(format!("zcat /proc/config.gz failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let want = format!("{option}=y");
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == want))
}

/// `(error count, active entries)` of dma-debug (`CONFIG_DMA_API_DEBUG`), or
/// `None` on a kernel without it.
pub fn dma_debug() -> Option<(u64, usize)> {
    let errors = std::fs::read_to_string("/sys/kernel/debug/dma-api/error_count").ok()?.trim().parse().ok()?;
    let dump = std::fs::read_to_string("/sys/kernel/debug/dma-api/dump").ok()?;
    Some((errors, dump.lines().filter(|l| !l.trim().is_empty()).count()))
}

/// The active dma-debug entries whose line mentions `device`.
pub fn dma_debug_entries_of(device: &str) -> Vec<String> {
    std::fs::read_to_string("/sys/kernel/debug/dma-api/dump")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == device))
        .map(str::to_owned)
        .collect()
}

/// Tries a private (copy-on-write) mapping of `fd`; unmaps it again if it was
/// granted. dmaplace refuses them (`EINVAL`).
pub fn try_map_private(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<(), rustix::io::Errno> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh mapping at an address the kernel picks aliases nothing; it is unmapped
    // right away and never dereferenced.
    unsafe {
        let p = rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::PRIVATE, fd, 0)?;
        rustix::mm::munmap(p, len)
    }
}

/// `vmsplice(2)`s `bytes` into a fresh pipe: the kernel takes references on the
/// pages behind them (`get_user_pages_fast`). Returns the bytes spliced.
pub fn vmsplice_into_pipe(bytes: &[u8]) -> Result<usize, rustix::io::Errno> {
    use rustix::pipe::{IoSliceRaw, SpliceFlags};
    let (_read, write) = rustix::pipe::pipe()?;
    let len = bytes.len().min(4096);
    // SAFETY: the slice stays borrowed for the call; the pipe is dropped (with any page
    // references it took) before this function returns, so no reference outlives `bytes`.
    unsafe { rustix::pipe::vmsplice(&write, &[IoSliceRaw::from_slice(&bytes[..len])], SpliceFlags::empty()) }
}

/// Reads `len` bytes at `addr` of this process through `/proc/self/mem`
/// (`access_remote_vm`: `get_user_pages` on the mapping).
pub fn read_proc_self_mem(addr: usize, len: usize) -> std::io::Result<Vec<u8>> {
    let mem = File::open("/proc/self/mem")?;
    let mut buf = vec![0u8; len];
    mem.read_exact_at(&mut buf, addr as u64)?;
    Ok(buf)
}

/// Runs `f` on a new thread whose effective capabilities lack `CAP_SYS_ADMIN`
/// (capabilities are per thread; the rest of the process keeps them).
pub fn without_cap_sys_admin<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    std::thread::spawn(move || {
        use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
        let mut sets = capabilities(None).map_err(|e| format!("capget: {e}"))?;
        sets.effective.remove(CapabilitySet::SYS_ADMIN);
        set_capabilities(None, sets).map_err(|e| format!("capset: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| "the thread without CAP_SYS_ADMIN panicked".to_owned())?
}

/// Asks dmaplace's pool shrinker to give back `pages` 4 KiB pages, as reclaim
/// would (`/sys/kernel/debug/shrinker/dmaplace-pool-*/scan`, CONFIG_SHRINKER_DEBUG).
pub fn shrink_dmaplace_pool(pages: u64) -> Result<(), String> {
    let dir = std::fs::read_dir("/sys/kernel/debug/shrinker").map_err(|e| format!("shrinker debugfs: {e}"))?;
    let d = dir
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("dmaplace-pool"))
        .ok_or("no dmaplace-pool shrinker in /sys/kernel/debug/shrinker")?;
    // "<memcg inode> <node> <objects>": the pool's shrinker is not memcg-aware.
    std::fs::write(d.path().join("scan"), format!("0 0 {pages}")).map_err(|e| format!("shrinker scan: {e}"))
}

/// A child memory cgroup `name` of the cgroup2 root (mounted at
/// `/sys/fs/cgroup` if it is not yet), with the memory controller on and
/// `memory.max` = `max` bytes. Returns its directory.
pub fn memory_cgroup(name: &str, max: u64) -> Result<String, String> {
    let root = "/sys/fs/cgroup";
    if std::fs::metadata(format!("{root}/cgroup.controllers")).is_err() {
        let st = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none", root])
            .status()
            .map_err(|e| format!("mount cgroup2: {e}"))?;
        if !st.success() {
            return Err(format!("mount -t cgroup2 none {root} failed"));
        }
    }
    std::fs::write(format!("{root}/cgroup.subtree_control"), "+memory")
        .map_err(|e| format!("enabling the memory controller: {e}"))?;
    let dir = format!("{root}/{name}");
    if std::fs::metadata(&dir).is_err() {
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    std::fs::write(format!("{dir}/memory.max"), max.to_string()).map_err(|e| format!("{dir}/memory.max: {e}"))?;
    Ok(dir)
}
