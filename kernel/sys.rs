// SPDX-License-Identifier: GPL-2.0

//! Small safe wrappers over the raw C bindings both dmaplace modules use.
//!
//! 6.12's `kernel` crate has no miscdevice, file, page-allocation or dma-buf
//! abstractions, so each module reaches `kernel::bindings` directly; every such
//! call lives here or right next to the callback that needs it, one `unsafe`
//! block with one `// SAFETY:` line each. Inline C functions come from the
//! helpers that `kernel/bindings_helper.patch` adds (`rust/helpers/dmaplace.c`).
#![allow(dead_code)]

use core::ffi::c_void;

use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::ffi::c_char;

use kernel::bindings;
use kernel::error::{Error, Result, code};
use kernel::uaccess::UserSlice;

/// The page size (x86-64).
pub const PAGE_SIZE: usize = 4096;
/// [`PAGE_SIZE`] as a `u64` (addresses and sizes are `u64` here).
pub const PAGE_BYTES: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

// ------------------------------------------------------------------ ioctl numbers

/// `_IOC_WRITE`: userspace writes the argument.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: userspace reads the argument back.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    // CAST: sizes are checked below 1 << 14 by the callers' const asserts.
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}
/// `_IOC_DIR(cmd)`.
pub const fn ioc_dir(cmd: u32) -> u32 {
    cmd >> 30
}
/// `_IOC_TYPE(cmd)`.
pub const fn ioc_type(cmd: u32) -> u8 {
    // CAST: masked to 8 bits.
    ((cmd >> 8) & 0xff) as u8
}
/// `_IOC_NR(cmd)`.
pub const fn ioc_nr(cmd: u32) -> u8 {
    // CAST: masked to 8 bits.
    (cmd & 0xff) as u8
}
/// `_IOC_SIZE(cmd)`.
pub const fn ioc_size(cmd: u32) -> usize {
    // CAST: 14 bits fit usize.
    ((cmd >> 16) & 0x3fff) as usize
}

/// Copies an ioctl argument of `user_size` bytes (the size encoded in the
/// command) into `buf` (the kernel's struct size), the way
/// `copy_struct_from_user` does: a smaller struct from an older ABI is
/// zero-extended, a larger one from a newer ABI is accepted only if the bytes
/// this kernel does not know are zero (else `E2BIG`).
pub fn copy_struct_in(arg: usize, user_size: usize, buf: &mut [u8]) -> Result {
    buf.fill(0);
    let n = user_size.min(buf.len());
    let mut reader = UserSlice::new(arg, user_size).reader();
    reader.read_slice(&mut buf[..n])?;
    let mut rest = [0u8; 64];
    let mut left = user_size - n;
    while left > 0 {
        let k = left.min(rest.len());
        reader.read_slice(&mut rest[..k])?;
        if rest[..k].iter().any(|b| *b != 0) {
            return Err(code::E2BIG);
        }
        left -= k;
    }
    Ok(())
}

/// Copies `buf` back to the ioctl argument, at most `user_size` bytes.
pub fn copy_struct_out(arg: usize, user_size: usize, buf: &[u8]) -> Result {
    let n = user_size.min(buf.len());
    UserSlice::new(arg, n).writer().write_slice(&buf[..n])
}

/// Little helpers to read and write fixed-layout ABI structs without `unsafe`.
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}
/// See [`get_u32`].
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}
/// See [`get_u32`].
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
/// See [`get_u32`].
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

// ------------------------------------------------------------------ names

