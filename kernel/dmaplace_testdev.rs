// SPDX-License-Identifier: GPL-2.0

//! dmaplace_testdev: fake dma-buf importers for dmaplace's guest tests.
//!
//! `/dev/dmaplace_testdev` creates platform devices (no driver) with the DMA
//! parameters a test asks for (`dma_mask`, `bus_dma_limit`, `dma_parms`), and
//! lets userspace attach a dma-buf fd to one of them, or to a real PCI device by
//! name (a device behind qemu's intel-iommu: fake devices cannot join an IOMMU
//! group), map it, read the DMA side of the sg table back, unmap and detach.
//! Attachments belong to the open file and are torn down when it is closed.
//!
//! With `TD_ATTACH_DYNAMIC` the attachment is a dynamic importer: nothing is
//! mapped until MAP, `move_notify` calls are counted (STATUS reads them), PIN and
//! UNPIN call `dma_buf_pin`/`dma_buf_unpin`, and with `TD_ATTACH_UNMAP_ON_MOVE`
//! the importer unmaps everything inside `move_notify`, as an eager importer
//! would; without it the mappings stay until UNMAP, as a lazy importer's would.
//!
//! Lock order: the file's attachment list → the dma-buf's `resv` → an
//! importer's mapping list (→ the exporter's locks). Maps and unmaps run under
//! `resv`, so `move_notify` (which runs under `resv`) never sees a half-done one.

use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use kernel::bindings;
use kernel::error::{Error, Result, code};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::sync::Mutex;
use kernel::uaccess::UserSlice;

pub mod abi;
pub mod sys;

use sys::{Name, Raw};

module! {
    type: Testdev,
    name: "dmaplace_testdev",
    author: "dmaplace",
    description: "fake dma-buf importers with configurable DMA constraints (dmaplace tests)",
    license: "GPL",
}

#[link_section = ".modinfo"]
#[used(compiler)]
static __TESTDEV_IMPORT_NS: [u8; 18] = *b"import_ns=DMA_BUF\0";

/// A fake importer.
struct FakeDev {
    name: Name<32>,
    pdev: Raw<bindings::platform_device>,
}

/// One mapping: the table the exporter returned and its direction.
type Map = (Raw<bindings::sg_table>, bindings::dma_data_direction);

/// What the importer side keeps per attachment (the `importer_priv` of a
/// dynamic attachment points here).
#[pin_data]
struct Importer {
    move_notifies: AtomicU64,
    unmapped_on_move: AtomicU64,
    pins: AtomicU32,
    unmap_on_move: bool,
    /// Live mappings; changed only with the dma-buf's `resv` held.
    #[pin]
    maps: Mutex<KVec<Map>>,
}

struct Attachment {
    handle: u64,
    dmabuf: Raw<bindings::dma_buf>,
    attach: Raw<bindings::dma_buf_attachment>,
    /// A reference taken on a borrowed PCI device (null for fake devices).
    borrowed: Raw<bindings::device>,
    importer: Pin<KBox<Importer>>,
    flags: u32,
}

/// Per open file.
#[pin_data]
struct FileState {
    #[pin]
    attachments: Mutex<KVec<Attachment>>,
    next: AtomicU64,
}

#[pin_data]
struct Global {
    #[pin]
    devices: Mutex<KVec<FakeDev>>,
}

static GLOBAL: AtomicPtr<Global> = AtomicPtr::new(core::ptr::null_mut());

fn global() -> &'static Global {
    // SAFETY: set in init before the device node exists, cleared in drop after it is gone.
    unsafe { &*GLOBAL.load(Ordering::Acquire) }
}

unsafe extern "C" fn td_move_notify(attach: *mut bindings::dma_buf_attachment) {
    // SAFETY: importer_priv is the Importer we passed to dma_buf_dynamic_attach; it lives until
    // after dma_buf_detach.
    let imp = unsafe { &*((*attach).importer_priv as *const Importer) };
    imp.move_notifies.fetch_add(1, Ordering::Relaxed);
    if !imp.unmap_on_move {
        return;
    }
    let mut maps = imp.maps.lock();
    while let Some((sgt, dir)) = sys::vec_pop(&mut maps) {
        // SAFETY: move_notify runs with the dma-buf's resv held, as dma_buf_unmap_attachment
        // requires; the table came from dma_buf_map_attachment on this attachment.
        unsafe { bindings::dma_buf_unmap_attachment(attach, sgt.0, dir) };
        imp.unmapped_on_move.fetch_add(1, Ordering::Relaxed);
    }
}

