// SPDX-License-Identifier: GPL-2.0

//! The dma-buf exporter: a [`Buffer`] per CREATE, and its `dma_buf_ops`.
//!
//! The exporter is *dynamic* (it has `pin`/`unpin`), so the dma-buf core calls
//! `map_dma_buf` with the reservation lock held and leaves the mapping to the
//! importer: a dynamic importer's attach maps nothing, and the first
//! `map_dma_buf` of any attachment merges every attachment's constraints and
//! allocates once. A non-dynamic importer (every DRM PRIME import in 6.12) is
//! pinned and mapped by the core right after `attach`: for it, attach is the
//! first map.
//!
//! Late attach: a device the backing cannot serve is refused with `EBUSY` while
//! anything is mapped (or vmapped) or the reservation object has unsignalled
//! fences; otherwise it is accepted and the next `map_dma_buf` migrates: new
//! backing for the merged plan, CPU mappings zapped, contents copied, old pages
//! freed, `dma_buf_move_notify` for dynamic importers.
//!
//! Lock order: the dma-buf's `resv` (held by the core around map/unmap/pin) →
//! [`Buffer::inner`] → the allocator lock; the module's global lock is never
//! held together with a buffer's, except by debugfs (global → buffer).

use core::ffi::c_void;
use core::sync::atomic::AtomicPtr;

use kernel::ffi::c_int;

use kernel::bindings;
use kernel::error::{Error, Result, code};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex};

use crate::backing::{Allocator, Backing};
use crate::plan::{self, DeviceConstraints, Effective, Plan};
use crate::sys::{self, DevRef, Name, PAGE_SHIFT, Raw};

/// One mapping of an attachment: the sg table and its direction.
pub struct Mapping {
    /// The table handed to the importer.
    pub sgt: Raw<bindings::sg_table>,
    /// Its direction.
    pub dir: bindings::dma_data_direction,
}

/// What the exporter knows about one attachment.
pub struct AttachRec {
    /// The core's attachment (identity only).
    pub attach: Raw<bindings::dma_buf_attachment>,
    /// The importing device.
    pub dev: Raw<bindings::device>,
    /// `dev_name()`.
    pub name: Name<64>,
    /// Its constraints, read at attach time.
    pub cons: DeviceConstraints,
    /// A dynamic importer (`importer_ops` with `move_notify`).
    pub dynamic: bool,
    /// Pinned by the core (non-dynamic importers) or by the importer.
    pub pinned: bool,
    /// Live mappings.
    pub maps: KVec<Mapping>,
    /// Attach sequence number within the buffer.
    pub seq: u64,
}

/// A buffer's mutable state.
pub struct Inner {
    /// Attachments in attach order (index `i` is bit `i` of a plan's causes).
    pub attachments: KVec<AttachRec>,
    /// The pages, once the first map (or mmap/vmap) needed them.
    pub backing: Option<Backing>,
    /// Bumped on every (re)allocation.
    pub generation: u32,
    /// Migrations done for late attachers.
    pub migrations: u32,
    /// Attaches or maps refused with EBUSY.
    pub refused: u32,
    /// Live vmaps.
    pub vmaps: u32,
    vmap_addr: Raw<c_void>,
    /// mmap calls.
    pub mmaps: u32,
    next_seq: u64,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            attachments: KVec::new(),
            backing: None,
            generation: 0,
            migrations: 0,
            refused: 0,
            vmaps: 0,
            vmap_addr: Raw::null(),
            mmaps: 0,
            next_seq: 0,
        }
    }

    /// Live mappings over all attachments.
    pub fn maps(&self) -> usize {
        self.attachments.iter().map(|a| a.maps.len()).sum()
    }

    /// The constraints of every attachment, in order.
    pub fn constraints(&self) -> ([DeviceConstraints; plan::MAX_DEVICES], usize) {
        let mut out = [DeviceConstraints {
            dma_mask: 0,
            bus_dma_limit: 0,
            max_segment_size: 0,
            segment_boundary_mask: 0,
            iommu_pgsize_bitmap: 0,
            iommu_aperture_end: 0,
            declared_max_segments: 0,
            declared_alignment: 0,
        }; plan::MAX_DEVICES];
        let n = self.attachments.len().min(plan::MAX_DEVICES);
        for (o, a) in out.iter_mut().zip(self.attachments.iter()) {
            *o = a.cons;
        }
        (out, n)
    }

    /// The plan merged over the current attachments.
    pub fn plan(&self, size: u64, ram_end: u64) -> Plan {
        let (devs, n) = self.constraints();
        plan::merge(&devs[..n], size, ram_end)
    }

    /// Whether the backing serves every attachment.
    fn serves_all(&self, size: u64) -> bool {
        match &self.backing {
            None => false,
            Some(b) => {
                self.attachments.iter().all(|a| plan::serves(&Effective::of(&a.cons), size, b.segments()).is_ok())
            }
        }
    }

    fn find(&self, attach: *mut bindings::dma_buf_attachment) -> Option<usize> {
        self.attachments.iter().position(|a| a.attach.0 == attach)
    }
}

