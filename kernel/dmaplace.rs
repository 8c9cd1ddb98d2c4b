// SPDX-License-Identifier: GPL-2.0

//! dmaplace: a dma-buf exporter that allocates at the first map, for every
//! attached device at once, and moves the buffer for a late attacher when no
//! DMA is in flight.
//!
//! `/dev/dmaplace` (misc device) takes two ioctls (see `abi.rs` and
//! `docs/KERNEL.md`): CREATE returns a dma-buf fd with no pages behind it;
//! DECLARE adds, for a device by name, the constraints `struct device` cannot
//! express yet (max segments / contiguity, alignment). Everything else comes
//! from the attached devices themselves: `dma_mask`, `bus_dma_limit`,
//! `dma_parms` and the IOMMU domain's `pgsize_bitmap`.
//!
//! `/sys/kernel/debug/dmaplace/buffers` lists every buffer, its attachments and
//! their constraints, the merged plan with the devices that caused each
//! requirement, and the backing's segments.

use core::ffi::c_void;
use core::fmt::Write;
use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::bindings;
use kernel::error::{Result, code};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::types::Opaque;

pub mod abi;
pub mod account;
pub mod backing;
pub mod exporter;
pub mod heap;
pub mod plan;
pub mod pool;
pub mod sys;

use account::Account;
use exporter::Buffer;
use plan::Effective;
use sys::{Bits, Hex, Name, Raw, SeqWriter};

module! {
    type: Dmaplace,
    name: "dmaplace",
    author: "dmaplace",
    description: "dma-buf exporter that allocates at first map for every attached device and moves for late attachers",
    license: "GPL",
}

// 6.12's `module!` cannot import symbol namespaces; dma_buf_* are in DMA_BUF.
// `used(compiler)` keeps this in the one `.modinfo` section modpost reads.
#[link_section = ".modinfo"]
#[used(compiler)]
static __DMAPLACE_IMPORT_NS: [u8; 18] = *b"import_ns=DMA_BUF\0";
// dma_heap_add is in DMA_BUF_HEAP (kernel/dma-heap-export.patch).
#[link_section = ".modinfo"]
#[used(compiler)]
static __DMAPLACE_IMPORT_NS_HEAP: [u8; 23] = *b"import_ns=DMA_BUF_HEAP\0";

/// A DECLAREd device.
struct Declaration {
    name: Name<64>,
    max_segments: u32,
    alignment: u64,
    /// 0: the device's own.
    max_segment_size: u64,
}

/// What a device DECLAREd (zeros: nothing).
#[derive(Clone, Copy, Default)]
pub struct Declared {
    /// 0: no limit; 1: contiguous.
    pub max_segments: u32,
    /// 0: 4 KiB.
    pub alignment: u64,
    /// 0: the device's own `dma_get_max_seg_size`.
    pub max_segment_size: u64,
}

struct GlobalState {
    buffers: KVec<Arc<Buffer>>,
    decls: KVec<Declaration>,
    next_id: u64,
    /// The owners of heap allocations: one per process (thread group id), dropped
    /// once it holds nothing.
    heap_owners: KVec<(i32, Arc<Account>)>,
}

/// State shared by every callback.
#[pin_data]
pub struct Global {
    #[pin]
    state: Mutex<GlobalState>,
    /// Serialises `dma_alloc_pages` on [`Global::allocdev`] (its mask changes).
    #[pin]
    pub alloc_lock: Mutex<()>,
    /// The misc device's `this_device`: what contiguous CMA allocations are made for.
    pub allocdev: AtomicPtr<bindings::device>,
    /// The first byte above RAM.
    pub ram_end: u64,
    /// Pre-zeroed pages.
    #[pin]
    pub pool: pool::Pool,
}

static GLOBAL: AtomicPtr<Global> = AtomicPtr::new(core::ptr::null_mut());

/// The module's state.
pub fn global() -> &'static Global {
    let p = GLOBAL.load(Ordering::Acquire);
    // SAFETY: GLOBAL is set in init before any device node, debugfs file or dma-buf exists,
    // and cleared in drop after they are all gone (dma-bufs and open files pin the module).
    unsafe { &*p }
}