static IMPORTER_OPS: bindings::dma_buf_attach_ops =
    bindings::dma_buf_attach_ops { allow_peer2peer: false, move_notify: Some(td_move_notify) };

fn same_ioctl(cmd: u32, want: u32) -> bool {
    cmd & !(0x3fff << 16) == want & !(0x3fff << 16)
}

fn create_device(cmd: u32, arg: usize) -> Result<c_long> {
    let mut b = [0u8; abi::TD_DEVICE_SIZE];
    sys::copy_struct_in(arg, sys::ioc_size(cmd), &mut b)?;
    let name = Name::<32>::from_field(&b[abi::td_device::NAME..abi::td_device::NAME + abi::td_device::NAME_LEN])?;
    let mask = sys::get_u64(&b, abi::td_device::DMA_MASK);
    let limit = sys::get_u64(&b, abi::td_device::BUS_DMA_LIMIT);
    let max_seg = sys::get_u32(&b, abi::td_device::MAX_SEGMENT_SIZE);
    let flags = sys::get_u32(&b, abi::td_device::FLAGS);
    let boundary = sys::get_u64(&b, abi::td_device::SEGMENT_BOUNDARY_MASK);
    if name.is_empty() || mask == 0 || flags != 0 {
        return Err(code::EINVAL);
    }
    let mut devs = global().devices.lock();
    if devs.iter().any(|d| d.name == name) {
        return Err(code::EEXIST);
    }
    devs.reserve(1, GFP_KERNEL)?;
    // SAFETY: the name is NUL-terminated; PLATFORM_DEVID_NONE keeps it as the device name.
    let pdev = unsafe { bindings::platform_device_alloc(name.as_c_ptr(), -1) };
    if pdev.is_null() {
        return Err(code::ENOMEM);
    }
    // SAFETY: `pdev` is a fresh platform device (dma_mask points to its platform_dma_mask and
    // dma_parms to its own parameters); we configure it before adding it.
    let ret = unsafe {
        let dev = core::ptr::addr_of_mut!((*pdev).dev);
        let mut r = bindings::dma_set_mask(dev, mask);
        if r == 0 {
            r = bindings::dma_set_coherent_mask(dev, mask);
        }
        if r == 0 {
            (*dev).bus_dma_limit = limit;
            if max_seg != 0 {
                bindings::dma_set_max_seg_size(dev, max_seg);
            }
            if boundary != 0 {
                // CAST: unsigned long is 64 bits here.
                bindings::dma_set_seg_boundary(dev, boundary as c_ulong);
            }
            r = bindings::platform_device_add(pdev);
        }
        r
    };
    if ret != 0 {
        // SAFETY: not added (or add failed): platform_device_put frees it.
        unsafe { bindings::platform_device_put(pdev) };
        return Err(Error::from_errno(ret));
    }
    devs.push(FakeDev { name, pdev: Raw(pdev) }, GFP_KERNEL)?;
    Ok(0)
}

/// Finds a fake device, or a PCI device by name (taking a reference).
fn find_device(name: &Name<64>) -> Result<(*mut bindings::device, *mut bindings::device)> {
    let devs = global().devices.lock();
    if let Some(d) = devs.iter().find(|d| d.name.as_bytes() == name.as_bytes()) {
        // SAFETY: registered platform devices live until module exit.
        return Ok((unsafe { core::ptr::addr_of_mut!((*d.pdev.0).dev) }, core::ptr::null_mut()));
    }
    // SAFETY: the name is NUL-terminated; a non-null result carries a reference we must put.
    let dev = unsafe { bindings::pci_find_device_by_name(name.as_c_ptr()) };
    if dev.is_null() {
        return Err(code::ENODEV);
    }
    Ok((dev, dev))
}