/// One exported buffer.
#[pin_data]
pub struct Buffer {
    /// Its id (debugfs, CREATE's output).
    pub id: u64,
    /// Bytes.
    pub size: u64,
    /// Its name.
    pub name: Name<32>,
    /// The dma-buf, once exported.
    pub dmabuf: AtomicPtr<bindings::dma_buf>,
    /// Everything that changes.
    #[pin]
    pub inner: Mutex<Inner>,
}

impl Buffer {
    /// A new buffer with no backing.
    pub fn new(id: u64, size: u64, name: Name<32>) -> Result<Arc<Buffer>> {
        Arc::pin_init(
            pin_init!(Buffer {
                id,
                size,
                name,
                dmabuf: AtomicPtr::new(core::ptr::null_mut()),
                inner <- kernel::new_mutex!(Inner::new(), "dmaplace::Buffer::inner"),
            }),
            GFP_KERNEL,
        )
    }

    /// Allocates a backing for the current attachments when there is none (for
    /// the CPU: mmap, vmap; with no attachment any memory will do).
    fn ensure_backing(&self, inner: &mut Inner) -> Result {
        if inner.backing.is_some() {
            return Ok(());
        }
        let g = crate::global();
        let mut plan = inner.plan(self.size, g.ram_end);
        if inner.attachments.is_empty() {
            plan = plan::merge(&[cpu_constraints()], self.size, g.ram_end);
        }
        let b = self.allocate(&plan, inner)?;
        inner.backing = Some(b);
        inner.generation += 1;
        Ok(())
    }

    fn allocate(&self, plan: &Plan, inner: &Inner) -> Result<Backing> {
        if let Some(c) = plan.conflict {
            pr_info!("buffer {}: no backing can meet every device: {:?}\n", self.id, c);
            return Err(code::EINVAL);
        }
        let g = crate::global();
        let b = Backing::allocate(plan, &Allocator { dev: &g.allocdev, lock: &g.alloc_lock })?;
        for a in inner.attachments.iter() {
            if let Err(why) = plan::serves(&Effective::of(&a.cons), self.size, b.segments()) {
                pr_info!("buffer {}: allocation does not serve {}: {:?}\n", self.id, a.name, why);
                return Err(code::ENOMEM);
            }
        }
        Ok(b)
    }
}

/// The constraints of "the CPU": any page will do.
fn cpu_constraints() -> DeviceConstraints {
    DeviceConstraints {
        dma_mask: u64::MAX,
        bus_dma_limit: 0,
        max_segment_size: u64::from(u32::MAX),
        segment_boundary_mask: u64::MAX,
        iommu_pgsize_bitmap: 0,
        iommu_aperture_end: 0,
        declared_max_segments: 0,
        declared_alignment: 0,
    }
}

/// Reads a device's constraints: its `struct device` plus its declaration.
pub fn device_constraints(dev: DevRef) -> (Name<64>, DeviceConstraints) {
    let name: Name<64> = dev.name();
    let (pg, end) = dev.iommu().unwrap_or((0, 0));
    let (max_segments, alignment) = crate::declaration(&name);
    let cons = DeviceConstraints {
        dma_mask: dev.dma_mask(),
        bus_dma_limit: dev.bus_dma_limit(),
        max_segment_size: dev.max_segment_size(),
        segment_boundary_mask: dev.segment_boundary_mask(),
        iommu_pgsize_bitmap: pg,
        iommu_aperture_end: end,
        declared_max_segments: max_segments,
        declared_alignment: alignment,
    };
    (name, cons)
}