/// The module's state once `init` has set it up (module parameters are set
/// before that, at load).
pub fn global_if_loaded() -> Option<&'static Global> {
    let p = GLOBAL.load(Ordering::Acquire);
    // SAFETY: as in global(); null before init and after exit.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// What a device DECLAREd; zeros when nothing.
pub fn declaration(name: &Name<64>) -> Declared {
    let st = global().state.lock();
    st.decls.iter().find(|d| d.name == *name).map_or(Declared::default(), |d| Declared {
        max_segments: d.max_segments,
        alignment: d.alignment,
        max_segment_size: d.max_segment_size,
    })
}

/// The [`Account`] heap allocations of the current process are charged to (the
/// dma-heap core does not tell a heap which open file allocates).
pub fn heap_owner() -> Result<Arc<Account>> {
    let tgid = sys::current_tgid();
    let mut st = global().state.lock();
    sys::vec_retain(&mut st.heap_owners, |(_, a)| a.charged() > 0);
    if let Some((_, a)) = st.heap_owners.iter().find(|(t, _)| *t == tgid) {
        return Ok(a.clone());
    }
    let a = Account::new()?;
    st.heap_owners.push((tgid, a.clone()), GFP_KERNEL)?;
    Ok(a)
}

/// A new buffer of `size` bytes charged to `owner`, exported: the dma-buf with
/// the caller's reference (no fd yet).
pub fn export_buffer(
    owner: &Arc<Account>,
    size: u64,
    fd_flags: u32,
    name: Name<32>,
    mode: pool::CacheMode,
) -> Result<(Arc<Buffer>, *mut bindings::dma_buf)> {
    let charge = Account::charge(owner, size)?;
    let g = global();
    let id = {
        let mut st = g.state.lock();
        st.next_id += 1;
        st.next_id
    };
    let buf = Buffer::new(id, size, name, charge, mode)?;
    // CAST: fd_flags holds only O_CLOEXEC and O_ACCMODE bits; size <= 1 GiB fits usize.
    let (flags, bytes) = (fd_flags as c_int, size as usize);
    let exp = bindings::dma_buf_export_info {
        exp_name: c"dmaplace".as_ptr().cast(),
        owner: THIS_MODULE.as_ptr(),
        ops: &exporter::DMABUF_OPS,
        size: bytes,
        flags,
        resv: core::ptr::null_mut(),
        priv_: Arc::into_raw(buf.clone()).cast_mut().cast::<c_void>(),
    };
    // SAFETY: `exp` is fully initialised; on success the dma-buf owns the Arc reference in priv.
    let dmabuf = unsafe { bindings::dma_buf_export(&exp) };
    let dmabuf = match sys::check_ptr(dmabuf) {
        Ok(d) => d,
        Err(e) => {
            // SAFETY: export failed, so priv's reference was not taken over: reclaim it.
            drop(unsafe { Arc::from_raw(exp.priv_ as *const Buffer) });
            return Err(e);
        }
    };
    buf.dmabuf.store(dmabuf, Ordering::Release);
    // SAFETY: the name is NUL-terminated; kstrdup copies it; dmabuf->name is set under its
    // name_lock and freed by the core with kfree at release.
    unsafe {
        let copy = bindings::kstrdup(buf.name.as_c_ptr(), bindings::GFP_KERNEL);
        if !copy.is_null() {
            bindings::spin_lock(&mut (*dmabuf).name_lock);
            (*dmabuf).name = copy;
            bindings::spin_unlock(&mut (*dmabuf).name_lock);
        }
    }
    let pushed = g.state.lock().buffers.push(buf.clone(), GFP_KERNEL);
    if pushed.is_err() {
        // SAFETY: we hold the only reference to the new dma-buf; putting it releases it.
        unsafe { bindings::dma_buf_put(dmabuf) };
        return Err(code::ENOMEM);
    }
    Ok((buf, dmabuf))
}