fn attach(st: &FileState, cmd: u32, arg: usize) -> Result<c_long> {
    let user_size = sys::ioc_size(cmd);
    if user_size < abi::TD_ATTACH_SIZE {
        return Err(code::EINVAL);
    }
    let mut b = [0u8; abi::TD_ATTACH_SIZE];
    sys::copy_struct_in(arg, user_size, &mut b)?;
    let name = Name::<64>::from_field(&b[abi::td_attach::DEVICE..abi::td_attach::DEVICE + abi::td_attach::DEVICE_LEN])?;
    // CAST: the field is an s32 fd.
    let fd = sys::get_u32(&b, abi::td_attach::FD) as i32;
    let flags = sys::get_u32(&b, abi::td_attach::FLAGS);
    let known = abi::TD_ATTACH_DYNAMIC | abi::TD_ATTACH_UNMAP_ON_MOVE;
    let dynamic = flags & abi::TD_ATTACH_DYNAMIC != 0;
    if flags & !known != 0 || (flags & abi::TD_ATTACH_UNMAP_ON_MOVE != 0 && !dynamic) {
        return Err(code::EINVAL);
    }
    if sys::get_u64(&b, abi::td_attach::HANDLE) != 0 {
        return Err(code::EINVAL);
    }
    // Held across the attach so that the push below cannot fail (capacity reserved).
    let mut atts = st.attachments.lock();
    atts.reserve(1, GFP_KERNEL)?;
    let (dev, borrowed) = find_device(&name)?;
    let put_dev = || {
        if !borrowed.is_null() {
            // SAFETY: the reference came from bus_find_device.
            unsafe { bindings::put_device(borrowed) };
        }
    };
    // SAFETY: dma_buf_get takes a reference on the dma-buf behind `fd`, or returns an ERR_PTR.
    let dmabuf = match sys::check_ptr(unsafe { bindings::dma_buf_get(fd) }) {
        Ok(d) => d,
        Err(e) => {
            put_dev();
            return Err(e);
        }
    };
    let importer = KBox::pin_init(
        pin_init!(Importer {
            move_notifies: AtomicU64::new(0),
            unmapped_on_move: AtomicU64::new(0),
            pins: AtomicU32::new(0),
            unmap_on_move: flags & abi::TD_ATTACH_UNMAP_ON_MOVE != 0,
            maps <- kernel::new_mutex!(KVec::new(), "dmaplace_testdev::importer"),
        }),
        GFP_KERNEL,
    );
    let importer = match importer {
        Ok(i) => i,
        Err(e) => {
            // SAFETY: our reference from dma_buf_get.
            unsafe { bindings::dma_buf_put(dmabuf) };
            put_dev();
            return Err(e);
        }
    };
    let priv_ = (&*importer as *const Importer).cast_mut().cast::<c_void>();
    // SAFETY: `dmabuf` and `dev` are referenced; the importer ops and the pinned importer
    // outlive the attachment (dropped only after dma_buf_detach).
    let att = unsafe {
        if dynamic {
            bindings::dma_buf_dynamic_attach(dmabuf, dev, &IMPORTER_OPS, priv_)
        } else {
            bindings::dma_buf_attach(dmabuf, dev)
        }
    };
    let att = match sys::check_ptr(att) {
        Ok(a) => a,
        Err(e) => {
            // SAFETY: the attach failed; drop the dma-buf reference we took.
            unsafe { bindings::dma_buf_put(dmabuf) };
            put_dev();
            return Err(e);
        }
    };
    let handle = st.next.fetch_add(1, Ordering::Relaxed) + 1;
    let rec = Attachment { handle, dmabuf: Raw(dmabuf), attach: Raw(att), borrowed: Raw(borrowed), importer, flags };
    atts.push(rec, GFP_KERNEL)?;
    drop(atts);
    sys::put_u64(&mut b, abi::td_attach::HANDLE, handle);
    sys::copy_struct_out(arg, user_size, &b)?;
    Ok(0)
}