// ---------------------------------------------------------------- dma_buf_ops

/// The exporter's operations.
pub static DMABUF_OPS: bindings::dma_buf_ops = bindings::dma_buf_ops {
    cache_sgt_mapping: false,
    attach: Some(dp_attach),
    detach: Some(dp_detach),
    pin: Some(dp_pin),
    unpin: Some(dp_unpin),
    map_dma_buf: Some(dp_map),
    unmap_dma_buf: Some(dp_unmap),
    release: Some(dp_release),
    begin_cpu_access: Some(dp_begin_cpu_access),
    end_cpu_access: Some(dp_end_cpu_access),
    mmap: Some(dp_mmap),
    vmap: Some(dp_vmap),
    vunmap: Some(dp_vunmap),
};

/// The buffer of a dma-buf this module exported.
///
/// # Safety
///
/// `dmabuf` is a live dma-buf exported with [`DMABUF_OPS`], whose `priv` holds
/// an `Arc<Buffer>` reference until `release`.
unsafe fn buffer<'a>(dmabuf: *mut bindings::dma_buf) -> ArcBorrow<'a, Buffer> {
    // SAFETY: per the function's contract priv came from Arc::into_raw and is released only in dp_release.
    unsafe { ArcBorrow::from_raw((*dmabuf).priv_ as *const Buffer) }
}

fn fences_signalled(dmabuf: *mut bindings::dma_buf) -> bool {
    // SAFETY: the dma-buf is alive (the caller is one of its ops); test_signaled only reads under RCU.
    unsafe { bindings::dma_resv_test_signaled((*dmabuf).resv, bindings::dma_resv_usage_DMA_RESV_USAGE_BOOKKEEP) }
}

unsafe extern "C" fn dp_attach(dmabuf: *mut bindings::dma_buf, attach: *mut bindings::dma_buf_attachment) -> c_int {
    // SAFETY: the core calls attach on our live dma-buf.
    let buf = unsafe { buffer(dmabuf) };
    // SAFETY: the attachment is fully set up by the core before ops->attach.
    let (dev, dynamic) = unsafe { ((*attach).dev, !(*attach).importer_ops.is_null()) };
    let (name, cons) = device_constraints(DevRef(dev));
    let g = crate::global();
    let mut inner = buf.inner.lock();
    if inner.attachments.len() >= plan::MAX_DEVICES {
        return code::ENOSPC.to_errno();
    }
    if let Some(b) = &inner.backing {
        if let Err(why) = plan::serves(&Effective::of(&cons), buf.size, b.segments()) {
            let (maps, vmaps) = (inner.maps(), inner.vmaps);
            if maps > 0 || vmaps > 0 || !fences_signalled(dmabuf) {
                inner.refused += 1;
                pr_info!(
                    "dmaplace: buffer {}: {} cannot use the backing ({:?}) and it cannot move now (maps={} vmaps={}): EBUSY\n",
                    buf.id,
                    name,
                    why,
                    maps,
                    vmaps
                );
                return code::EBUSY.to_errno();
            }
            pr_info!("buffer {}: {} needs a new backing ({:?}); the next map migrates\n", buf.id, name, why);
        }
    }
    // A device set no backing can serve at all is refused now, not at map time.
    let (mut devs, n) = inner.constraints();
    if n < plan::MAX_DEVICES {
        devs[n] = cons;
        if let Some(c) = plan::merge(&devs[..=n], buf.size, g.ram_end).conflict {
            pr_info!("buffer {}: with {} no backing can meet every device: {:?}\n", buf.id, name, c);
            return code::EINVAL.to_errno();
        }
    }
    let seq = inner.next_seq;
    let rec =
        AttachRec { attach: Raw(attach), dev: Raw(dev), name, cons, dynamic, pinned: false, maps: KVec::new(), seq };
    if inner.attachments.push(rec, GFP_KERNEL).is_err() {
        return code::ENOMEM.to_errno();
    }
    inner.next_seq += 1;
    0
}