/// Drops the global list's reference to a released buffer.
pub fn forget_buffer(buf: &Arc<Buffer>) {
    let mut st = global().state.lock();
    if let Some(i) = st.buffers.iter().position(|b| Arc::ptr_eq(b, buf)) {
        drop(sys::vec_remove(&mut st.buffers, i));
    }
}

// ---------------------------------------------------------------- ioctls

fn same_ioctl(cmd: u32, want: u32) -> bool {
    // The size bits may differ (older or newer struct); type, nr and direction may not.
    cmd & !(0x3fff << 16) == want & !(0x3fff << 16)
}

fn ioctl_create(account: &Arc<Account>, cmd: u32, arg: usize) -> Result<c_long> {
    let user_size = sys::ioc_size(cmd);
    // The caller must at least be able to receive the fd and the id.
    if user_size < abi::create::ID + 8 {
        return Err(code::EINVAL);
    }
    let mut b = [0u8; abi::CREATE_SIZE];
    sys::copy_struct_in(arg, user_size, &mut b)?;
    let size = sys::get_u64(&b, abi::create::SIZE);
    let fd_flags = sys::get_u32(&b, abi::create::FD_FLAGS);
    if sys::get_u32(&b, abi::create::FD) != 0 || sys::get_u64(&b, abi::create::ID) != 0 {
        return Err(code::EINVAL);
    }
    let flags = sys::get_u64(&b, abi::create::FLAGS);
    if flags & !abi::CREATE_WRITECOMBINE != 0 || fd_flags & !abi::VALID_FD_FLAGS != 0 {
        return Err(code::EINVAL);
    }
    if size == 0 || size % sys::PAGE_BYTES != 0 || size > abi::MAX_SIZE {
        return Err(code::EINVAL);
    }
    let mut name = Name::<32>::from_field(&b[abi::create::NAME..abi::create::NAME + abi::create::NAME_LEN])?;
    if name.is_empty() {
        name = Name::from_field(b"buffer\0")?;
    }
    let mode =
        if flags & abi::CREATE_WRITECOMBINE != 0 { pool::CacheMode::WriteCombined } else { pool::CacheMode::WriteBack };
    let (buf, dmabuf) = export_buffer(account, size, fd_flags, name, mode)?;
    let id = buf.id;
    drop(buf);
    // The fd becomes visible only once userspace has the result: a failed copy-out
    // (EFAULT) leaves no fd behind for the caller to leak, and releases the buffer.
    let fd = match sys::ReservedFd::new(fd_flags) {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: no fd took the reference; putting it releases the buffer.
            unsafe { bindings::dma_buf_put(dmabuf) };
            return Err(e);
        }
    };
    sys::put_u32(&mut b, abi::create::FD, fd.number());
    sys::put_u64(&mut b, abi::create::ID, id);
    if let Err(e) = sys::copy_struct_out(arg, user_size, &b) {
        drop(fd);
        // SAFETY: the fd was never installed; putting our reference releases the buffer.
        unsafe { bindings::dma_buf_put(dmabuf) };
        return Err(e);
    }
    // SAFETY: the dma-buf's file is live and the fd table takes over our reference to it.
    unsafe { fd.install((*dmabuf).file) };
    Ok(0)
}