/// A short NUL-terminated name held inline: a device name or a buffer name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Name<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Name<N> {
    /// The empty name.
    pub const fn empty() -> Self {
        Name { bytes: [0; N], len: 0 }
    }

    /// Parses a field of an ABI struct: NUL-terminated within the field,
    /// printable ASCII without spaces or `=` (so that debugfs stays
    /// `key=value` parseable). `EINVAL` otherwise.
    pub fn from_field(field: &[u8]) -> Result<Self> {
        let len = field.iter().position(|b| *b == 0).ok_or(code::EINVAL)?;
        if len >= N || field[len..].iter().any(|b| *b != 0) {
            return Err(code::EINVAL);
        }
        let mut n = Name::empty();
        for (i, b) in field[..len].iter().enumerate() {
            if !(0x21..0x7f).contains(b) || *b == b'=' {
                return Err(code::EINVAL);
            }
            n.bytes[i] = *b;
        }
        n.len = len;
        Ok(n)
    }

    /// Copies a C string (a device name), truncated to fit, replacing bytes
    /// that [`Name::from_field`] would refuse by `?`.
    ///
    /// # Safety
    ///
    /// `s` is null or points to a NUL-terminated string valid for the call.
    pub unsafe fn from_c(s: *const c_char) -> Self {
        let mut n = Name::empty();
        if s.is_null() {
            return n;
        }
        let mut i = 0;
        while i < N - 1 {
            // SAFETY: the caller guarantees `s` is NUL-terminated and we stop at the NUL.
            let c = unsafe { *s.add(i) };
            if c == 0 {
                break;
            }
            n.bytes[i] = if (0x21..0x7f).contains(&c) && c != b'=' { c } else { b'?' };
            i += 1;
        }
        n.len = i;
        n
    }

    /// The bytes, without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The name as a NUL-terminated C string pointer (valid while `self` is).
    pub fn as_c_ptr(&self) -> *const c_char {
        // `bytes[len]` is 0: names are at most N - 1 bytes and the rest is zeroed.
        self.bytes.as_ptr().cast()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> fmt::Display for Name<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            fmt::Write::write_char(f, char::from(*b))?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ errors

/// `PTR_ERR`/`IS_ERR` for a returned pointer.
pub fn check_ptr<T>(p: *mut T) -> Result<*mut T> {
    kernel::error::from_err_ptr(p)
}

/// An `ERR_PTR` of the right type.
pub fn err_ptr<T>(e: Error) -> *mut T {
    e.to_ptr()
}

/// Turns a negative errno return into an error.
pub fn check_ret(ret: kernel::ffi::c_int) -> Result<kernel::ffi::c_int> {
    if ret < 0 { Err(Error::from_errno(ret)) } else { Ok(ret) }
}

// ------------------------------------------------------------------ pages

/// A page frame number.
pub fn page_to_pfn(page: *mut bindings::page) -> u64 {
    // SAFETY: page_to_pfn is arithmetic on the memmap; `page` is a page the caller owns.
    // CAST: usize is 64 bits here.
    (unsafe { bindings::page_to_pfn(page) }) as u64
}

/// The `struct page` of a frame.
pub fn pfn_to_page(pfn: u64) -> *mut bindings::page {
    // SAFETY: pfn_to_page is arithmetic on the memmap; callers pass frames of pages they own.
    // CAST: usize is 64 bits here.
    unsafe { bindings::pfn_to_page(pfn as usize) }
}

/// The physical address of a page.
pub fn page_to_phys(page: *mut bindings::page) -> u64 {
    page_to_pfn(page) << PAGE_SHIFT
}

/// The kernel virtual address of a lowmem page (x86-64 has no highmem).
pub fn page_address(page: *mut bindings::page) -> *mut u8 {
    // SAFETY: page_address only computes the linear-map address of a page the caller owns.
    unsafe { bindings::page_address(page) }.cast()
}

/// The first byte above RAM.
pub fn ram_end() -> u64 {
    // SAFETY: ram_end() reads high_memory, which is set at boot and never changes.
    unsafe { bindings::ram_end() }
}

/// Whether a page sits in a CMA pageblock.
pub fn page_is_cma(page: *mut bindings::page) -> bool {
    // SAFETY: reads the pageblock's migrate type of a page the caller owns.
    unsafe { bindings::dmaplace_page_is_cma(page) }
}

/// Zeroes one page the caller owns (`clear_page` on its linear-map address).
pub fn clear_page(page: *mut bindings::page) {
    // SAFETY: an owned lowmem page: PAGE_SIZE writable bytes at its linear-map address.
    unsafe { bindings::clear_page(page_address(page).cast()) };
}

/// Zeroes `count` physically contiguous pages from `page` on (one allocation the
/// caller owns), with one `memset` per MiB through the linear map (contiguous
/// frames are contiguous there on x86-64), yielding between MiBs.
pub fn zero_pages(page: *mut bindings::page, count: u64) {
    const STEP: u64 = 256; // pages: 1 MiB
    let base = page_address(page);
    let mut done = 0;
    while done < count {
        let n = STEP.min(count - done);
        // CAST: at most 1 GiB of pages, in bytes, fits usize.
        let (off, len) = ((done << PAGE_SHIFT) as usize, (n << PAGE_SHIFT) as usize);
        // SAFETY: the pages are one owned lowmem allocation, mapped contiguously in the linear map.
        unsafe { bindings::memset(base.add(off).cast(), 0, len) };
        done += n;
        if done < count {
            cond_resched();
        }
    }
}

/// Runs `f` at nice 19, then restores the task's nice: the pool's zeroing and
/// refilling use spare cycles and never preempt a task that allocates.
pub fn at_low_priority<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: current is the running task; static_prio is read-only to others.
    let cur = unsafe { bindings::get_current() };
    // SAFETY: as above. PRIO_TO_NICE: static_prio - 120.
    // CAST: a priority (100..140) fits c_long.
    let nice = (unsafe { (*cur).static_prio }) as kernel::ffi::c_long - 120;
    // SAFETY: set_user_nice on the current task (a kworker between work items is not shared).
    unsafe { bindings::set_user_nice(cur, 19) };
    let r = f();
    // SAFETY: as above; restores what the workqueue set.
    unsafe { bindings::set_user_nice(cur, nice) };
    r
}