unsafe extern "C" fn dp_detach(dmabuf: *mut bindings::dma_buf, attach: *mut bindings::dma_buf_attachment) {
    // SAFETY: the core calls detach on our live dma-buf.
    let buf = unsafe { buffer(dmabuf) };
    let mut inner = buf.inner.lock();
    let Some(i) = inner.find(attach) else { return };
    let mut rec = sys::vec_remove(&mut inner.attachments, i);
    // An importer that detaches with live mappings leaks them; unmap them here.
    while !rec.maps.is_empty() {
        let last = rec.maps.len() - 1;
        let m = sys::vec_remove(&mut rec.maps, last);
        pr_warn!("buffer {}: {} detached with a live mapping; unmapping it\n", buf.id, rec.name);
        unmap_sgt(rec.dev.0, m.sgt.0, m.dir);
    }
}

unsafe extern "C" fn dp_pin(attach: *mut bindings::dma_buf_attachment) -> c_int {
    // SAFETY: the core calls pin with a live attachment of our dma-buf (resv held).
    let buf = unsafe { buffer((*attach).dmabuf) };
    let mut inner = buf.inner.lock();
    if let Some(i) = inner.find(attach) {
        inner.attachments[i].pinned = true;
    }
    0
}

unsafe extern "C" fn dp_unpin(attach: *mut bindings::dma_buf_attachment) {
    // SAFETY: the core calls unpin with a live attachment of our dma-buf (resv held).
    let buf = unsafe { buffer((*attach).dmabuf) };
    let mut inner = buf.inner.lock();
    if let Some(i) = inner.find(attach) {
        inner.attachments[i].pinned = false;
    }
}

/// Builds the sg table of `backing` for `dev`: physically adjacent chunks merged,
/// entries split at the device's `max_segment_size` (and, for a device without
/// an IOMMU, at its segment boundary), then `dma_map_sgtable`.
fn map_sgt(backing: &Backing, rec: &AttachRec, dir: bindings::dma_data_direction) -> Result<*mut bindings::sg_table> {
    let cap = rec.cons.max_segment_size.clamp(sys::PAGE_BYTES, u64::from(u32::MAX) & !0xfff);
    let boundary = if rec.cons.has_iommu() { u64::MAX } else { rec.cons.segment_boundary_mask };
    // Count, then fill.
    let mut pieces = KVec::<(u64, u64)>::new();
    let mut run: Option<(u64, u64)> = None;
    let flush = |start: u64, end: u64, pieces: &mut KVec<(u64, u64)>| -> Result {
        let mut s = start;
        while s < end {
            let bend = (s | boundary).saturating_add(1).max(s + sys::PAGE_BYTES);
            let e = end.min(s + cap).min(bend);
            pieces.push((s, e - s), GFP_KERNEL)?;
            s = e;
        }
        Ok(())
    };
    for (start, len) in backing.segments() {
        run = match run {
            Some((rs, re)) if re == start => Some((rs, start + len)),
            Some((rs, re)) => {
                flush(rs, re, &mut pieces)?;
                Some((start, start + len))
            }
            None => Some((start, start + len)),
        };
    }
    if let Some((rs, re)) = run {
        flush(rs, re, &mut pieces)?;
    }
    let n = u32::try_from(pieces.len()).map_err(|_| code::ENOMEM)?;
    let sgt = KBox::into_raw(KBox::new(bindings::sg_table::default(), GFP_KERNEL)?);
    // SAFETY: `sgt` is a zeroed sg_table we own; sg_alloc_table allocates its entries.
    let ret = unsafe { bindings::sg_alloc_table(sgt, n, bindings::GFP_KERNEL) };
    if ret < 0 {
        // SAFETY: `sgt` came from KBox::into_raw above and holds no entries.
        drop(unsafe { KBox::from_raw(sgt) });
        return Err(Error::from_errno(ret));
    }
    // SAFETY: sg_alloc_table succeeded: sgl is a list of `n` entries.
    let mut sg = unsafe { (*sgt).sgl };
    for &(phys, len) in pieces.iter() {
        let page = sys::pfn_to_page(phys >> PAGE_SHIFT);
        // CAST: pieces are at most `cap` (< 4 GiB) long.
        let len = len as u32;
        // SAFETY: `sg` is one of the table's `n` entries; the page belongs to our backing.
        unsafe {
            bindings::sg_set_page(sg, page, len, 0);
            sg = bindings::sg_next(sg);
        }
    }
    // SAFETY: the table is filled; the device is the attachment's, alive while it is attached.
    let ret = unsafe { bindings::dma_map_sgtable(rec.dev.0, sgt, dir, 0) };
    if ret < 0 {
        // SAFETY: the table was allocated above and is not mapped.
        unsafe {
            bindings::sg_free_table(sgt);
            drop(KBox::from_raw(sgt));
        }
        return Err(Error::from_errno(ret));
    }
    Ok(sgt)
}