fn ioctl_declare(cmd: u32, arg: usize) -> Result<c_long> {
    // A declaration changes how every later attachment of that device is placed,
    // whoever owns the buffer: an administrator's decision.
    if !sys::capable_sys_admin() {
        return Err(code::EPERM);
    }
    let mut b = [0u8; abi::DECLARE_SIZE];
    sys::copy_struct_in(arg, sys::ioc_size(cmd), &mut b)?;
    let name = Name::<64>::from_field(&b[abi::declare::DEVICE..abi::declare::DEVICE + abi::declare::DEVICE_LEN])?;
    let max_segments = sys::get_u32(&b, abi::declare::MAX_SEGMENTS);
    let flags = sys::get_u32(&b, abi::declare::FLAGS);
    let alignment = sys::get_u64(&b, abi::declare::ALIGNMENT);
    let max_segment_size = sys::get_u64(&b, abi::declare::MAX_SEGMENT_SIZE);
    let reserved = sys::get_u64(&b, abi::declare::RESERVED);
    if name.is_empty() || reserved != 0 || flags & !abi::DECLARE_FORGET != 0 {
        return Err(code::EINVAL);
    }
    if max_segment_size != 0 && !(sys::PAGE_BYTES..=u64::from(u32::MAX)).contains(&max_segment_size) {
        return Err(code::EINVAL);
    }
    let mut st = global().state.lock();
    let found = st.decls.iter().position(|d| d.name == name);
    if flags & abi::DECLARE_FORGET != 0 {
        if max_segments != 0 || alignment != 0 || max_segment_size != 0 {
            return Err(code::EINVAL);
        }
        let i = found.ok_or(code::ENOENT)?;
        drop(sys::vec_remove(&mut st.decls, i));
        return Ok(0);
    }
    if alignment != 0 && (!alignment.is_power_of_two() || alignment < sys::PAGE_BYTES || alignment > abi::MAX_ALIGNMENT)
    {
        return Err(code::EINVAL);
    }
    match found {
        Some(i) => {
            st.decls[i].max_segments = max_segments;
            st.decls[i].alignment = alignment;
            st.decls[i].max_segment_size = max_segment_size;
        }
        None => {
            if st.decls.len() >= abi::MAX_DECLARATIONS {
                return Err(code::ENOSPC);
            }
            st.decls.push(Declaration { name, max_segments, alignment, max_segment_size }, GFP_KERNEL)?;
        }
    }
    Ok(0)
}

/// The [`Account`] of an open `/dev/dmaplace`.
///
/// # Safety
///
/// `file` is an open `/dev/dmaplace` (private_data set by [`dev_open`]).
unsafe fn file_account<'a>(file: *mut bindings::file) -> kernel::sync::ArcBorrow<'a, Account> {
    // SAFETY: dev_open stored an Arc<Account> there; dev_release takes it back after the last ioctl.
    unsafe { kernel::sync::ArcBorrow::from_raw((*file).private_data as *const Account) }
}

unsafe extern "C" fn dev_open(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    match Account::new() {
        Ok(a) => {
            // SAFETY: the file is being opened; private_data is ours until dev_release.
            unsafe { (*file).private_data = Arc::into_raw(a).cast_mut().cast() };
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn dev_release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    // SAFETY: set by dev_open; release is the last call on this file. Buffers keep their own
    // references to the account until they are released.
    drop(unsafe { Arc::from_raw((*file).private_data as *const Account) });
    0
}

unsafe extern "C" fn dev_ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    // CAST: user pointers fit usize on 64-bit.
    let arg = arg as usize;
    let r = if same_ioctl(cmd, abi::IOCTL_CREATE) {
        // SAFETY: the core calls ioctl on an open /dev/dmaplace.
        let account: Arc<Account> = unsafe { file_account(file) }.into();
        ioctl_create(&account, cmd, arg)
    } else if same_ioctl(cmd, abi::IOCTL_DECLARE) {
        ioctl_declare(cmd, arg)
    } else {
        Err(code::ENOTTY)
    };
    match r {
        Ok(v) => v,
        // CAST: errno values fit.
        Err(e) => e.to_errno() as c_long,
    }
}

// ---------------------------------------------------------------- debugfs

fn opt(v: Option<u64>) -> OptHex {
    OptHex(v)
}

struct OptHex(Option<u64>);

impl core::fmt::Display for OptHex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:#x}"),
            None => f.write_str("none"),
        }
    }
}

/// Writes `# buf N: <what>: dev (why), dev (why)` for a requirement's causes.
fn why(
    w: &mut SeqWriter,
    buf: &Buffer,
    inner: &exporter::Inner,
    what: core::fmt::Arguments<'_>,
    causes: u32,
    reason: impl Fn(&exporter::AttachRec) -> Reason,
) -> core::fmt::Result {
    if causes == 0 {
        return Ok(());
    }
    write!(w, "# buf {}: {}:", buf.id, what)?;
    for (i, a) in inner.attachments.iter().enumerate() {
        if causes & (1 << i) != 0 {
            write!(w, " {} ({})", a.name, reason(a))?;
        }
    }
    w.write_str("\n")
}

