//! The kernel module as the exporter (`/dev/dmaplace`, `docs/KERNEL.md`).
//!
//! Here the daemon does not place memory: the module does, at the first
//! `map_dma_buf`, from every attached device's `struct device` (plus its DECLAREd
//! segment count and alignment), and it moves the buffer itself when a late attacher
//! needs it and nothing blocks the move. The daemon brokers:
//!
//! - **create**: `DMAPLACE_IOCTL_CREATE`, a dma-buf with no pages; the daemon holds it
//!   while any client does;
//! - **attach**: the device is attached *in the kernel* through the module's test
//!   importer (`/dev/dmaplace_testdev`, which can attach any of its fake devices or any
//!   PCI device by name) as a dynamic importer, so that the module sees every
//!   participant's constraints before the first map, whichever process maps first.
//!   `EBUSY` (the buffer would have to move and cannot now) is `busy`, or queued in
//!   the daemon with `--busy queue` and retried when the last access ends; `EINVAL` (no
//!   backing can meet the devices together) is `conflict`; `ENODEV` is
//!   `unknown_device`. A late attacher the backing does not serve is mapped once right
//!   away, so that the module moves the buffer now;
//! - **map**: the device is mapped once (the module allocates at the first map, for
//!   every attachment) and unmapped again: the daemon keeps no device mapping, the
//!   client's own driver imports the fd. The placement is then checked independently
//!   of the module: the backing from debugfs against `dmaplace_core::verify` for every
//!   attached device, and the device's DMA addresses against its `dma_mask`;
//! - **begin/end_access**: DMA in flight is an unsignalled sw_sync fence in the
//!   buffer's reservation object (what the module checks before a move), signalled at
//!   the end;
//! - **moved**: the module's `migrations` counter in debugfs; a move the daemon did not
//!   cause (a client's driver mapping the fd) is found by polling and reported too.
//!
//! The fd a client gets is the module's dma-buf itself: after a move it still works
//! (CPU mappings refault onto the new pages); `moved` says that device mappings made
//! before are stale.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsFd;

use dmaplace_core::exporter::BusyPolicy;
use dmaplace_core::{BufferDesc, Platform, Request, Size, Usage, solve, verify};
use dmaplace_linux::kmod::{self, BufferInfo, Created, Dmaplace, Importer, SgDma, Snapshot, SwSync, TestDev};
use dmaplace_proto::{AttachHow, Desc, ErrorCode, ErrorReply, Layout};
use rustix::io::Errno;
use serde_json::{Value, json};

use crate::engine::{Engine, Mapped, Notice};
use crate::placer::Accounting;

macro_rules! kid {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

kid!(
    /// A buffer the daemon created in the module.
    KBuffer,
    "kbuf"
);
kid!(
    /// A device attached in the kernel on a client's behalf.
    KAttachment,
    "katt"
);
kid!(
    /// A mapping handed to a client (the fd and the generation it was made at).
    KMapping,
    "kmap"
);
kid!(
    /// DMA in flight: a sw_sync fence in the reservation object.
    KAccess,
    "kfence"
);

/// The largest buffer the module creates.
const MAX_SIZE: u64 = 1 << 30;
/// Page size of the module's ABI.
const PAGE: u64 = 4096;

struct Buf {
    created: Created,
    name: String,
    size: u64,
    /// Moves seen so far (debugfs `migrations`).
    generation: u32,
    allocated: bool,
    attachments: Vec<KAttachment>,
    /// Accesses in flight.
    accesses: u32,
}

struct Att {
    buffer: KBuffer,
    device: String,
    hints: Usage,
    /// The test importer's handle; `None` while queued (`--busy queue`).
    handle: Option<u64>,
    /// Why a queued attach failed when it was retried.
    failed: Option<String>,
}

struct Map {
    attachment: KAttachment,
    generation: u32,
}

struct Access {
    buffer: KBuffer,
    timeline: SwSync,
}

/// Counters, named as the core exporter's.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Stats {
    allocations: u64,
    migrations: u64,
    logical_attaches: u64,
    busy_refusals: u64,
    queued: u64,
    conflicts: u64,
    move_notifies: u64,
    /// Moves the daemon did not cause (found by polling debugfs).
    outside_moves: u64,
}

