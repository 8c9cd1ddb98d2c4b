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
//! the backing cannot move ([`MoveBlocker`]: an attachment is pinned — every
//! static importer is, and with `CONFIG_DMABUF_MOVE_NOTIFY` off every mapping
//! is —, it is vmapped, or the reservation object has unsignalled fences);
//! otherwise it is accepted and the next `map_dma_buf` migrates: new backing for
//! the merged plan, CPU mappings zapped, contents copied, `dma_buf_move_notify`
//! for dynamic importers. The old pages are freed at once if no dynamic importer
//! still has them mapped, else when the last such mapping is unmapped (they are
//! *retired*): no device mapping ever outlives its pages.
//!
//! CPU mappings (`mmap`) are `VM_IO | VM_MIXEDMAP` with special PTEs
//! (`vmf_insert_mixed`): `get_user_pages` refuses them (`VM_IO`, and GUP-fast
//! skips special PTEs), so no page reference taken through a mapping (O_DIRECT,
//! vmsplice, process_vm_readv) can outlive a move; `/proc/self/pagemap` still
//! shows the frames. `MAP_PRIVATE` is refused: a private copy-on-write page
//! would silently stop following the buffer.
//!
//! Lock order: the mmap lock (mmap, fault) → the dma-buf's `resv` (held by the
//! core around map/unmap/pin/vmap) → [`Buffer::inner`] → the allocator lock →
//! `i_mmap_rwsem` (zapping CPU mappings); the module's global lock is never held
//! together with a buffer's, except by debugfs (global → buffer).

use core::ffi::c_void;
use core::sync::atomic::AtomicPtr;

use kernel::ffi::c_int;

use kernel::bindings;
use kernel::error::{Error, Result, code};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow, Mutex};

use crate::account::Charge;
use crate::backing::{Allocator, Backing};
use crate::plan::{self, DeviceConstraints, Effective, Plan};
use crate::pool::CacheMode;
use crate::sys::{self, DevRef, Memcg, Name, PAGE_SHIFT, Raw};

/// One mapping of an attachment: the sg table and its direction.
pub struct Mapping {
    /// The table handed to the importer.
    pub sgt: Raw<bindings::sg_table>,
    /// Its direction.
    pub dir: bindings::dma_data_direction,
    /// The backing generation it maps (older than the buffer's after a move).
    pub generation: u32,
}

/// An old backing that a dynamic importer still has mapped after a move: freed
/// when its last mapping is unmapped.
pub struct Retired {
    /// Its generation.
    pub generation: u32,
    /// The pages.
    pub backing: Backing,
}

/// Why a backing cannot move now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveBlocker {
    /// Attachments hold this many pins (static importers, explicit `dma_buf_pin`,
    /// or mappings with `CONFIG_DMABUF_MOVE_NOTIFY` off).
    Pinned(u32),
    /// Mapped into the kernel (`vmap`).
    Vmapped(u32),
    /// Unsignalled fences in the reservation object: DMA may be in flight.
    Fenced,
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
    /// Pins held (they nest): by the core for a non-dynamic importer, by a
    /// dynamic importer with `dma_buf_pin`, or per mapping with move_notify off.
    pub pins: u32,
    /// Live mappings.
    pub maps: KVec<Mapping>,
    /// Attach sequence number within the buffer.
    pub seq: u64,
}

/// A buffer's mutable state.
pub struct Inner {
    /// Attachments in attach order (index `i` is bit `i` of a plan's causes).
    pub attachments: KVec<AttachRec>,
    /// The pages, once the first map (or CPU access) needed them.
    pub backing: Option<Backing>,
    /// Old backings still mapped by dynamic importers after a move.
    pub retired: KVec<Retired>,
    /// Bumped on every (re)allocation.
    pub generation: u32,
    /// Moves made while a dynamic importer had the old backing mapped.
    pub moves_while_mapped: u32,
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
            retired: KVec::new(),
            generation: 0,
            moves_while_mapped: 0,
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

    /// Pins over all attachments.
    pub fn pins(&self) -> u32 {
        self.attachments.iter().map(|a| a.pins).sum()
    }