/// `cond_resched()`: long loops over pages in process context yield.
pub fn cond_resched() {
    // SAFETY: called in process context without spinlocks held.
    unsafe { bindings::cond_resched() };
}

/// Copies `PAGE_SIZE` bytes between two pages the caller owns.
pub fn copy_page(dst: *mut bindings::page, src: *mut bindings::page) {
    let (d, s) = (page_address(dst), page_address(src));
    // SAFETY: both are distinct owned pages mapped in the linear map, PAGE_SIZE bytes each.
    unsafe { ptr::copy_nonoverlapping(s, d, PAGE_SIZE) };
}

// ------------------------------------------------------------------ devices

/// A borrowed `struct device`: valid for as long as the caller's reference
/// (an attachment, a registered platform device) keeps it.
#[derive(Clone, Copy)]
pub struct DevRef(pub *mut bindings::device);

impl DevRef {
    /// `dev_name(dev)`.
    pub fn name<const N: usize>(self) -> Name<N> {
        // SAFETY: the device is alive (type invariant) and dev_name returns its NUL-terminated name.
        unsafe { Name::from_c(bindings::dev_name(self.0)) }
    }
    /// `dma_get_mask(dev)`.
    pub fn dma_mask(self) -> u64 {
        // SAFETY: the device is alive; dma_get_mask reads its mask or the 32-bit default.
        unsafe { bindings::dma_get_mask(self.0) }
    }
    /// `dev->bus_dma_limit`.
    pub fn bus_dma_limit(self) -> u64 {
        // SAFETY: the device is alive; reading a plain field.
        unsafe { (*self.0).bus_dma_limit }
    }
    /// `dma_get_max_seg_size(dev)`.
    pub fn max_segment_size(self) -> u64 {
        // SAFETY: the device is alive; dma_get_max_seg_size reads dma_parms or the default.
        u64::from(unsafe { bindings::dma_get_max_seg_size(self.0) })
    }
    /// `dma_get_seg_boundary(dev)`.
    pub fn segment_boundary_mask(self) -> u64 {
        // SAFETY: the device is alive; dma_get_seg_boundary reads dma_parms or the default.
        // CAST: usize is 64 bits here.
        (unsafe { bindings::dma_get_seg_boundary(self.0) }) as u64
    }
    /// The DMA domain's `(pgsize_bitmap, aperture_end)` when the DMA API goes
    /// through an IOMMU for this device (`use_dma_iommu`), else `None`.
    pub fn iommu(self) -> Option<(u64, u64)> {
        // SAFETY: the device is alive; use_dma_iommu reads dev->dma_iommu.
        if !unsafe { bindings::use_dma_iommu(self.0) } {
            return None;
        }
        // SAFETY: the device is alive; iommu_get_domain_for_dev returns its group's domain or NULL.
        let dom = unsafe { bindings::iommu_get_domain_for_dev(self.0) };
        if dom.is_null() {
            return None;
        }
        // SAFETY: the domain stays attached while the device is bound and in use; plain fields.
        let (ty, pg, end) = unsafe { ((*dom).type_, (*dom).pgsize_bitmap, (*dom).geometry.aperture_end) };
        if ty & bindings::__IOMMU_DOMAIN_DMA_API == 0 {
            return None;
        }
        // CAST: usize is 64 bits here.
        Some((pg as u64, end))
    }
}