/// The module as the exporter.
pub struct KmodEngine {
    dp: Dmaplace,
    td: TestDev,
    /// This machine's RAM and CMA (for `verify`), named `kernel`.
    platform: Platform,
    busy: BusyPolicy,
    buffers: BTreeMap<KBuffer, Buf>,
    attachments: BTreeMap<KAttachment, Att>,
    mappings: BTreeMap<KMapping, Map>,
    accesses: BTreeMap<KAccess, Access>,
    next: u32,
    notices: Vec<Notice<KBuffer, KAttachment, KMapping>>,
    stats: Stats,
}

impl fmt::Debug for KmodEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmodEngine").field("buffers", &self.buffers.len()).finish_non_exhaustive()
    }
}

fn reply(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

fn no_handle(what: impl fmt::Display) -> ErrorReply {
    reply(ErrorCode::Internal, format!("the kmod engine has no {what}"))
}

/// Why the module could not be used, for the daemon's start-up error.
#[derive(Debug, thiserror::Error)]
#[error("the kernel module backend: {0}")]
pub struct KmodError(String);

/// A name the module accepts: printable, no spaces or `=`, at most 31 bytes.
fn module_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '=' { c } else { '_' }).take(31).collect();
    if out.is_empty() {
        out.push_str("buffer");
    }
    out
}

impl KmodEngine {
    /// Opens `/dev/dmaplace` and `/dev/dmaplace_testdev`, and reads this machine's RAM
    /// and CMA areas (for `verify`). Needs root, debugfs and both modules.
    pub fn open(busy: BusyPolicy) -> Result<KmodEngine, KmodError> {
        let dp = Dmaplace::open().map_err(|e| KmodError(format!("{}: {e}", kmod::DEV_DMAPLACE)))?;
        let td = TestDev::open().map_err(|e| {
            KmodError(format!(
                "{}: {e} (the module's test importer attaches devices on the clients' behalf: load dmaplace_testdev.ko)",
                kmod::DEV_TESTDEV
            ))
        })?;
        Snapshot::read().map_err(|e| KmodError(format!("{e} (mount debugfs; the daemon reads moves there)")))?;
        let mut platform = kmod::guest_platform().map_err(|e| KmodError(format!("this machine's memory: {e}")))?;
        platform.name = "kernel".into();
        Ok(KmodEngine {
            dp,
            td,
            platform,
            busy,
            buffers: BTreeMap::new(),
            attachments: BTreeMap::new(),
            mappings: BTreeMap::new(),
            accesses: BTreeMap::new(),
            next: 0,
            notices: Vec::new(),
            stats: Stats::default(),
        })
    }