/// Unmaps everything, drops the pins, detaches and puts the references.
fn teardown(a: Attachment) {
    sys::with_resv(a.dmabuf.0, || {
        let mut maps = a.importer.maps.lock();
        while let Some((sgt, dir)) = sys::vec_pop(&mut maps) {
            // SAFETY: resv is held; the table came from dma_buf_map_attachment on this attachment.
            unsafe { bindings::dma_buf_unmap_attachment(a.attach.0, sgt.0, dir) };
        }
        while a.importer.pins.load(Ordering::Relaxed) > 0 {
            // SAFETY: resv is held; each pin came from dma_buf_pin on this attachment.
            unsafe { bindings::dma_buf_unpin(a.attach.0) };
            a.importer.pins.fetch_sub(1, Ordering::Relaxed);
        }
    });
    // SAFETY: the attachment, dma-buf reference and device reference are ours; the importer
    // (dropped with `a`, after this) is no longer reachable from the dma-buf once detached.
    unsafe {
        bindings::dma_buf_detach(a.dmabuf.0, a.attach.0);
        bindings::dma_buf_put(a.dmabuf.0);
        if !a.borrowed.0.is_null() {
            bindings::put_device(a.borrowed.0);
        }
    }
}

fn map(st: &FileState, cmd: u32, arg: usize) -> Result<c_long> {
    let user_size = sys::ioc_size(cmd);
    if user_size < abi::TD_MAP_SIZE {
        return Err(code::EINVAL);
    }
    let mut b = [0u8; abi::TD_MAP_SIZE];
    sys::copy_struct_in(arg, user_size, &mut b)?;
    let handle = sys::get_u64(&b, abi::td_map::HANDLE);
    let entries = sys::get_u64(&b, abi::td_map::ENTRIES);
    let max = sys::get_u32(&b, abi::td_map::MAX_ENTRIES);
    let dir = sys::get_u32(&b, abi::td_map::DIR);
    if dir > 2
        || sys::get_u64(&b, abi::td_map::RESERVED) != 0
        || sys::get_u32(&b, abi::td_map::NENTS) != 0
        || sys::get_u32(&b, abi::td_map::ORIG_NENTS) != 0
    {
        return Err(code::EINVAL);
    }
    let atts = st.attachments.lock();
    let a = atts.iter().find(|a| a.handle == handle).ok_or(code::ENOENT)?;
    // The DMA side is read under resv (another importer's map may move the buffer and make
    // an eager importer unmap this table) and copied out after: no user fault under resv.
    let mut dma = KVVec::<(u64, u64)>::new();
    let (nents, orig) = sys::with_resv(a.dmabuf.0, || -> Result<(u32, u32)> {
        a.importer.maps.lock().reserve(1, GFP_KERNEL)?;
        // SAFETY: a live attachment of ours, with resv held (the map may move the buffer and
        // call move_notify, which takes the importer's list lock: not held here).
        let sgt = sys::check_ptr(unsafe { bindings::dma_buf_map_attachment(a.attach.0, dir) })?;
        a.importer.maps.lock().push((Raw(sgt), dir), GFP_KERNEL)?;
        // SAFETY: a mapped table: nents DMA entries from sgl.
        let (nents, orig, mut sg) = unsafe { ((*sgt).nents, (*sgt).orig_nents, (*sgt).sgl) };
        for _ in 0..nents.min(max) {
            // SAFETY: `sg` walks the table's first nents entries (the DMA side).
            let (addr, len) = unsafe { (bindings::sg_dma_address(sg), bindings::sg_dma_len(sg)) };
            dma.push((addr, u64::from(len)), GFP_KERNEL)?;
            // SAFETY: as above.
            sg = unsafe { bindings::sg_next(sg) };
        }
        Ok((nents, orig))
    })?;
    drop(atts);
    // CAST: u32 -> usize.
    let mut w = UserSlice::new(entries as usize, (max as usize) * abi::TD_ENTRY_SIZE).writer();
    for &(addr, len) in dma.iter() {
        let mut e = [0u8; abi::TD_ENTRY_SIZE];
        sys::put_u64(&mut e, 0, addr);
        sys::put_u64(&mut e, 8, len);
        w.write_slice(&e)?;
    }
    sys::put_u32(&mut b, abi::td_map::NENTS, nents);
    sys::put_u32(&mut b, abi::td_map::ORIG_NENTS, orig);
    sys::copy_struct_out(arg, user_size, &b)?;
    Ok(0)
}