// ------------------------------------------------------------------ mutex-protected raw pointers

/// A registered misc device and the file operations it points to. Both live in boxes
/// that stay put while registered; dropping it deregisters and frees them (no file can be
/// open then: each pins the module).
pub struct MiscDevice {
    misc: Raw<kernel::types::Opaque<bindings::miscdevice>>,
    fops: Raw<kernel::types::Opaque<bindings::file_operations>>,
}

impl MiscDevice {
    /// Registers `/dev/<name>` (mode 0600, dynamic minor) with `fops`.
    pub fn register(name: &'static core::ffi::CStr, fops: bindings::file_operations) -> Result<Self> {
        use kernel::alloc::{KBox, flags::GFP_KERNEL};
        use kernel::types::Opaque;
        let fops = KBox::into_raw(KBox::new(Opaque::new(fops), GFP_KERNEL)?);
        let misc = bindings::miscdevice {
            // CAST: MISC_DYNAMIC_MINOR is 255.
            minor: bindings::MISC_DYNAMIC_MINOR as kernel::ffi::c_int,
            name: name.as_ptr().cast(),
            fops: Opaque::raw_get(fops),
            mode: 0o600,
            ..Default::default()
        };
        let misc = match KBox::new(Opaque::new(misc), GFP_KERNEL) {
            Ok(b) => KBox::into_raw(b),
            Err(e) => {
                // SAFETY: nothing refers to the fops box yet.
                drop(unsafe { KBox::from_raw(fops) });
                return Err(e.into());
            }
        };
        // SAFETY: `misc` is a fully set up miscdevice that stays put until misc_deregister in drop.
        let ret = unsafe { bindings::misc_register(Opaque::raw_get(misc)) };
        if ret < 0 {
            // SAFETY: registration failed, so nothing refers to either box.
            unsafe {
                drop(KBox::from_raw(misc));
                drop(KBox::from_raw(fops));
            }
            return Err(Error::from_errno(ret));
        }
        Ok(MiscDevice { misc: Raw(misc), fops: Raw(fops) })
    }

    /// The device `misc_register` created.
    pub fn this_device(&self) -> *mut bindings::device {
        // SAFETY: registered in `register`, so the box is live and this_device is set.
        unsafe { (*kernel::types::Opaque::raw_get(self.misc.0)).this_device }
    }
}

impl Drop for MiscDevice {
    fn drop(&mut self) {
        use kernel::alloc::KBox;
        // SAFETY: registered in `register`; after misc_deregister nothing refers to the boxes.
        unsafe {
            bindings::misc_deregister(kernel::types::Opaque::raw_get(self.misc.0));
            drop(KBox::from_raw(self.misc.0));
            drop(KBox::from_raw(self.fops.0));
        }
    }
}

/// A raw pointer that a lock protects, so that the structure holding it can be
/// `Send`. The lock holder is the only one dereferencing it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Raw<T>(pub *mut T);

// SAFETY: `Raw` is only stored in structures behind a kernel Mutex, and what it points to
// (pages, sg tables, devices, attachments) may be used from any thread.
unsafe impl<T> Send for Raw<T> {}
// SAFETY: as above: shared access happens under the owning lock.
unsafe impl<T> Sync for Raw<T> {}

impl<T> Raw<T> {
    /// The null pointer.
    pub const fn null() -> Self {
        Raw(ptr::null_mut())
    }
}

// ------------------------------------------------------------------ seq_file

/// `core::fmt::Write` into a `seq_file` (debugfs).
pub struct SeqWriter(pub *mut bindings::seq_file);

impl fmt::Write for SeqWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // SAFETY: self.0 is the seq_file of the running show() callback; seq_write copies `s`.
        unsafe { bindings::seq_write(self.0, s.as_ptr().cast::<c_void>(), s.len()) };
        Ok(())
    }
}