    fn next_id(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    fn buf(&self, b: KBuffer) -> Result<&Buf, ErrorReply> {
        self.buffers.get(&b).ok_or_else(|| no_handle(b))
    }

    /// The module's record of a buffer.
    fn info(&self, b: KBuffer) -> Result<BufferInfo, ErrorReply> {
        let id = self.buf(b)?.created.id;
        let snap = Snapshot::read().map_err(|e| reply(ErrorCode::Backend, e))?;
        snap.buffer(id)
            .cloned()
            .ok_or_else(|| reply(ErrorCode::Backend, format!("buffer {id} is missing from {}", kmod::DEBUGFS)))
    }

    /// Reads the buffer's record; a move since the last look notifies every attachment
    /// but `cause` (which learns it from its reply) and makes older mappings stale.
    fn refresh(&mut self, b: KBuffer, cause: Option<KAttachment>) -> Result<BufferInfo, ErrorReply> {
        let info = self.info(b)?;
        self.observe(b, &info, cause);
        Ok(info)
    }

    fn observe(&mut self, b: KBuffer, info: &BufferInfo, cause: Option<KAttachment>) {
        let Some(buf) = self.buffers.get_mut(&b) else { return };
        if info.has_backing && !buf.allocated {
            self.stats.allocations += 1;
        }
        buf.allocated = info.has_backing;
        if info.migrations <= buf.generation {
            return;
        }
        let moves = u64::from(info.migrations - buf.generation);
        buf.generation = info.migrations;
        self.stats.migrations += moves;
        self.stats.allocations += moves;
        if cause.is_none() {
            self.stats.outside_moves += moves;
            tracing::warn!(buffer = %b, moves, "the module moved the buffer outside the daemon (a driver mapped it)");
        }
        tracing::info!(buffer = %b, generation = info.migrations, name = %buf.name, "moved by the module");
        let generation = buf.generation;
        for a in buf.attachments.iter().copied().filter(|a| Some(*a) != cause) {
            let invalidated: Vec<KMapping> = self
                .mappings
                .iter()
                .filter(|(_, m)| m.attachment == a && m.generation < generation)
                .map(|(id, _)| *id)
                .collect();
            self.stats.move_notifies += 1;
            self.notices.push(Notice { buffer: b, attachment: a, generation, invalidated });
        }
    }

    /// Checks the module's placement independently: the backing against
    /// `dmaplace_core::verify` for every attached device, and the mapping device's DMA
    /// addresses against its reach.
    fn check_placement(&self, info: &BufferInfo, device: &str, sg: &SgDma) -> Result<(), ErrorReply> {
        let misplaced = |why: String| {
            tracing::error!(buffer = info.id, why, "the module's placement fails the daemon's check");
            reply(ErrorCode::Backend, format!("the module placed buffer {} ({}) where {why}", info.id, info.name))
        };
        if let Some(a) = info.attachments.iter().find(|a| a.served == Some(false)) {
            return Err(misplaced(format!("its own check says {} is not served", a.dev)));
        }
        let backing = info.backing();
        match info.core_plan(&self.platform) {
            Ok(plan) => verify(&plan, &plan.devices, &backing).map_err(|v| misplaced(v.to_string()))?,
            // The core's memory model may find no room where the kernel found some (it
            // knows the machine's memory, not what is free now): verify each device alone.
            Err(why) => {
                tracing::debug!(buffer = info.id, why, "no core plan for the devices together; verifying each alone");
                for d in info.devices().map_err(&misplaced)? {
                    let request = [Request { device: &d, hints: Usage::empty() }];
                    match solve(&self.platform, &BufferDesc::Size(Size::new(info.size)), &request) {
                        Ok(plan) => verify(&plan, &plan.devices, &backing).map_err(|v| misplaced(v.to_string()))?,
                        Err(e) => {
                            tracing::warn!(buffer = info.id, device = d.name, error = %e, "cannot verify this device's placement: the core has no plan for it alone")
                        }
                    }
                }
            }
        }
        if let Some(a) = info.attachments.iter().rev().find(|a| a.dev == device && !a.iommu) {
            let reach = if a.bus_dma_limit != 0 { a.dma_mask.min(a.bus_dma_limit) } else { a.dma_mask };
            if let Some((addr, len)) = sg.entries.iter().find(|(addr, len)| addr.saturating_add(len - 1) > reach) {
                return Err(misplaced(format!(
                    "{device} got DMA address {addr:#x}+{len:#x} beyond its reach {reach:#x}"
                )));
            }
        }
        Ok(())
    }

    /// Maps the attachment once (the module allocates or moves), unmaps, and checks.
    fn map_once(&mut self, b: KBuffer, a: KAttachment) -> Result<BufferInfo, ErrorReply> {
        let att = self.attachments.get(&a).ok_or_else(|| no_handle(a))?;
        let (handle, device) = (att.handle.ok_or_else(|| no_handle(a))?, att.device.clone());
        let sg = self.td.map(handle).map_err(|e| self.kernel_error(b, &device, "map", e))?;
        if let Err(e) = self.td.unmap(handle) {
            tracing::warn!(attachment = %a, error = %e, "unmap after the placing map");
        }
        let info = self.refresh(b, Some(a))?;
        self.check_placement(&info, &device, &sg)?;
        Ok(info)
    }

    /// Turns an errno of the module into the protocol's error.
    fn kernel_error(&self, b: KBuffer, device: &str, op: &str, e: Errno) -> ErrorReply {
        let name = self.buffers.get(&b).map_or("?", |x| x.name.as_str());
        match e {
            Errno::BUSY => {
                let accesses = self.buffers.get(&b).map_or(0, |x| x.accesses);
                let blocker = if accesses > 0 {
                    format!("DMA is in flight: {accesses} unsignalled fence(s) in its reservation object")
                } else {
                    let pins = self.info(b).map(|i| (i.pins, i.vmaps)).unwrap_or_default();
                    format!("it is pinned ({} pins) or vmapped ({}) by an importer", pins.0, pins.1)
                };
                reply(
                    ErrorCode::Busy,
                    format!(
                        "buffer `{name}` would have to move for {device} and cannot move now: {blocker} (the module's {op}: EBUSY)"
                    ),
                )
            }
            Errno::NODEV => reply(
                ErrorCode::UnknownDevice,
                format!(
                    "the kernel has no device `{device}` (neither a dmaplace_testdev device nor a PCI device by that name)"
                ),
            ),
            Errno::INVAL if op == "attach" => reply(
                ErrorCode::Conflict,
                format!(
                    "no backing of buffer `{name}` can meet {device} together with its other devices (the module's merge: a segment limit no chunking meets; EINVAL)"
                ),
            ),
            Errno::NOSPC => {
                reply(ErrorCode::Quota, format!("buffer `{name}`: the module takes at most 32 attachments per buffer"))
            }
            Errno::NOMEM => reply(
                ErrorCode::Backend,
                format!(
                    "buffer `{name}` for {device}: the module found no memory for the placement (the module's {op}: ENOMEM)"
                ),
            ),
            other => reply(ErrorCode::Backend, format!("buffer `{name}` for {device}: the module's {op}: {other}")),
        }
    }

    /// A late attacher the backing does not serve: map it once so the module moves now.
    fn move_for(&mut self, b: KBuffer, a: KAttachment) -> Result<AttachHow, ErrorReply> {
        let before = self.buf(b)?.generation;
        self.map_once(b, a)?;
        if self.buf(b)?.generation > before {
            Ok(AttachHow::Migrated)
        } else {
            Err(reply(ErrorCode::Internal, format!("the module reported {b} unserved, but mapping it moved nothing")))
        }
    }

    /// Attaches in the kernel; decides `how` from the module's record.
    fn kernel_attach(&mut self, b: KBuffer, a: KAttachment) -> Result<AttachHow, ErrorReply> {
        let device = self.attachments.get(&a).ok_or_else(|| no_handle(a))?.device.clone();
        let handle = {
            let fd = self.buf(b)?.created.as_fd();
            self.td.attach_as(fd, &device, Importer::LazyDynamic)
        };
        let handle = handle.map_err(|e| self.kernel_error(b, &device, "attach", e))?;
        if let Some(att) = self.attachments.get_mut(&a) {
            att.handle = Some(handle);
        }
        let info = self.refresh(b, Some(a))?;
        let served = info.attachments.iter().rev().find(|x| x.dev == device).and_then(|x| x.served);
        let how = match (info.has_backing, served) {
            (false, _) => Ok(AttachHow::BeforeAllocation),
            (true, Some(true)) => {
                self.stats.logical_attaches += 1;
                Ok(AttachHow::Fits)
            }
            (true, _) => self.move_for(b, a),
        };
        if how.is_err() {
            let _ = self.td.detach(handle);
            if let Some(att) = self.attachments.get_mut(&a) {
                att.handle = None;
            }
        }
        how
    }

    /// The last access of `b` ended: queued attaches run now.
    fn run_queued(&mut self, b: KBuffer) {
        let queued: Vec<KAttachment> = self
            .buffers
            .get(&b)
            .map(|x| x.attachments.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|a| self.attachments.get(a).is_some_and(|x| x.handle.is_none() && x.failed.is_none()))
            .collect();
        for a in queued {
            match self.kernel_attach(b, a) {
                Ok(how) => tracing::info!(buffer = %b, attachment = %a, ?how, "queued attach done"),
                Err(e) => {
                    tracing::warn!(buffer = %b, attachment = %a, error = %e.message, "queued attach failed");
                    if let Some(att) = self.attachments.get_mut(&a) {
                        att.failed = Some(e.message);
                    }
                }
            }
        }
    }
}

impl Engine for KmodEngine {
    type Buffer = KBuffer;
    type Attachment = KAttachment;
    type Mapping = KMapping;
    type Access = KAccess;