fn unmap_sgt(dev: *mut bindings::device, sgt: *mut bindings::sg_table, dir: bindings::dma_data_direction) {
    // SAFETY: `sgt` was built and mapped for `dev` by map_sgt and is handed back exactly once.
    unsafe {
        bindings::dma_unmap_sgtable(dev, sgt, dir, 0);
        bindings::sg_free_table(sgt);
        drop(KBox::from_raw(sgt));
    }
}

unsafe extern "C" fn dp_map(
    attach: *mut bindings::dma_buf_attachment,
    dir: bindings::dma_data_direction,
) -> *mut bindings::sg_table {
    // SAFETY: the core calls map_dma_buf (resv held) with a live attachment of our dma-buf.
    let dmabuf = unsafe { (*attach).dmabuf };
    // SAFETY: as above.
    let buf = unsafe { buffer(dmabuf) };
    match map(&buf, dmabuf, attach, dir) {
        Ok(sgt) => sgt,
        Err(e) => sys::err_ptr(e),
    }
}

fn map(
    buf: &Buffer,
    dmabuf: *mut bindings::dma_buf,
    attach: *mut bindings::dma_buf_attachment,
    dir: bindings::dma_data_direction,
) -> Result<*mut bindings::sg_table> {
    let g = crate::global();
    let moved = {
        let mut inner = buf.inner.lock();
        inner.find(attach).ok_or(code::EINVAL)?;
        if inner.backing.is_some() && inner.serves_all(buf.size) {
            false
        } else {
            let plan = inner.plan(buf.size, g.ram_end);
            match inner.backing.is_some() {
                false => {
                    let b = buf.allocate(&plan, &inner)?;
                    inner.backing = Some(b);
                    inner.generation += 1;
                    false
                }
                true => {
                    let (maps, vmaps) = (inner.maps(), inner.vmaps);
                    if maps > 0 || vmaps > 0 || !fences_signalled(dmabuf) {
                        inner.refused += 1;
                        pr_info!(
                            "dmaplace: buffer {}: the backing does not serve every device and cannot move now (maps={} vmaps={}): EBUSY\n",
                            buf.id,
                            maps,
                            vmaps
                        );
                        return Err(code::EBUSY);
                    }
                    let new = buf.allocate(&plan, &inner)?;
                    // CPU mappings fault back in from the new pages (the fault handler
                    // waits for `inner`); nothing else maps the old ones.
                    // SAFETY: the dma-buf is alive; its file's mapping holds the user mmaps of it.
                    unsafe { bindings::unmap_mapping_range((*(*dmabuf).file).f_mapping, 0, 0, 1) };
                    if let Some(old) = inner.backing.as_ref() {
                        new.copy_from(old);
                    }
                    inner.backing = Some(new); // drops (frees) the old backing
                    inner.generation += 1;
                    inner.migrations += 1;
                    pr_info!("buffer {}: migrated for a late attacher (generation {})\n", buf.id, inner.generation);
                    true
                }
            }
        }
    };
    if moved {
        // SAFETY: the core holds the dma-buf's resv lock around map_dma_buf, as move_notify requires.
        unsafe { bindings::dma_buf_move_notify(dmabuf) };
    }
    let mut inner = buf.inner.lock();
    let i = inner.find(attach).ok_or(code::EINVAL)?;
    let sgt = {
        let backing = inner.backing.as_ref().ok_or(code::ENOMEM)?;
        map_sgt(backing, &inner.attachments[i], dir)?
    };
    if inner.attachments[i].maps.reserve(1, GFP_KERNEL).is_err() {
        unmap_sgt(inner.attachments[i].dev.0, sgt, dir);
        return Err(code::ENOMEM);
    }
    inner.attachments[i].maps.push(Mapping { sgt: Raw(sgt), dir }, GFP_KERNEL)?;
    Ok(sgt)
}