struct Reason(&'static str, u64);

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}={:#x}", self.0, self.1)
    }
}

fn show_buffer(w: &mut SeqWriter, buf: &Buffer, ram_end: u64) -> core::fmt::Result {
    let inner = buf.inner.lock();
    writeln!(
        w,
        "buffer id={} name={} size={} backing={} generation={} migrations={} moves_while_mapped={} refused={} maps={} pins={} vmaps={} mmaps={} retired={} retired_bytes={}",
        buf.id,
        buf.name,
        Hex(buf.size),
        u8::from(inner.backing.is_some()),
        inner.generation,
        inner.migrations,
        inner.moves_while_mapped,
        inner.refused,
        inner.maps(),
        inner.pins(),
        inner.vmaps,
        inner.mmaps,
        inner.retired.len(),
        Hex(inner.retired_bytes())
    )?;
    for (i, a) in inner.attachments.iter().enumerate() {
        let c = &a.cons;
        let served = match &inner.backing {
            None => "-",
            Some(b) if plan::serves(&Effective::of(c), buf.size, b.segments()).is_ok() => "1",
            Some(_) => "0",
        };
        writeln!(
            w,
            "attach buf={} idx={} seq={} dev={} dynamic={} pins={} maps={} served={} dma_mask={} bus_dma_limit={} max_segment_size={} segment_boundary_mask={} iommu={} pgsize_bitmap={} aperture_end={} declared_max_segments={} declared_alignment={}",
            buf.id,
            i,
            a.seq,
            a.name,
            u8::from(a.dynamic),
            a.pins,
            a.maps.len(),
            served,
            Hex(c.dma_mask),
            Hex(c.bus_dma_limit),
            Hex(c.max_segment_size),
            Hex(c.segment_boundary_mask),
            u8::from(c.has_iommu()),
            Hex(c.iommu_pgsize_bitmap),
            Hex(c.iommu_aperture_end),
            c.declared_max_segments,
            Hex(c.declared_alignment)
        )?;
    }
    let p = inner.plan(buf.size, ram_end);
    let conflict = match p.conflict {
        None => "none",
        Some(plan::Conflict::NoDevices) => "no_devices",
        Some(plan::Conflict::SegmentLimit { .. }) => "segment_limit",
    };
    let s = plan::strategy(&p);
    write!(
        w,
        "plan buf={} devices={} size={} conflict={} contiguous={} window_end={} window_causes={} max_segments={} max_segments_causes={} max_segment_size={} max_segment_size_causes={} segment_boundary={} segment_boundary_causes={} alignment={} alignment_causes={} granule={} granule_causes={} min_chunk={} strategy=",
        buf.id,
        inner.attachments.len(),
        Hex(p.size),
        conflict,
        u8::from(p.contiguous()),
        Hex(p.window_end.value),
        Bits(p.window_end.causes),
        opt(p.max_segments.value.map(u64::from)),
        Bits(p.max_segments.causes),
        opt(p.max_segment_size.value),
        Bits(p.max_segment_size.causes),
        Hex(p.segment_boundary.value),
        Bits(p.segment_boundary.causes),
        Hex(p.alignment.value),
        Bits(p.alignment.causes),
        Hex(p.granule.value),
        Bits(p.granule.causes),
        opt(p.min_chunk)
    )?;
    if s.contiguous {
        w.write_str("contiguous\n")?;
    } else {
        w.write_str("orders:")?;
        for (k, o) in s.orders[..s.n_orders].iter().enumerate() {
            write!(w, "{}{}", if k > 0 { "," } else { "" }, o)?;
        }
        w.write_str("\n")?;
    }
    for c in p.chunk_sizes() {
        writeln!(w, "chunkpref buf={} size={} devices={}", buf.id, Hex(c.size), Bits(c.devices))?;
    }
    why(w, buf, &inner, format_args!("below {}", Hex(p.window_end.value)), p.window_end.causes, |a| {
        if a.cons.bus_dma_limit != 0
            && a.cons.bus_dma_limit.saturating_add(1) < plan::bits_end(plan::mask_bits(a.cons.dma_mask))
        {
            Reason("bus_dma_limit", a.cons.bus_dma_limit)
        } else {
            Reason("dma_mask", a.cons.dma_mask)
        }
    })?;
    why(
        w,
        buf,
        &inner,
        format_args!("at most {} segments", opt(p.max_segments.value.map(u64::from))),
        p.max_segments.causes,
        |a| Reason("declared max_segments", u64::from(a.cons.declared_max_segments)),
    )?;
    why(
        w,
        buf,
        &inner,
        format_args!("segments at most {}", opt(p.max_segment_size.value)),
        p.max_segment_size.causes,
        |a| Reason("dma_parms max_segment_size", a.cons.max_segment_size),
    )?;
    why(
        w,
        buf,
        &inner,
        format_args!("no segment crosses a multiple of {}", Hex(p.segment_boundary.value.wrapping_add(1))),
        p.segment_boundary.causes,
        |a| Reason("dma_parms segment_boundary_mask", a.cons.segment_boundary_mask),
    )?;
    why(w, buf, &inner, format_args!("aligned to {}", Hex(p.alignment.value)), p.alignment.causes, |a| {
        if a.cons.has_iommu() {
            Reason("IOMMU granule", plan::granule_of(a.cons.iommu_pgsize_bitmap))
        } else {
            Reason("declared alignment", a.cons.declared_alignment)
        }
    })?;
    why(w, buf, &inner, format_args!("granule {}", Hex(p.granule.value)), p.granule.causes, |a| {
        Reason("IOMMU granule", plan::granule_of(a.cons.iommu_pgsize_bitmap))
    })?;
    if let Some(b) = &inner.backing {
        for (k, c) in b.chunks.iter().enumerate() {
            writeln!(
                w,
                "segment buf={} idx={} phys={} len={} order={} source={}",
                buf.id,
                k,
                Hex(c.phys),
                Hex(c.len),
                c.order,
                c.source.name()
            )?;
        }
    }
    Ok(())
}