    fn kind(&self) -> &'static str {
        "kmod"
    }

    fn platform(&self) -> &str {
        &self.platform.name
    }

    fn export(&mut self, desc: &Desc, name: &str) -> Result<(KBuffer, u64), ErrorReply> {
        let size = match desc {
            Desc::Size(0) => return Err(reply(ErrorCode::Invalid, "a buffer of 0 bytes")),
            Desc::Size(n) => *n,
            Desc::Image { .. } => {
                return Err(reply(
                    ErrorCode::Invalid,
                    "the kmod backend creates buffers by size: the module fixes a dma-buf's size at CREATE, before any device attaches, so an image's layout cannot wait for its devices; create by size (the layout is userspace's)",
                ));
            }
        };
        if size > MAX_SIZE {
            return Err(reply(
                ErrorCode::Invalid,
                format!("{} exceeds the module's {} per buffer", Size::new(size), Size::new(MAX_SIZE)),
            ));
        }
        let pages = size.next_multiple_of(PAGE);
        let created = self.dp.create(pages, &module_name(name)).map_err(|e| match e {
            Errno::NOMEM => reply(
                ErrorCode::Quota,
                format!("the module refused {} more for this daemon (owner_limit_mib)", Size::new(pages)),
            ),
            other => reply(ErrorCode::Backend, format!("the module's CREATE of {}: {other}", Size::new(pages))),
        })?;
        let b = KBuffer(self.next_id());
        tracing::debug!(buffer = %b, module_id = created.id, size = pages, "created in the module");
        self.buffers.insert(
            b,
            Buf {
                created,
                name: name.to_owned(),
                size: pages,
                generation: 0,
                allocated: false,
                attachments: Vec::new(),
                accesses: 0,
            },
        );
        Ok((b, size))
    }