unsafe extern "C" fn dp_unmap(
    attach: *mut bindings::dma_buf_attachment,
    sgt: *mut bindings::sg_table,
    dir: bindings::dma_data_direction,
) {
    // SAFETY: the core calls unmap_dma_buf (resv held) with a live attachment of our dma-buf.
    let buf = unsafe { buffer((*attach).dmabuf) };
    let mut inner = buf.inner.lock();
    let Some(i) = inner.find(attach) else { return };
    let rec = &mut inner.attachments[i];
    let Some(j) = rec.maps.iter().position(|m| m.sgt.0 == sgt) else {
        pr_warn!("buffer {}: unmap of a table this buffer did not map\n", buf.id);
        return;
    };
    let m = sys::vec_remove(&mut rec.maps, j);
    let _ = dir;
    unmap_sgt(rec.dev.0, m.sgt.0, m.dir);
}

unsafe extern "C" fn dp_release(dmabuf: *mut bindings::dma_buf) {
    // SAFETY: release is the last op; priv holds the reference dma_buf_export was given.
    let buf = unsafe { Arc::from_raw((*dmabuf).priv_ as *const Buffer) };
    crate::forget_buffer(&buf);
    let mut inner = buf.inner.lock();
    inner.backing = None;
}

fn sync(buf: &Buffer, dir: bindings::dma_data_direction, for_cpu: bool) {
    let inner = buf.inner.lock();
    for a in inner.attachments.iter() {
        for m in a.maps.iter() {
            // SAFETY: each table is mapped for this attachment's device, which is alive.
            unsafe {
                if for_cpu {
                    bindings::dma_sync_sgtable_for_cpu(a.dev.0, m.sgt.0, dir);
                } else {
                    bindings::dma_sync_sgtable_for_device(a.dev.0, m.sgt.0, dir);
                }
            }
        }
    }
}

unsafe extern "C" fn dp_begin_cpu_access(dmabuf: *mut bindings::dma_buf, dir: bindings::dma_data_direction) -> c_int {
    // SAFETY: the core calls begin_cpu_access on our live dma-buf.
    let buf = unsafe { buffer(dmabuf) };
    sync(&buf, dir, true);
    0
}

unsafe extern "C" fn dp_end_cpu_access(dmabuf: *mut bindings::dma_buf, dir: bindings::dma_data_direction) -> c_int {
    // SAFETY: the core calls end_cpu_access on our live dma-buf.
    let buf = unsafe { buffer(dmabuf) };
    sync(&buf, dir, false);
    0
}

/// The vm operations of a CPU mapping: pages fault back in after a migration.
static VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
    fault: Some(dp_fault),
    // SAFETY: every other member is an optional callback; all-zero is "none".
    ..unsafe { core::mem::zeroed() }
};