    /// Why the backing cannot move now, if it cannot. Unpinned mappings of dynamic
    /// importers do not block a move: they get `move_notify`, and their old pages
    /// stay until they unmap.
    fn move_blocker(&self, dmabuf: *mut bindings::dma_buf) -> Option<MoveBlocker> {
        match (self.pins(), self.vmaps) {
            (0, 0) if fences_signalled(dmabuf) => None,
            (0, 0) => Some(MoveBlocker::Fenced),
            (0, v) => Some(MoveBlocker::Vmapped(v)),
            (p, _) => Some(MoveBlocker::Pinned(p)),
        }
    }

    /// Frees the retired backings no mapping refers to any more.
    fn free_unmapped_retired(&mut self) {
        let attachments = &self.attachments;
        sys::vec_retain(&mut self.retired, |r| {
            attachments.iter().any(|a| a.maps.iter().any(|m| m.generation == r.generation))
        });
    }

    /// Bytes held by retired backings.
    pub fn retired_bytes(&self) -> u64 {
        self.retired.iter().map(|r| r.backing.size).sum()
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
    /// Its size, charged to its owner until it is released.
    pub charge: Charge,
    /// The memory cgroup of the task that created it: its pages are charged
    /// there, whichever task places them.
    pub memcg: Memcg,
    /// How CPUs map its pages.
    pub mode: CacheMode,
    /// Everything that changes.
    #[pin]
    pub inner: Mutex<Inner>,
}

impl Buffer {
    /// A new buffer with no backing.
    pub fn new(id: u64, size: u64, name: Name<32>, charge: Charge, mode: CacheMode) -> Result<Arc<Buffer>> {
        Arc::pin_init(
            pin_init!(Buffer {
                id,
                size,
                name,
                dmabuf: AtomicPtr::new(core::ptr::null_mut()),
                charge,
                memcg: Memcg::current(),
                mode,
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
        let alloc =
            Allocator { dev: &g.allocdev, lock: &g.alloc_lock, pool: &g.pool, memcg: &self.memcg, mode: self.mode };
        let b = Backing::allocate(plan, &alloc)?;
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
    let d = crate::declaration(&name);
    let cons = DeviceConstraints {
        dma_mask: dev.dma_mask(),
        bus_dma_limit: dev.bus_dma_limit(),
        // A declared size stands in for a dma_set_max_seg_size the driver did not make.
        max_segment_size: if d.max_segment_size != 0 { d.max_segment_size } else { dev.max_segment_size() },
        segment_boundary_mask: dev.segment_boundary_mask(),
        iommu_pgsize_bitmap: pg,
        iommu_aperture_end: end,
        declared_max_segments: d.max_segments,
        declared_alignment: d.alignment,
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
            if let Some(blocker) = inner.move_blocker(dmabuf) {
                inner.refused += 1;
                pr_info!(
                    "buffer {}: {} cannot use the backing ({:?}) and it cannot move now ({:?}): EBUSY\n",
                    buf.id,
                    name,
                    why,
                    blocker
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
    let rec = AttachRec { attach: Raw(attach), dev: Raw(dev), name, cons, dynamic, pins: 0, maps: KVec::new(), seq };
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
    while let Some(m) = sys::vec_pop(&mut rec.maps) {
        pr_warn!("buffer {}: {} detached with a live mapping; unmapping it\n", buf.id, rec.name);
        unmap_sgt(rec.dev.0, m.sgt.0, m.dir);
    }
    if rec.pins > 0 {
        pr_warn!("buffer {}: {} detached with {} pins held\n", buf.id, rec.name, rec.pins);
    }
    inner.free_unmapped_retired();
}

unsafe extern "C" fn dp_pin(attach: *mut bindings::dma_buf_attachment) -> c_int {
    // SAFETY: the core calls pin with a live attachment of our dma-buf (resv held).
    let dmabuf = unsafe { (*attach).dmabuf };
    // SAFETY: as above.
    let buf = unsafe { buffer(dmabuf) };
    // A pinned backing cannot move, so it is placed now, for every device attached so far
    // (allocating, or moving for a late attacher while nothing else pins it). The core pins
    // a static importer at attach, and every mapping when CONFIG_DMABUF_MOVE_NOTIFY is off,
    // before calling map_dma_buf: the move must happen here, not in map.
    if let Err(e) = buf.place(dmabuf, attach) {
        return e.to_errno();
    }
    let mut inner = buf.inner.lock();
    let Some(i) = inner.find(attach) else {
        return code::EINVAL.to_errno();
    };
    inner.attachments[i].pins += 1;
    0
}

unsafe extern "C" fn dp_unpin(attach: *mut bindings::dma_buf_attachment) {
    // SAFETY: the core calls unpin with a live attachment of our dma-buf (resv held).
    let buf = unsafe { buffer((*attach).dmabuf) };
    let mut inner = buf.inner.lock();
    if let Some(i) = inner.find(attach) {
        let rec = &mut inner.attachments[i];
        match rec.pins.checked_sub(1) {
            Some(n) => rec.pins = n,
            None => pr_warn!("buffer {}: {} unpinned more often than pinned\n", buf.id, rec.name),
        }
    }
}

/// Builds the sg table of `backing` for `dev`: physically adjacent chunks merged,
/// entries split at the device's `max_segment_size` (and, for a device without
/// an IOMMU, at its segment boundary), then `dma_map_sgtable`.
///
/// Mapped with `DMA_ATTR_SKIP_CPU_SYNC`, as DRM PRIME's exporters map dma-bufs
/// (`drm_gem_map_dma_buf`): a dma-buf is mapped by several devices at once, and
/// dma-debug refuses overlapping streaming mappings that each do their own cache
/// maintenance. The maintenance a plain map and unmap would do is done
/// explicitly instead: a sync for the device after mapping, a sync for the CPU
/// before unmapping (and `begin/end_cpu_access` sync every live mapping).
fn map_sgt(backing: &Backing, rec: &AttachRec, dir: bindings::dma_data_direction) -> Result<*mut bindings::sg_table> {
    // The device's own limit, not a DECLAREd one: a declared max_segment_size only
    // changes the plan; the DMA API (and dma-debug) holds every entry to dma_parms.
    let cap = DevRef(rec.dev.0).max_segment_size().clamp(sys::PAGE_BYTES, u64::from(u32::MAX) & !0xfff);
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
    // CAST: DMA_ATTR_SKIP_CPU_SYNC is a small flag.
    let ret = unsafe { bindings::dma_map_sgtable(rec.dev.0, sgt, dir, bindings::DMA_ATTR_SKIP_CPU_SYNC as _) };
    if ret < 0 {
        // SAFETY: the table was allocated above and is not mapped.
        unsafe {
            bindings::sg_free_table(sgt);
            drop(KBox::from_raw(sgt));
        }
        return Err(Error::from_errno(ret));
    }
    // SAFETY: just mapped for this device (the cache maintenance the skipped sync would do).
    unsafe { bindings::dma_sync_sgtable_for_device(rec.dev.0, sgt, dir) };
    Ok(sgt)
}

fn unmap_sgt(dev: *mut bindings::device, sgt: *mut bindings::sg_table, dir: bindings::dma_data_direction) {
    // SAFETY: `sgt` was built and mapped for `dev` by map_sgt and is handed back exactly once.
    unsafe {
        bindings::dma_sync_sgtable_for_cpu(dev, sgt, dir);
        // CAST: DMA_ATTR_SKIP_CPU_SYNC is a small flag.
        bindings::dma_unmap_sgtable(dev, sgt, dir, bindings::DMA_ATTR_SKIP_CPU_SYNC as _);
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
    buf.place(dmabuf, attach)?;
    let mut inner = buf.inner.lock();
    let i = inner.find(attach).ok_or(code::EINVAL)?;
    let generation = inner.generation;
    let sgt = {
        let backing = inner.backing.as_ref().ok_or(code::ENOMEM)?;
        map_sgt(backing, &inner.attachments[i], dir)?
    };
    if inner.attachments[i].maps.reserve(1, GFP_KERNEL).is_err() {
        unmap_sgt(inner.attachments[i].dev.0, sgt, dir);
        return Err(code::ENOMEM);
    }
    inner.attachments[i].maps.push(Mapping { sgt: Raw(sgt), dir, generation }, GFP_KERNEL)?;
    Ok(sgt)
}

impl Buffer {
    /// Makes the backing serve every attachment: allocates the first one, or
    /// moves the buffer for a late attacher (then tells the dynamic importers).
    /// Called with the dma-buf's `resv` held (map, pin).
    fn place(&self, dmabuf: *mut bindings::dma_buf, attach: *mut bindings::dma_buf_attachment) -> Result {
        let moved = {
            let mut inner = self.inner.lock();
            inner.find(attach).ok_or(code::EINVAL)?;
            if inner.backing.is_none() {
                self.ensure_backing(&mut inner)?;
                false
            } else if inner.serves_all(self.size) {
                false
            } else {
                self.migrate(&mut inner, dmabuf)?;
                true
            }
        };
        if moved {
            // Dynamic importers drop what they derived from the old pages (they may
            // unmap right here, which frees the retired backing).
            // SAFETY: the caller holds the dma-buf's resv lock, as move_notify requires.
            unsafe { bindings::dma_buf_move_notify(dmabuf) };
        }
        Ok(())
    }

    /// Moves the buffer to a backing for the merged plan of every attachment:
    /// `EBUSY` when it cannot move now. Zaps the CPU mappings (they refault onto
    /// the new pages) before the old pages can be freed; the old backing is
    /// retired while a dynamic importer still has it mapped. The caller sends
    /// `move_notify` once `inner` is unlocked.
    fn migrate(&self, inner: &mut Inner, dmabuf: *mut bindings::dma_buf) -> Result {
        if let Some(blocker) = inner.move_blocker(dmabuf) {
            inner.refused += 1;
            pr_info!(
                "buffer {}: the backing does not serve every device and cannot move now ({:?}): EBUSY\n",
                self.id,
                blocker
            );
            return Err(code::EBUSY);
        }
        let plan = inner.plan(self.size, crate::global().ram_end);
        let new = self.allocate(&plan, inner)?;
        // No CPU can write the old pages from here on: faults wait for `inner`.
        // SAFETY: the dma-buf is alive; its file's mapping holds the user mmaps of it.
        unsafe { bindings::unmap_mapping_range((*(*dmabuf).file).f_mapping, 0, 0, 1) };
        let old_generation = inner.generation;
        let Some(old) = inner.backing.replace(new) else { return Ok(()) };
        if let Some(b) = inner.backing.as_ref() {
            b.copy_from(&old);
        }
        inner.generation += 1;
        inner.migrations += 1;
        let still_mapped = inner.attachments.iter().any(|a| a.maps.iter().any(|m| m.generation == old_generation));
        if still_mapped {
            inner.moves_while_mapped += 1;
            if inner.retired.reserve(1, GFP_KERNEL).is_err() {
                // Cannot track it: keep the old pages rather than free them under a mapping.
                pr_warn!("buffer {}: out of memory retiring the old backing; leaking it\n", self.id);
                core::mem::forget(old);
            } else {
                inner.retired.push(Retired { generation: old_generation, backing: old }, GFP_KERNEL)?;
            }
        }
        pr_info!("buffer {}: migrated for a late attacher (generation {})\n", self.id, inner.generation);
        Ok(())
    }
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
    inner.free_unmapped_retired();
}

unsafe extern "C" fn dp_release(dmabuf: *mut bindings::dma_buf) {
    // SAFETY: release is the last op; priv holds the reference dma_buf_export was given.
    let buf = unsafe { Arc::from_raw((*dmabuf).priv_ as *const Buffer) };
    crate::forget_buffer(&buf);
    let mut inner = buf.inner.lock();
    inner.backing = None;
    while let Some(r) = sys::vec_pop(&mut inner.retired) {
        pr_warn!("buffer {}: released with a retired backing (generation {})\n", buf.id, r.generation);
    }
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
    // The CPU's first access places the pages (for the devices attached so far).
    if let Err(e) = buf.ensure_backing(&mut buf.inner.lock()) {
        return e.to_errno();
    }
    sync(&buf, dir, true);
    0
}

unsafe extern "C" fn dp_end_cpu_access(dmabuf: *mut bindings::dma_buf, dir: bindings::dma_data_direction) -> c_int {
    // SAFETY: the core calls end_cpu_access on our live dma-buf.
    let buf = unsafe { buffer(dmabuf) };
    sync(&buf, dir, false);
    0
}

/// The vm operations of a CPU mapping: pages are inserted at fault time, and
/// fault back in after a migration zapped them.
static VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
    fault: Some(dp_fault),
    // SAFETY: every other member is an optional callback; all-zero is "none".
    ..unsafe { core::mem::zeroed() }
};

/// Pages inserted per fault at most (the rest of the faulting chunk, up to this):
/// fewer faults for a sequential first touch, bounded work under the lock.
const FAULT_AROUND_PAGES: u64 = 512;

unsafe extern "C" fn dp_mmap(dmabuf: *mut bindings::dma_buf, vma: *mut bindings::vm_area_struct) -> c_int {
    // SAFETY: the core calls mmap on our live dma-buf, with the mmap lock held for writing.
    let buf = unsafe { buffer(dmabuf) };
    // SAFETY: the vma is being set up under the mmap write lock.
    let flags = unsafe { (*vma).__bindgen_anon_2.vm_flags };
    // CAST: u32 flag constants widen to vm_flags_t.
    if flags & (bindings::VM_SHARED as bindings::vm_flags_t) == 0 {
        pr_info!("buffer {}: MAP_PRIVATE mapping refused (it would not follow a move): EINVAL\n", buf.id);
        return code::EINVAL.to_errno();
    }
    // SAFETY: as above; the vma maps our dma-buf's file, which keeps the buffer alive as long
    // as the vma exists. VM_IO keeps get_user_pages out; VM_MIXEDMAP (not PFNMAP) keeps
    // pagemap working; the PTEs are special (vmf_insert_mixed), so no page is referenced.
    unsafe {
        // CAST: u32 flag constants widen to vm_flags_t.
        bindings::vm_flags_set(
            vma,
            (bindings::VM_IO | bindings::VM_MIXEDMAP | bindings::VM_DONTEXPAND | bindings::VM_DONTDUMP)
                as bindings::vm_flags_t,
        );
        (*vma).vm_ops = &VM_OPS;
        (*vma).vm_private_data = (&*buf as *const Buffer).cast_mut().cast();
        if buf.mode == CacheMode::WriteCombined {
            // The pages are write-combined in the kernel's map too (set_pages_array_wc):
            // every mapping of them agrees.
            (*vma).vm_page_prot = bindings::pgprot_writecombine((*vma).vm_page_prot);
        }
    }
    buf.inner.lock().mmaps += 1;
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
    // SAFETY: as above.
    let vm_end = unsafe { (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end };
    let mut inner = buf.inner.lock();
    // The first CPU access places the pages (for the devices attached so far).
    if inner.backing.is_none() && buf.ensure_backing(&mut inner).is_err() {
        return bindings::vm_fault_reason_VM_FAULT_OOM;
    }
    let Some(backing) = inner.backing.as_ref() else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // CAST: usize is 64 bits here.
    let (pgoff, addr, vm_end) = (pgoff as u64, addr as u64, vm_end as u64);
    let Some(run) = backing.run_from(pgoff) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    let n = run.pages.min(FAULT_AROUND_PAGES).min((vm_end - addr) >> PAGE_SHIFT);
    let mut ret = bindings::vm_fault_reason_VM_FAULT_NOPAGE;
    for k in 0..n {
        let pfn = bindings::pfn_t { val: run.pfn + k };
        // CAST: addresses fit usize.
        let at = (addr + (k << PAGE_SHIFT)) as usize;
        // SAFETY: VM_MIXEDMAP is set and the address lies in the vma (bounded by vm_end); the
        // frame is one of our backing's pages, which stay ours while `inner` is held.
        ret = unsafe { bindings::vmf_insert_mixed(vma, at, pfn) };
        if ret != bindings::vm_fault_reason_VM_FAULT_NOPAGE {
            break;
        }
    }
    ret
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
        let addr = unsafe {
            match buf.mode {
                CacheMode::WriteBack => bindings::vmap_kernel(pages.as_mut_ptr(), n),
                CacheMode::WriteCombined => bindings::dmaplace_vmap_wc(pages.as_mut_ptr(), n),
            }
        };
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