    fn attach(&mut self, b: KBuffer, device: &str, hints: Usage) -> Result<(KAttachment, AttachHow), ErrorReply> {
        self.buf(b)?;
        let a = KAttachment(self.next_id());
        self.attachments.insert(a, Att { buffer: b, device: device.to_owned(), hints, handle: None, failed: None });
        match self.kernel_attach(b, a) {
            Ok(how) => {
                if let Some(x) = self.buffers.get_mut(&b) {
                    x.attachments.push(a);
                }
                Ok((a, how))
            }
            Err(e) if e.code == ErrorCode::Busy && self.busy == BusyPolicy::Queue => {
                self.stats.queued += 1;
                if let Some(x) = self.buffers.get_mut(&b) {
                    x.attachments.push(a);
                }
                tracing::info!(buffer = %b, attachment = %a, device, why = %e.message, "queued until DMA ends");
                Ok((a, AttachHow::Queued))
            }
            Err(e) => {
                match e.code {
                    ErrorCode::Busy => self.stats.busy_refusals += 1,
                    ErrorCode::Conflict => self.stats.conflicts += 1,
                    _ => {}
                }
                self.attachments.remove(&a);
                Err(e)
            }
        }
    }

    fn map(&mut self, b: KBuffer, a: KAttachment) -> Result<Mapped<KMapping>, ErrorReply> {
        let att = self.attachments.get(&a).ok_or_else(|| no_handle(a))?;
        if att.handle.is_none() {
            return Err(match &att.failed {
                Some(why) => reply(ErrorCode::Backend, format!("the queued move for {} failed: {why}", att.device)),
                None => reply(
                    ErrorCode::MovePending,
                    format!(
                        "the move of buffer `{}` for {} waits for DMA in flight to end",
                        self.buf(b)?.name,
                        att.device
                    ),
                ),
            });
        }
        self.map_once(b, a)?;
        let buf = self.buf(b)?;
        let fd = buf
            .created
            .fd
            .try_clone()
            .map_err(|e| reply(ErrorCode::Backend, format!("dup of the module's dma-buf: {e}")))?;
        let (generation, layout) = (buf.generation, Layout::sized(buf.size));
        let m = KMapping(self.next_id());
        self.mappings.insert(m, Map { attachment: a, generation });
        Ok(Mapped { id: m, generation, layout, fd })
    }