/// The ioctls that take only a handle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HandleOp {
    Unmap,
    Detach,
    Pin,
    Unpin,
}

fn handle_op(st: &FileState, cmd: u32, arg: usize, op: HandleOp) -> Result<c_long> {
    let mut b = [0u8; abi::TD_HANDLE_SIZE];
    sys::copy_struct_in(arg, sys::ioc_size(cmd), &mut b)?;
    if sys::get_u64(&b, 8) != 0 {
        return Err(code::EINVAL);
    }
    let handle = sys::get_u64(&b, 0);
    let mut atts = st.attachments.lock();
    let i = atts.iter().position(|a| a.handle == handle).ok_or(code::ENOENT)?;
    match op {
        HandleOp::Detach => {
            let a = sys::vec_remove(&mut atts, i);
            drop(atts);
            teardown(a);
            Ok(0)
        }
        HandleOp::Unmap => {
            let a = &atts[i];
            sys::with_resv(a.dmabuf.0, || {
                let (sgt, dir) = sys::vec_pop(&mut a.importer.maps.lock()).ok_or(code::EINVAL)?;
                // SAFETY: resv is held; the table came from dma_buf_map_attachment on this attachment.
                unsafe { bindings::dma_buf_unmap_attachment(a.attach.0, sgt.0, dir) };
                Ok(0)
            })
        }
        HandleOp::Pin | HandleOp::Unpin => {
            let a = &atts[i];
            // dma_buf_pin is for dynamic importers (the core pins static ones itself).
            if a.flags & abi::TD_ATTACH_DYNAMIC == 0 {
                return Err(code::EINVAL);
            }
            sys::with_resv(a.dmabuf.0, || {
                if op == HandleOp::Pin {
                    // SAFETY: resv is held; a live dynamic attachment of ours.
                    sys::check_ret(unsafe { bindings::dma_buf_pin(a.attach.0) })?;
                    a.importer.pins.fetch_add(1, Ordering::Relaxed);
                } else {
                    if a.importer.pins.load(Ordering::Relaxed) == 0 {
                        return Err(code::EINVAL);
                    }
                    // SAFETY: resv is held; this pin came from dma_buf_pin on this attachment.
                    unsafe { bindings::dma_buf_unpin(a.attach.0) };
                    a.importer.pins.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(0)
            })
        }
    }
}

fn status(st: &FileState, cmd: u32, arg: usize) -> Result<c_long> {
    let user_size = sys::ioc_size(cmd);
    if user_size < abi::TD_STATUS_SIZE {
        return Err(code::EINVAL);
    }
    let mut b = [0u8; abi::TD_STATUS_SIZE];
    sys::copy_struct_in(arg, user_size, &mut b)?;
    let outputs = sys::get_u64(&b, abi::td_status::MOVE_NOTIFIES)
        | u64::from(sys::get_u32(&b, abi::td_status::MAPS))
        | u64::from(sys::get_u32(&b, abi::td_status::FLAGS))
        | u64::from(sys::get_u32(&b, abi::td_status::PINS))
        | u64::from(sys::get_u32(&b, abi::td_status::UNMAPPED_ON_MOVE));
    if outputs != 0 {
        return Err(code::EINVAL);
    }
    let handle = sys::get_u64(&b, abi::td_status::HANDLE);
    let atts = st.attachments.lock();
    let a = atts.iter().find(|a| a.handle == handle).ok_or(code::ENOENT)?;
    let imp = &a.importer;
    sys::put_u64(&mut b, abi::td_status::MOVE_NOTIFIES, imp.move_notifies.load(Ordering::Relaxed));
    // CAST: a handful of mappings.
    sys::put_u32(&mut b, abi::td_status::MAPS, imp.maps.lock().len() as u32);
    sys::put_u32(&mut b, abi::td_status::FLAGS, a.flags);
    sys::put_u32(&mut b, abi::td_status::PINS, imp.pins.load(Ordering::Relaxed));
    // CAST: a count of mappings.
    sys::put_u32(&mut b, abi::td_status::UNMAPPED_ON_MOVE, imp.unmapped_on_move.load(Ordering::Relaxed) as u32);
    drop(atts);
    sys::copy_struct_out(arg, user_size, &b)?;
    Ok(0)
}

unsafe extern "C" fn td_open(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    let st = KBox::pin_init(
        pin_init!(FileState {
            attachments <- kernel::new_mutex!(KVec::new(), "dmaplace_testdev::file"),
            next: AtomicU64::new(0),
        }),
        GFP_KERNEL,
    );
    match st {
        Ok(st) => {
            // SAFETY: the state is pinned in its box and freed in td_release.
            let p = KBox::into_raw(unsafe { Pin::into_inner_unchecked(st) });
            // SAFETY: the file is being opened; private_data is ours from now on.
            unsafe { (*file).private_data = p.cast() };
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn td_release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    // SAFETY: set by td_open; release is the last call on this file.
    let st = unsafe { KBox::from_raw((*file).private_data as *mut FileState) };
    let mut atts = st.attachments.lock();
    while let Some(a) = sys::vec_pop(&mut atts) {
        teardown(a);
    }
    drop(atts);
    drop(st);
    0
}

unsafe extern "C" fn td_ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: set by td_open and valid until td_release.
    let st = unsafe { &*((*file).private_data as *const FileState) };
    // CAST: user pointers fit usize.
    let arg = arg as usize;
    let r = if same_ioctl(cmd, abi::TD_CREATE_DEVICE) {
        create_device(cmd, arg)
    } else if same_ioctl(cmd, abi::TD_ATTACH) {
        attach(st, cmd, arg)
    } else if same_ioctl(cmd, abi::TD_MAP) {
        map(st, cmd, arg)
    } else if same_ioctl(cmd, abi::TD_UNMAP) {
        handle_op(st, cmd, arg, HandleOp::Unmap)
    } else if same_ioctl(cmd, abi::TD_DETACH) {
        handle_op(st, cmd, arg, HandleOp::Detach)
    } else if same_ioctl(cmd, abi::TD_PIN) {
        handle_op(st, cmd, arg, HandleOp::Pin)
    } else if same_ioctl(cmd, abi::TD_UNPIN) {
        handle_op(st, cmd, arg, HandleOp::Unpin)
    } else if same_ioctl(cmd, abi::TD_STATUS) {
        status(st, cmd, arg)
    } else {
        Err(code::ENOTTY)
    };
    match r {
        Ok(v) => v,
        // CAST: errno values fit.
        Err(e) => e.to_errno() as c_long,
    }
}

struct Testdev {
    global: Pin<KBox<Global>>,
    /// `Some` until drop, which deregisters it first.
    misc: Option<sys::MiscDevice>,
}

impl kernel::Module for Testdev {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let global = KBox::pin_init(
            pin_init!(Global { devices <- kernel::new_mutex!(KVec::new(), "dmaplace_testdev::devices") }),
            GFP_KERNEL,
        )?;
        GLOBAL.store((&*global as *const Global).cast_mut(), Ordering::Release);
        let mut this = Testdev { global, misc: None };
        let fops = bindings::file_operations {
            owner: module.as_ptr(),
            open: Some(td_open),
            release: Some(td_release),
            unlocked_ioctl: Some(td_ioctl),
            llseek: Some(bindings::noop_llseek),
            ..Default::default()
        };
        this.misc = Some(sys::MiscDevice::register(c"dmaplace_testdev", fops)?);
        Ok(this)
    }
}

impl Drop for Testdev {
    fn drop(&mut self) {
        drop(self.misc.take());
        let mut devs = self.global.devices.lock();
        while !devs.is_empty() {
            let last = devs.len() - 1;
            let d = sys::vec_remove(&mut devs, last);
            // SAFETY: added in create_device; nothing uses it once every file is closed.
            unsafe { bindings::platform_device_unregister(d.pdev.0) };
        }
        drop(devs);
        GLOBAL.store(core::ptr::null_mut(), Ordering::Release);
    }
}