fn show(w: &mut SeqWriter) -> core::fmt::Result {
    let g = global();
    let st = g.state.lock();
    writeln!(
        w,
        "dmaplace abi=1 ram_end={} buffers={} declarations={} live_bytes={} chunks_allocated={} chunks_freed={} owner_limit_mib={} heap={} heap_owners={}",
        Hex(g.ram_end),
        st.buffers.len(),
        st.decls.len(),
        Hex(backing::LIVE_BYTES.load(Ordering::Relaxed)),
        backing::CHUNKS_ALLOCATED.load(Ordering::Relaxed),
        backing::CHUNKS_FREED.load(Ordering::Relaxed),
        account::OWNER_LIMIT_MIB.get(),
        u8::from(heap::registered()),
        st.heap_owners.len()
    )?;
    for d in st.decls.iter() {
        writeln!(
            w,
            "declare dev={} max_segments={} alignment={} max_segment_size={}",
            d.name,
            d.max_segments,
            Hex(d.alignment),
            Hex(d.max_segment_size)
        )?;
    }
    for b in st.buffers.iter() {
        show_buffer(w, b, g.ram_end)?;
    }
    Ok(())
}

/// What a debugfs file shows (its `i_private`).
const DBG_BUFFERS: usize = 1;
const DBG_POOL: usize = 2;

unsafe extern "C" fn dbg_show(m: *mut bindings::seq_file, _v: *mut c_void) -> c_int {
    let mut w = SeqWriter(m);
    // SAFETY: single_open stored the file's i_private (one of the DBG_ kinds) in m->private.
    // CAST: the pointer holds a small DBG_ kind.
    let kind = unsafe { (*m).private } as usize;
    let _ = if kind == DBG_POOL { global().pool.show(&mut w) } else { show(&mut w) };
    0
}

unsafe extern "C" fn dbg_open(inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    // SAFETY: debugfs calls open with a valid inode and file; single_open keeps dbg_show.
    unsafe { bindings::single_open(file, Some(dbg_show), (*inode).i_private) }
}

// ---------------------------------------------------------------- the module