    fn begin_access(&mut self, m: KMapping) -> Result<KAccess, ErrorReply> {
        let map = self.mappings.get(&m).ok_or_else(|| no_handle(m))?;
        let b = self.attachments.get(&map.attachment).ok_or_else(|| no_handle(map.attachment))?.buffer;
        let buf = self.buf(b)?;
        if map.generation != buf.generation {
            return Err(reply(
                ErrorCode::Stale,
                format!(
                    "the mapping is of generation {} of buffer `{}`, which moved since (generation {}): unmap it and map again",
                    map.generation, buf.name, buf.generation
                ),
            ));
        }
        let fence_error = |e: String| {
            reply(
                ErrorCode::Backend,
                format!("DMA in flight is a sw_sync fence ({}): {e} (needs CONFIG_SW_SYNC and debugfs)", kmod::SW_SYNC),
            )
        };
        let timeline = SwSync::open().map_err(|e| fence_error(e.to_string()))?;
        let fence = timeline.fence(1).map_err(|e| fence_error(e.to_string()))?;
        kmod::import_sync_file(buf.created.as_fd(), fence.as_fd(), true)
            .map_err(|e| reply(ErrorCode::Backend, format!("DMA_BUF_IOCTL_IMPORT_SYNC_FILE on `{}`: {e}", buf.name)))?;
        let id = KAccess(self.next_id());
        self.accesses.insert(id, Access { buffer: b, timeline });
        if let Some(x) = self.buffers.get_mut(&b) {
            x.accesses += 1;
        }
        Ok(id)
    }

    fn end_access(&mut self, id: KAccess) -> Result<(), ErrorReply> {
        let access = self.accesses.remove(&id).ok_or_else(|| no_handle(id))?;
        let signalled = access.timeline.inc(1);
        let b = access.buffer;
        let left = self.buffers.get_mut(&b).map_or(0, |x| {
            x.accesses = x.accesses.saturating_sub(1);
            x.accesses
        });
        if left == 0 {
            self.run_queued(b);
        }
        signalled.map_err(|e| reply(ErrorCode::Backend, format!("signalling the sw_sync fence: {e}")))
    }

    fn unmap(&mut self, m: KMapping) -> Result<(), ErrorReply> {
        self.mappings.remove(&m).map(drop).ok_or_else(|| no_handle(m))
    }