unsafe extern "C" fn dp_mmap(dmabuf: *mut bindings::dma_buf, vma: *mut bindings::vm_area_struct) -> c_int {
    // SAFETY: the core calls mmap on our live dma-buf, with the mmap lock held for writing.
    let buf = unsafe { buffer(dmabuf) };
    let mut inner = buf.inner.lock();
    if let Err(e) = buf.ensure_backing(&mut inner) {
        return e.to_errno();
    }
    let Some(backing) = inner.backing.as_ref() else {
        return code::ENOMEM.to_errno();
    };
    // SAFETY: the vma is being set up under the mmap write lock; it maps our dma-buf's file,
    // which keeps the buffer alive as long as the vma exists.
    let (start, end, pgoff) = unsafe {
        // CAST: u32 flag constants widen to vm_flags_t.
        bindings::vm_flags_set(
            vma,
            (bindings::VM_MIXEDMAP | bindings::VM_DONTEXPAND | bindings::VM_DONTDUMP) as bindings::vm_flags_t,
        );
        (*vma).vm_ops = &VM_OPS;
        (*vma).vm_private_data = (&*buf as *const Buffer).cast_mut().cast();
        (
            (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start,
            (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end,
            (*vma).vm_pgoff,
        )
    };
    let n = (end - start) >> PAGE_SHIFT;
    for (k, page) in backing.pages().skip(pgoff).take(n).enumerate() {
        let addr = start + (k << PAGE_SHIFT);
        // SAFETY: VM_MIXEDMAP is set; the page is a compound-block or CMA page of our backing,
        // which vm_insert_page takes a reference on.
        let ret = unsafe { bindings::vm_insert_page(vma, addr, page) };
        if ret < 0 {
            return ret;
        }
    }
    inner.mmaps += 1;
    0
}

unsafe extern "C" fn dp_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the fault handler runs with the vma locked; vm_private_data was set by dp_mmap and
    // the vma's file reference keeps the buffer alive.
    let (vma, pgoff, addr, buf) = unsafe {
        let vma = (*vmf).__bindgen_anon_1.vma;
        (
            vma,
            (*vmf).__bindgen_anon_1.pgoff,
            (*vmf).__bindgen_anon_1.address,
            &*((*vma).vm_private_data as *const Buffer),
        )
    };
    let inner = buf.inner.lock();
    // CAST: usize is 64 bits here.
    let Some(page) = inner.backing.as_ref().and_then(|b| b.page(pgoff as u64)) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // SAFETY: VM_MIXEDMAP was set at mmap time, so vm_insert_page needs only the vma lock we hold.
    let ret = unsafe { bindings::vm_insert_page(vma, addr, page) };
    match ret {
        0 => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
        r if r == code::EBUSY.to_errno() => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
        r if r == code::ENOMEM.to_errno() => bindings::vm_fault_reason_VM_FAULT_OOM,
        _ => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
    }
}

unsafe extern "C" fn dp_vmap(dmabuf: *mut bindings::dma_buf, map: *mut bindings::iosys_map) -> c_int {
    // SAFETY: the core calls vmap on our live dma-buf (resv held).
    let buf = unsafe { buffer(dmabuf) };
    let mut inner = buf.inner.lock();
    if let Err(e) = buf.ensure_backing(&mut inner) {
        return e.to_errno();
    }
    if inner.vmaps == 0 {
        let Some(backing) = inner.backing.as_ref() else {
            return code::ENOMEM.to_errno();
        };
        let mut pages = KVVec::<*mut bindings::page>::new();
        for p in backing.pages() {
            if pages.push(p, GFP_KERNEL).is_err() {
                return code::ENOMEM.to_errno();
            }
        }
        let Ok(n) = u32::try_from(pages.len()) else {
            return code::ENOMEM.to_errno();
        };
        // SAFETY: `pages` holds `n` pages of our backing; vmap maps them without keeping the array.
        let addr = unsafe { bindings::vmap_kernel(pages.as_mut_ptr(), n) };
        if addr.is_null() {
            return code::ENOMEM.to_errno();
        }
        inner.vmap_addr = Raw(addr);
    }
    inner.vmaps += 1;
    // SAFETY: `map` is the core's output argument.
    unsafe {
        (*map).__bindgen_anon_1.vaddr = inner.vmap_addr.0;
        (*map).is_iomem = false;
    }
    0
}

unsafe extern "C" fn dp_vunmap(dmabuf: *mut bindings::dma_buf, _map: *mut bindings::iosys_map) {
    // SAFETY: the core calls vunmap on our live dma-buf (resv held), once per successful vmap.
    let buf = unsafe { buffer(dmabuf) };
    let mut inner = buf.inner.lock();
    if inner.vmaps == 0 {
        return;
    }
    inner.vmaps -= 1;
    if inner.vmaps == 0 {
        // SAFETY: the address came from vmap_kernel and nobody uses it any more.
        unsafe { bindings::vunmap(inner.vmap_addr.0) };
        inner.vmap_addr = Raw::null();
    }
}