/// `0x…` formatting.
pub struct Hex(pub u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A bit set of device indices as `0,2,5` (or `-` when empty).
pub struct Bits(pub u32);

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for i in 0..32 {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{i}")?;
                first = false;
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ module parameters

/// A `struct kernel_param` in the `__param` section, which the module loader
/// reads (6.12's `module!` has no parameters). Declare with [`module_param!`].
#[repr(transparent)]
pub struct Param(pub bindings::kernel_param);

// SAFETY: the loader and sysfs read it (sysfs writes go to `arg`, an atomic, under
// kernel_param_lock); nothing in the module touches the struct itself.
unsafe impl Sync for Param {}

/// An `unsigned int` module parameter's value (`param_ops_uint` stores a plain
/// `unsigned int`, which has `AtomicU32`'s layout).
pub struct UintParam(pub AtomicU32);

impl UintParam {
    /// The current value (sysfs may change it at any time when writable).
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A `bool` module parameter's value (`param_ops_bool` stores a `bool`).
pub struct BoolParam(pub AtomicBool);

impl BoolParam {
    /// The current value.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `module_param(name, uint|bool, perm)`: `module_param!(STATIC, "name", param_ops_uint, VALUE, 0o644)`
/// where `VALUE` is a `static` [`UintParam`] (or [`BoolParam`] with `param_ops_bool`);
/// `module_param!(STATIC, "name", ops = &OPS, VALUE, perm)` for operations of its own.
#[macro_export]
macro_rules! module_param {
    ($static:ident, $name:literal, $ops:ident, $value:ident, $perm:expr) => {
        // SAFETY: the kernel's parameter operations are immutable statics.
        $crate::module_param!($static, $name, ops = unsafe { &kernel::bindings::$ops }, $value, $perm);
    };
    ($static:ident, $name:literal, ops = $ops:expr, $value:ident, $perm:expr) => {
        #[link_section = "__param"]
        #[used(compiler)]
        static $static: $crate::sys::Param = $crate::sys::Param(kernel::bindings::kernel_param {
            name: concat!($name, "\0").as_ptr().cast(),
            // SAFETY: `__this_module` is the module's own `struct module`, defined by modpost.
            mod_: unsafe {
                #[allow(improper_ctypes)]
                extern "C" {
                    static __this_module: kernel::types::Opaque<kernel::bindings::module>;
                }
                __this_module.get()
            },
            ops: $ops,
            perm: $perm,
            level: -1,
            flags: 0,
            __bindgen_anon_1: kernel::bindings::kernel_param__bindgen_ty_1 {
                arg: &$value as *const _ as *mut core::ffi::c_void,
            },
        });
    };
}

// ------------------------------------------------------------------ fds, capabilities

/// An fd number reserved with `get_unused_fd_flags`, not yet visible to userspace:
/// [`ReservedFd::install`] publishes a file on it; dropping it gives the number back.
pub struct ReservedFd(u32);

impl ReservedFd {
    /// Reserves the lowest free fd of the current task (`O_CLOEXEC` honoured).
    pub fn new(flags: u32) -> Result<ReservedFd> {
        // SAFETY: get_unused_fd_flags only reserves a slot in current's fd table.
        let fd = unsafe { bindings::get_unused_fd_flags(flags) };
        // CAST: non-negative after the check.
        check_ret(fd).map(|fd| ReservedFd(fd as u32))
    }

    /// The number userspace will see.
    pub fn number(&self) -> u32 {
        self.0
    }

    /// Installs `file` on the reserved number; the fd table takes over the
    /// caller's reference to the file.
    ///
    /// # Safety
    ///
    /// `file` is a live file on which the caller owns a reference it gives up.
    pub unsafe fn install(self, file: *mut bindings::file) {
        // SAFETY: the slot was reserved by `new` in this task; the caller gives up its reference.
        unsafe { bindings::fd_install(self.0, file) };
        core::mem::forget(self);
    }
}

impl Drop for ReservedFd {
    fn drop(&mut self) {
        // SAFETY: the slot was reserved by `new` and never installed.
        unsafe { bindings::put_unused_fd(self.0) };
    }
}

/// `capable(CAP_SYS_ADMIN)` for the current task.
pub fn capable_sys_admin() -> bool {
    // CAST: CAP_SYS_ADMIN is 21.
    // SAFETY: capable() checks the current task's credentials and may audit.
    unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as kernel::ffi::c_int) }
}

/// The thread group id of the current task.
pub fn current_tgid() -> i32 {
    // SAFETY: reads current's tgid.
    unsafe { bindings::dmaplace_current_tgid() }
}

// ------------------------------------------------------------------ memory cgroups

/// A reference to a memory cgroup (none without CONFIG_MEMCG or outside any).
pub struct Memcg(Raw<bindings::mem_cgroup>);

impl Memcg {
    /// The current task's memcg.
    pub fn current() -> Memcg {
        // SAFETY: takes a reference on current's memcg (or returns NULL).
        Memcg(Raw(unsafe { bindings::dmaplace_memcg_current() }))
    }

    /// Runs `f` with kernel allocations that carry `__GFP_ACCOUNT` (and
    /// [`Memcg::charge_page`]) charged to this memcg instead of the current task's.
    pub fn charging<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: set_active_memcg only swaps current's active memcg; restored below.
        let old = unsafe { bindings::set_active_memcg(self.0.0) };
        let r = f();
        // SAFETY: as above.
        unsafe { bindings::set_active_memcg(old) };
        r
    }

    /// Charges `2^order` pages starting at `page` (a block we own, not charged yet)
    /// to this memcg. `ENOMEM` when the memcg is at its limit.
    pub fn charge_page(&self, page: *mut bindings::page, order: u32) -> Result {
        // RETRY_MAYFAIL: at the limit the charge fails (ENOMEM) after reclaim in the
        // memcg, instead of waking its OOM killer.
        let gfp = bindings::GFP_KERNEL | bindings::__GFP_RETRY_MAYFAIL;
        // CAST: order <= MAX_PAGE_ORDER.
        let order = order as i32;
        self.charging(|| {
            // SAFETY: an owned block whose memcg_data is clear (never charged, or uncharged).
            check_ret(unsafe { bindings::memcg_kmem_charge_page(page, gfp, order) })
        })
        .map(drop)
    }
}

/// Undoes [`Memcg::charge_page`] (a no-op for a page that was not charged).
pub fn uncharge_page(page: *mut bindings::page, order: u32) {
    // CAST: order <= MAX_PAGE_ORDER.
    // SAFETY: the page is ours; uncharging reads and clears its memcg_data.
    unsafe { bindings::memcg_kmem_uncharge_page(page, order as i32) };
}

impl Drop for Memcg {
    fn drop(&mut self) {
        // SAFETY: the reference came from dmaplace_memcg_current (NULL is fine).
        unsafe { bindings::mem_cgroup_put(self.0.0) };
    }
}

// ------------------------------------------------------------------ reservation lock

/// Runs `f` with the dma-buf's reservation lock held (`dma_resv_lock(resv, NULL)`).
pub fn with_resv<R>(dmabuf: *mut bindings::dma_buf, f: impl FnOnce() -> R) -> R {
    // SAFETY: the caller holds a reference on the dma-buf; a NULL ctx never returns -EDEADLK.
    unsafe { bindings::dma_resv_lock((*dmabuf).resv, ptr::null_mut()) };
    let r = f();
    // SAFETY: locked above.
    unsafe { bindings::dma_resv_unlock((*dmabuf).resv) };
    r
}

// ------------------------------------------------------------------ KVec removal

/// Drops every element `keep` refuses, keeping the order of the rest.
pub fn vec_retain<T, A: kernel::alloc::Allocator>(v: &mut kernel::alloc::Vec<T, A>, mut keep: impl FnMut(&T) -> bool) {
    let mut i = 0;
    while i < v.len() {
        if keep(&v[i]) {
            i += 1;
        } else {
            drop(vec_remove(v, i));
        }
    }
}

/// Removes and returns the last element.
pub fn vec_pop<T, A: kernel::alloc::Allocator>(v: &mut kernel::alloc::Vec<T, A>) -> Option<T> {
    if v.is_empty() { None } else { Some(vec_remove(v, v.len() - 1)) }
}

/// Removes and returns element `i`, shifting the rest down (6.12's `Vec` has
/// no `remove`). Panics (like `slice` indexing) when `i` is out of bounds.
pub fn vec_remove<T, A: kernel::alloc::Allocator>(v: &mut kernel::alloc::Vec<T, A>, i: usize) -> T {
    let len = v.len();
    v.as_mut_slice()[i..].rotate_left(1);
    let last = v.as_mut_ptr().wrapping_add(len - 1);
    // SAFETY: `last` is the initialised element at len - 1 (the one rotated out); reading it
    // moves it out, and set_len(len - 1) forgets the slot so it is not dropped twice.
    unsafe {
        let item = ptr::read(last);
        v.set_len(len - 1);
        item
    }
}