struct Dmaplace {
    module: &'static ThisModule,
    global: Pin<KBox<Global>>,
    /// `Some` until drop, which deregisters it first.
    misc: Option<sys::MiscDevice>,
    dbg_fops: Raw<Opaque<bindings::file_operations>>,
    debugfs: Raw<bindings::dentry>,
}

impl kernel::Module for Dmaplace {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let global = KBox::pin_init(
            try_pin_init!(Global {
                state <- kernel::new_mutex!(
                    GlobalState { buffers: KVec::new(), decls: KVec::new(), next_id: 0, heap_owners: KVec::new() },
                    "dmaplace::state"
                ),
                alloc_lock <- kernel::new_mutex!((), "dmaplace::alloc"),
                allocdev: AtomicPtr::new(core::ptr::null_mut()),
                ram_end: sys::ram_end(),
                pool <- pool::Pool::new(),
            }? Error),
            GFP_KERNEL,
        )?;
        GLOBAL.store((&*global as *const Global).cast_mut(), Ordering::Release);
        let dbg_fops = KBox::into_raw(KBox::new(
            Opaque::new(bindings::file_operations {
                owner: module.as_ptr(),
                open: Some(dbg_open),
                read: Some(bindings::seq_read),
                llseek: Some(bindings::seq_lseek),
                release: Some(bindings::single_release),
                ..Default::default()
            }),
            GFP_KERNEL,
        )?);
        let mut this = Dmaplace { module, global, misc: None, dbg_fops: Raw(dbg_fops), debugfs: Raw::null() };
        // From here on a failure drops `this`, whose Drop stops the pool.
        this.global.pool.start()?;
        let fops = bindings::file_operations {
            owner: module.as_ptr(),
            open: Some(dev_open),
            release: Some(dev_release),
            unlocked_ioctl: Some(dev_ioctl),
            llseek: Some(bindings::noop_llseek),
            ..Default::default()
        };
        let misc = this.misc.insert(sys::MiscDevice::register(c"dmaplace", fops)?);
        this.global.allocdev.store(misc.this_device(), Ordering::Release);
        // SAFETY: plain debugfs calls; failures come back as ERR_PTRs that debugfs_remove ignores.
        this.debugfs = Raw(unsafe {
            let dir = bindings::debugfs_create_dir(c"dmaplace".as_ptr().cast(), core::ptr::null_mut());
            for (name, kind) in [(c"buffers", DBG_BUFFERS), (c"pool", DBG_POOL)] {
                bindings::debugfs_create_file(
                    name.as_ptr().cast(),
                    0o444,
                    dir,
                    kind as *mut c_void,
                    Opaque::raw_get(dbg_fops),
                );
            }
            dir
        });
        // Last: once the heap is registered the module can no longer be unloaded.
        let heap = heap::register(module)?;
        pr_info!(
            "/dev/dmaplace ready{}; RAM ends at {:#x}\n",
            if heap { ", /dev/dma_heap/dmaplace registered" } else { "" },
            this.global.ram_end
        );
        Ok(this)
    }
}

impl Drop for Dmaplace {
    fn drop(&mut self) {
        // SAFETY: debugfs_remove waits for readers to leave; the dentry came from debugfs_create_dir.
        unsafe { bindings::debugfs_remove(self.debugfs.0) };
        drop(self.misc.take());
        // Parameter writes (pool_max_mib kicks the pool) run under kernel_param_lock and may
        // race with unload: none sees the state after this.
        // SAFETY: our own module; the lock is a plain mutex, released right below.
        unsafe { bindings::kernel_param_lock(self.module.as_ptr()) };
        GLOBAL.store(core::ptr::null_mut(), Ordering::Release);
        // SAFETY: taken above.
        unsafe { bindings::kernel_param_unlock(self.module.as_ptr()) };
        // SAFETY: the debugfs file that pointed to it is gone.
        drop(unsafe { KBox::from_raw(self.dbg_fops.0) });
        // No buffer is left (each pinned the module): the pool gets every block back.
        self.global.pool.stop();
        pr_info!("unloaded\n");
    }
}