    fn detach(&mut self, a: KAttachment) -> Result<(), ErrorReply> {
        let att = self.attachments.remove(&a).ok_or_else(|| no_handle(a))?;
        if let Some(x) = self.buffers.get_mut(&att.buffer) {
            x.attachments.retain(|y| *y != a);
        }
        match att.handle {
            Some(h) => self
                .td
                .detach(h)
                .map_err(|e| reply(ErrorCode::Backend, format!("the test importer's DETACH of {}: {e}", att.device))),
            None => Ok(()),
        }
    }

    fn release(&mut self, b: KBuffer) -> Result<(), ErrorReply> {
        let left: Vec<KAttachment> = self.buf(b)?.attachments.clone();
        for a in left {
            self.detach(a)?;
        }
        // Closing the daemon's fd drops its reference; clients' fds keep the dma-buf
        // (and its pages) until they close them, as for any dma-buf.
        self.buffers.remove(&b);
        Ok(())
    }

    fn take_notices(&mut self) -> Vec<Notice<KBuffer, KAttachment, KMapping>> {
        std::mem::take(&mut self.notices)
    }

    fn poll(&mut self) {
        if self.buffers.is_empty() {
            return;
        }
        let snap = match Snapshot::read() {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "polling the module's debugfs"),
        };
        let ids: Vec<(KBuffer, u64)> = self.buffers.iter().map(|(b, x)| (*b, x.created.id)).collect();
        for (b, id) in ids {
            if let Some(info) = snap.buffer(id) {
                self.observe(b, info, None);
            }
        }
    }

    fn device_of(&self, a: KAttachment) -> Option<&str> {
        self.attachments.get(&a).map(|x| x.device.as_str())
    }

    fn name(&self, b: KBuffer) -> Option<&str> {
        self.buffers.get(&b).map(|x| x.name.as_str())
    }

    fn generation(&self, b: KBuffer) -> u32 {
        self.buffers.get(&b).map_or(0, |x| x.generation)
    }

    fn allocated(&self, b: KBuffer) -> bool {
        self.buffers.get(&b).is_some_and(|x| x.allocated)
    }

    fn buffer_json(&self, b: KBuffer) -> Value {
        let Some(buf) = self.buffers.get(&b) else { return Value::Null };
        let info = self.info(b).ok();
        let attachments: Vec<Value> = buf
            .attachments
            .iter()
            .filter_map(|a| self.attachments.get(a).map(|x| (a, x)))
            .map(|(a, x)| {
                json!({"attachment": a.to_string(), "device": x.device, "hints": x.hints.bits(),
                       "queued": x.handle.is_none() && x.failed.is_none(), "failed": x.failed,
                       "mappings": self.mappings.values().filter(|m| m.attachment == *a).count()})
            })
            .collect();
        let backing = info.as_ref().filter(|i| i.has_backing).map(|i| {
            json!({"segments": i.segments.iter().map(|s| format!("{:#x}+{:#x} (order {}, {})", s.phys, s.len, s.order, s.source)).collect::<Vec<_>>()})
        });
        let plan = info.as_ref().map(|i| {
            json!({"module_id": i.id, "strategy": i.plan.strategy, "contiguous": i.plan.contiguous,
                   "window_end": format!("{:#x}", i.plan.window_end.0), "max_segments": i.plan.max_segments.0,
                   "alignment": format!("{:#x}", i.plan.alignment.0), "why": i.why, "pins": i.pins,
                   "retired": i.retired, "refused": i.refused})
        });
        json!({"buffer": b.to_string(), "attachments": attachments, "plan": plan, "backing": backing})
    }

    fn stats_json(&self) -> Value {
        serde_json::to_value(self.stats).unwrap_or(Value::Null)
    }

    fn accounting(&self) -> Accounting {
        let live = self.buffers.values().filter(|b| b.allocated);
        Accounting {
            backings: live.clone().count() as u64,
            mappings: self.mappings.len() as u64,
            bytes: live.map(|b| b.size).sum(),
        }
    }
}
