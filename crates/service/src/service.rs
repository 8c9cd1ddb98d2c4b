//! The daemon's state machine, without sockets: every request of every client passes
//! through [`Service::handle`] (and every disconnect through [`Service::disconnect`]),
//! which is where a [`Recorder`] sees it. One core [`Exporter`] holds all buffers;
//! each client sees them only through its own handles.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use dmaplace_core::exporter::{
    AttachHow as CoreHow, AttachmentId, BufferId, BusyPolicy, Event as CoreEvent, ExportError, Exporter,
    ExporterConfig, FenceId, MappingId,
};
use dmaplace_core::solver::ImageDesc;
use dmaplace_core::{BufferDesc, Platform, Size, Usage};
use dmaplace_proto::{
    AttachHow, AttachmentStatus, BufferStatus, Desc, ErrorCode, ErrorReply, Event, INSPECT_CHUNK, Layout, MAX_MESSAGE,
    Plane, Quota, Reply, Request, Token, VERSION, op,
};
use serde_json::json;

use crate::placer::Placer;

/// A connection's id (never reused while the daemon runs).
pub type ClientId = u64;

/// Who is on the other end of a connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    /// Process id at connect time.
    pub pid: i32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// Per-client limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Bytes of buffers a client created and still holds.
    pub bytes: u64,
    /// Buffers a client holds (created, or attached by token).
    pub buffers: u32,
    /// Live mappings, each of which handed the client an fd.
    pub fds: u32,
    /// Live attachments.
    pub attachments: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { bytes: 1 << 30, buffers: 256, fds: 256, attachments: 1024 }
    }
}

/// Settings of the state machine.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Per-client limits.
    pub limits: Limits,
    /// Users allowed to `inspect`.
    pub admins: Vec<u32>,
    /// A late attach that needs a move while DMA is in flight: refused or queued.
    pub busy: BusyPolicy,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { limits: Limits::default(), admins: vec![0], busy: BusyPolicy::Refuse }
    }
}

/// What one request produced.
#[derive(Debug)]
pub struct Outcome {
    /// The reply, or the error.
    pub reply: Result<Reply, ErrorReply>,
    /// The fd a `map` reply carries.
    pub fd: Option<OwnedFd>,
    /// Events for clients (a move notifies every holder).
    pub events: Vec<(ClientId, Event)>,
}

/// Sees every request, its outcome and every disconnect (the `--record` hook).
pub trait Recorder: Send {
    /// A request was handled.
    fn request(&mut self, client: ClientId, peer: Peer, seq: u32, request: &Request, outcome: &Outcome);
    /// A client went away; `events` are what its cleanup caused.
    fn disconnect(&mut self, client: ClientId, events: &[(ClientId, Event)]);
}

struct Shared {
    token: Token,
    creator: ClientId,
    holders: u32,
    size: u64,
}

struct MapState {
    id: MappingId,
    attachment: u32,
    fence: Option<FenceId>,
}

struct Client {
    peer: Peer,
    name: String,
    greeted: bool,
    next_handle: u32,
    buffers: BTreeMap<u32, BufferId>,
    attachments: BTreeMap<u32, (AttachmentId, u32)>,
    mappings: BTreeMap<u32, MapState>,
    bytes: u64,
    inspect: Option<Vec<u8>>,
}

impl Client {
    fn handle(&mut self) -> u32 {
        self.next_handle += 1;
        self.next_handle
    }
    fn buffer_handle(&self, id: BufferId) -> Option<u32> {
        self.buffers.iter().find(|(_, b)| **b == id).map(|(h, _)| *h)
    }
}

/// The state machine.
pub struct Service<P: Placer> {
    exporter: Exporter<P>,
    config: ServiceConfig,
    clients: HashMap<ClientId, Client>,
    shared: HashMap<BufferId, Shared>,
    tokens: HashMap<Token, BufferId>,
    owners: HashMap<AttachmentId, (ClientId, u32)>,
    recorder: Option<Box<dyn Recorder>>,
}

impl<P: Placer> std::fmt::Debug for Service<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("exporter", &self.exporter)
            .field("clients", &self.clients.len())
            .field("buffers", &self.shared.len())
            .finish_non_exhaustive()
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

fn export_error(e: ExportError) -> ErrorReply {
    let code = match &e {
        ExportError::NoBuffer(_)
        | ExportError::NoAttachment(_)
        | ExportError::NoMapping(_)
        | ExportError::NoFence(_)
        | ExportError::NoToken(_) => ErrorCode::Internal,
        ExportError::UnknownDevice(_) => ErrorCode::UnknownDevice,
        ExportError::Invalid(_) => ErrorCode::Invalid,
        // The committed layout is part of what every holder was told: a device that needs
        // another one conflicts with the holders, as a placement conflict does.
        ExportError::Conflict { .. } | ExportError::LayoutConflict { .. } => ErrorCode::Conflict,
        // The daemon offers no re-layout request, so the exporter cannot refuse one.
        ExportError::Relayout { .. } => ErrorCode::Internal,
        ExportError::Busy { .. } => ErrorCode::Busy,
        ExportError::MovePending { .. } => ErrorCode::MovePending,
        ExportError::StaleMapping { .. } => ErrorCode::Stale,
        ExportError::CollectionIncomplete { .. }
        | ExportError::FencesPending { .. }
        | ExportError::StillMapped { .. }
        | ExportError::StillAttached { .. }
        | ExportError::CpuAccess { .. } => ErrorCode::InUse,
        ExportError::Misplaced { .. } | ExportError::Backend(_) => ErrorCode::Backend,
    };
    if code == ErrorCode::Internal {
        tracing::error!(error = %e, "exporter lost track of an object the daemon holds");
    }
    let message = match &e {
        // The code already says "backend".
        ExportError::Backend(inner) => inner.to_string(),
        other => other.to_string(),
    };
    err(code, message)
}

fn random_token() -> Result<Token, ErrorReply> {
    let mut t = [0u8; dmaplace_proto::TOKEN_LEN];
    let mut filled = 0;
    while filled < t.len() {
        filled += rustix::rand::getrandom(&mut t[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| err(ErrorCode::Internal, format!("getrandom: {e}")))?;
    }
    Ok(Token(t))
}

fn core_desc(desc: &Desc) -> Result<BufferDesc, ErrorReply> {
    match desc {
        Desc::Size(n) => Ok(BufferDesc::Size(Size::new(*n))),
        Desc::Image { width, height, fourcc, modifiers } => {
            let format = drm_fourcc::DrmFourcc::try_from(*fourcc).map_err(|_| {
                let text: String =
                    fourcc.to_le_bytes().iter().map(|b| if b.is_ascii_graphic() { *b as char } else { '?' }).collect();
                err(ErrorCode::Invalid, format!("unknown DRM fourcc {fourcc:#010x} ({text:?})"))
            })?;
            Ok(BufferDesc::Image(ImageDesc { width: *width, height: *height, format, modifiers: modifiers.clone() }))
        }
    }
}

impl<P: Placer> Service<P> {
    /// A service placing memory with `placer` on `platform`.
    pub fn new(platform: Platform, placer: P, config: ServiceConfig) -> Service<P> {
        let exporter =
            Exporter::new(platform, placer, ExporterConfig { busy: config.busy, ..ExporterConfig::default() });
        Service {
            exporter,
            config,
            clients: HashMap::new(),
            shared: HashMap::new(),
            tokens: HashMap::new(),
            owners: HashMap::new(),
            recorder: None,
        }
    }

    /// Installs the hook that sees every request.
    pub fn set_recorder(&mut self, recorder: Box<dyn Recorder>) {
        self.recorder = Some(recorder);
    }

    /// The exporter (tests, inspect).
    pub fn exporter(&self) -> &Exporter<P> {
        &self.exporter
    }

    /// Live buffers.
    pub fn buffers(&self) -> usize {
        self.shared.len()
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// A new connection.
    pub fn connect(&mut self, id: ClientId, peer: Peer) {
        self.clients.insert(
            id,
            Client {
                peer,
                name: String::new(),
                greeted: false,
                next_handle: 0,
                buffers: BTreeMap::new(),
                attachments: BTreeMap::new(),
                mappings: BTreeMap::new(),
                bytes: 0,
                inspect: None,
            },
        );
    }

    /// Whether the client has said hello.
    pub fn greeted(&self, id: ClientId) -> bool {
        self.clients.get(&id).is_some_and(|c| c.greeted)
    }

    /// Handles one request: the one place every request passes.
    pub fn handle(&mut self, client: ClientId, seq: u32, request: &Request) -> Outcome {
        let mut events = Vec::new();
        let mut fd = None;
        let reply = self.dispatch(client, request, &mut events, &mut fd);
        if let Err(e) = &reply {
            tracing::debug!(client, seq, op = request.name(), code = %e.code, message = %e.message, "refused");
        }
        let outcome = Outcome { reply, fd, events };
        if let (Some(r), Some(c)) = (self.recorder.as_mut(), self.clients.get(&client)) {
            r.request(client, c.peer, seq, request, &outcome);
        }
        outcome
    }

    fn dispatch(
        &mut self,
        client: ClientId,
        request: &Request,
        events: &mut Vec<(ClientId, Event)>,
        fd: &mut Option<OwnedFd>,
    ) -> Result<Reply, ErrorReply> {
        let c = self.clients.get_mut(&client).ok_or_else(|| err(ErrorCode::Internal, "no such client"))?;
        match (c.greeted, request) {
            (false, Request::Hello { min_version, max_version, name }) => {
                if *min_version > VERSION || *max_version < VERSION {
                    return Err(err(
                        ErrorCode::Version,
                        format!("client speaks versions {min_version}..={max_version}; the daemon speaks {VERSION}"),
                    ));
                }
                c.greeted = true;
                c.name.clone_from(name);
                tracing::info!(client, pid = c.peer.pid, uid = c.peer.uid, name = %name, "hello");
                Ok(Reply::Hello {
                    version: VERSION,
                    max_message: u32::try_from(MAX_MESSAGE).unwrap_or(u32::MAX),
                    backend: self.exporter.backend().kind().to_owned(),
                    platform: self.exporter.platform().name.clone(),
                    quota: self.quota(),
                })
            }
            (true, Request::Hello { .. }) => Err(err(ErrorCode::Sequence, "hello was already said on this connection")),
            (false, r) => Err(err(ErrorCode::Sequence, format!("`{}` before hello: say hello first", r.name()))),
            (true, Request::Create { desc, name }) => self.create(client, desc, name),
            (true, Request::Attach { token, device, hints }) => self.attach(client, token, device, *hints, events),
            (true, Request::Map { attachment }) => self.map(client, *attachment, events, fd),
            (true, Request::BeginAccess { mapping }) => self.begin_access(client, *mapping),
            (true, Request::EndAccess { mapping }) => self.end_access(client, *mapping, events),
            (true, Request::Unmap { mapping }) => self.unmap(client, *mapping, events),
            (true, Request::Detach { attachment }) => self.detach(client, *attachment, events),
            (true, Request::Release { buffer }) => self.release(client, *buffer, events),
            (true, Request::Status) => self.status(client),
            (true, Request::Inspect { offset }) => self.inspect(client, *offset),
        }
    }

    fn quota(&self) -> Quota {
        let l = self.config.limits;
        Quota { bytes: l.bytes, buffers: l.buffers, fds: l.fds }
    }

    fn client(&mut self, id: ClientId) -> Result<&mut Client, ErrorReply> {
        self.clients.get_mut(&id).ok_or_else(|| err(ErrorCode::Internal, "no such client"))
    }

    fn create(&mut self, client: ClientId, desc: &Desc, name: &str) -> Result<Reply, ErrorReply> {
        let limits = self.config.limits;
        let c = self.client(client)?;
        if c.buffers.len() >= limits.buffers as usize {
            return Err(err(ErrorCode::Quota, format!("this client holds {} buffers, the limit", c.buffers.len())));
        }
        let desc = core_desc(desc)?;
        let name = if name.is_empty() { "buffer" } else { name };
        let token = random_token()?;
        let buffer = self.exporter.export(desc, name).map_err(export_error)?;
        let size = self
            .exporter
            .take_events()
            .iter()
            .find_map(|e| match e {
                CoreEvent::Exported { buffer: b, size, .. } if *b == buffer => Some(size.bytes()),
                _ => None,
            })
            .unwrap_or(0);
        let c = self.client(client)?;
        if c.bytes.saturating_add(size) > limits.bytes {
            let used = c.bytes;
            let _ = self.exporter.release(buffer);
            self.exporter.take_events();
            return Err(err(
                ErrorCode::Quota,
                format!(
                    "{} more would exceed this client's {} (it holds {})",
                    Size::new(size),
                    Size::new(limits.bytes),
                    Size::new(used)
                ),
            ));
        }
        c.bytes += size;
        let handle = c.handle();
        c.buffers.insert(handle, buffer);
        self.shared.insert(buffer, Shared { token, creator: client, holders: 1, size });
        self.tokens.insert(token, buffer);
        tracing::info!(client, buffer = %buffer, handle, name, size, "create");
        Ok(Reply::Created { buffer: handle, token, size })
    }

    fn attach(
        &mut self,
        client: ClientId,
        token: &Token,
        device: &str,
        hints: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let limits = self.config.limits;
        // The same answer for every wrong token: it says nothing about other buffers.
        let buffer = *self.tokens.get(token).ok_or_else(|| err(ErrorCode::BadToken, "no buffer has this token"))?;
        let hints = Usage::from_bits(hints).ok_or_else(|| {
            err(ErrorCode::Invalid, format!("hint bits {:#x} are not usage hints", hints & !Usage::all().bits()))
        })?;
        let c = self.client(client)?;
        let held = c.buffer_handle(buffer);
        if held.is_none() && c.buffers.len() >= limits.buffers as usize {
            return Err(err(ErrorCode::Quota, format!("this client holds {} buffers, the limit", c.buffers.len())));
        }
        if c.attachments.len() >= limits.attachments as usize {
            return Err(err(
                ErrorCode::Quota,
                format!("this client has {} attachments, the limit", c.attachments.len()),
            ));
        }
        let attachment = match self.exporter.attach(buffer, device, hints) {
            Ok(a) => a,
            Err(e) => {
                self.exporter.take_events();
                return Err(export_error(e));
            }
        };
        let c = self.clients.get_mut(&client).expect("checked above");
        let buffer_handle = match held {
            Some(h) => h,
            None => {
                let h = c.handle();
                c.buffers.insert(h, buffer);
                self.shared.get_mut(&buffer).expect("a token names a live buffer").holders += 1;
                h
            }
        };
        let handle = c.handle();
        c.attachments.insert(handle, (attachment, buffer_handle));
        self.owners.insert(attachment, (client, handle));
        let mut how = AttachHow::BeforeAllocation;
        for e in self.exporter.take_events() {
            if let CoreEvent::Attached { attachment: a, how: h, .. } = &e
                && *a == attachment
            {
                how = match h {
                    CoreHow::BeforeAllocation => AttachHow::BeforeAllocation,
                    CoreHow::Fits => AttachHow::Fits,
                    CoreHow::Migrated => AttachHow::Migrated,
                    CoreHow::Queued => AttachHow::Queued,
                };
            }
            self.route(e, Some(attachment), events);
        }
        tracing::info!(client, buffer = %buffer, attachment = %attachment, device, hints = %hints, ?how, "attach");
        Ok(Reply::Attached { attachment: handle, buffer: buffer_handle, how })
    }

    /// Turns a core event into client events: `move_notify` becomes `moved` for the
    /// attachment's owner (not for `skip`, which learns it from its reply).
    fn route(&self, e: CoreEvent, skip: Option<AttachmentId>, events: &mut Vec<(ClientId, Event)>) {
        match e {
            CoreEvent::MoveNotify(n) if Some(n.attachment) != skip => {
                let Some((client, att_handle)) = self.owners.get(&n.attachment).copied() else { return };
                let Some(c) = self.clients.get(&client) else { return };
                let Some(buffer) = c.buffer_handle(n.buffer) else { return };
                let invalidated =
                    c.mappings.iter().filter(|(_, m)| n.invalidated.contains(&m.id)).map(|(h, _)| *h).collect();
                events.push((
                    client,
                    Event::Moved { buffer, attachment: att_handle, generation: n.generation, invalidated },
                ));
            }
            CoreEvent::Migrated { buffer, for_device, copied, checksum, .. } => {
                tracing::info!(buffer = %buffer, for_device, copied = copied.bytes(), checksum, "migrated");
            }
            CoreEvent::Allocated { buffer, devices, size, contiguous, segments } => {
                tracing::info!(buffer = %buffer, ?devices, size = size.bytes(), contiguous, segments = segments.len(), "allocated");
            }
            CoreEvent::MoveFailed { buffer, reason } => tracing::warn!(buffer = %buffer, reason, "move failed"),
            other => tracing::trace!(event = ?other, "exporter"),
        }
    }

    fn drain(&mut self, events: &mut Vec<(ClientId, Event)>) {
        for e in self.exporter.take_events() {
            self.route(e, None, events);
        }
    }

    fn attachment(&self, client: ClientId, handle: u32) -> Result<(AttachmentId, u32), ErrorReply> {
        self.clients
            .get(&client)
            .and_then(|c| c.attachments.get(&handle).copied())
            .ok_or_else(|| err(ErrorCode::NoSuchHandle, format!("this client has no attachment {handle}")))
    }

    fn mapping(&self, client: ClientId, handle: u32) -> Result<&MapState, ErrorReply> {
        self.clients
            .get(&client)
            .and_then(|c| c.mappings.get(&handle))
            .ok_or_else(|| err(ErrorCode::NoSuchHandle, format!("this client has no mapping {handle}")))
    }

    fn map(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
        fd: &mut Option<OwnedFd>,
    ) -> Result<Reply, ErrorReply> {
        let (attachment, _) = self.attachment(client, handle)?;
        let limit = self.config.limits.fds;
        let live = self.clients.get(&client).map_or(0, |c| c.mappings.len());
        if live >= limit as usize {
            return Err(err(ErrorCode::Quota, format!("this client has {live} live mappings (fds), the limit")));
        }
        let result = self.exporter.map(attachment);
        self.drain(events);
        let (mapping, _) = result.map_err(export_error)?;
        let buffer = self.buffer_of(attachment)?;
        let generation = self.exporter.generation(buffer).map_err(export_error)?;
        let plan = self.exporter.plan(buffer).map_err(export_error)?.cloned();
        let dup = self
            .exporter
            .backing(buffer)
            .map_err(export_error)?
            .map(|b| self.exporter.backend().fd(b).try_clone_to_owned());
        let owned = match dup {
            Some(Ok(f)) => f,
            other => {
                let _ = self.exporter.unmap(mapping);
                self.exporter.take_events();
                let why = match other {
                    Some(Err(e)) => format!("dup of the buffer's fd: {e}"),
                    _ => "mapped, but the buffer has no backing".to_owned(),
                };
                return Err(err(ErrorCode::Backend, why));
            }
        };
        *fd = Some(owned);
        let layout = match plan.as_ref() {
            Some(p) => layout_of(p),
            None => Layout { size: 0, fourcc: 0, modifier: 0, width: 0, height: 0, planes: Vec::new() },
        };
        let c = self.client(client)?;
        let m = c.handle();
        c.mappings.insert(m, MapState { id: mapping, attachment: handle, fence: None });
        tracing::info!(client, mapping = %mapping, handle = m, generation, size = layout.size, "map");
        Ok(Reply::Mapped { mapping: m, generation, layout })
    }

    fn buffer_of(&self, attachment: AttachmentId) -> Result<BufferId, ErrorReply> {
        self.shared
            .keys()
            .find(|b| self.exporter.attachments_of(**b).is_ok_and(|a| a.contains(&attachment)))
            .copied()
            .ok_or_else(|| err(ErrorCode::Internal, format!("{attachment} belongs to no buffer")))
    }

    fn begin_access(&mut self, client: ClientId, handle: u32) -> Result<Reply, ErrorReply> {
        let m = self.mapping(client, handle)?;
        if m.fence.is_some() {
            return Err(err(ErrorCode::InUse, format!("access already began on mapping {handle}")));
        }
        let id = m.id;
        let fence = self.exporter.fence(id).map_err(export_error)?;
        self.exporter.take_events();
        self.client(client)?.mappings.get_mut(&handle).expect("checked").fence = Some(fence);
        Ok(Reply::Done(op::BEGIN_ACCESS))
    }

    fn end_access(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let fence = self
            .mapping(client, handle)?
            .fence
            .ok_or_else(|| err(ErrorCode::InUse, format!("no access began on mapping {handle}")))?;
        let result = self.exporter.signal(fence);
        self.client(client)?.mappings.get_mut(&handle).expect("checked").fence = None;
        self.drain(events);
        result.map_err(export_error)?;
        Ok(Reply::Done(op::END_ACCESS))
    }

    fn unmap(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let m = self.mapping(client, handle)?;
        if m.fence.is_some() {
            return Err(err(ErrorCode::InUse, format!("mapping {handle} has access in flight: end_access first")));
        }
        let id = m.id;
        let result = self.exporter.unmap(id);
        self.drain(events);
        result.map_err(export_error)?;
        self.client(client)?.mappings.remove(&handle);
        Ok(Reply::Done(op::UNMAP))
    }

    fn detach(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let (attachment, _) = self.attachment(client, handle)?;
        let mapped: Vec<u32> =
            self.clients[&client].mappings.iter().filter(|(_, m)| m.attachment == handle).map(|(h, _)| *h).collect();
        if !mapped.is_empty() {
            return Err(err(
                ErrorCode::InUse,
                format!("attachment {handle} still has mappings {mapped:?}: unmap first"),
            ));
        }
        let result = self.exporter.detach(attachment);
        self.drain(events);
        result.map_err(export_error)?;
        self.client(client)?.attachments.remove(&handle);
        self.owners.remove(&attachment);
        Ok(Reply::Done(op::DETACH))
    }

    fn release(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let c = self.clients.get(&client).ok_or_else(|| err(ErrorCode::Internal, "no such client"))?;
        c.buffers
            .get(&handle)
            .ok_or_else(|| err(ErrorCode::NoSuchHandle, format!("this client has no buffer {handle}")))?;
        let busy: Vec<u32> = c
            .mappings
            .iter()
            .filter(|(_, m)| m.fence.is_some() && c.attachments.get(&m.attachment).is_some_and(|(_, b)| *b == handle))
            .map(|(h, _)| *h)
            .collect();
        if !busy.is_empty() {
            return Err(err(
                ErrorCode::InUse,
                format!("buffer {handle} has access in flight on mappings {busy:?}: end_access first"),
            ));
        }
        self.let_go(client, handle, events);
        Ok(Reply::Done(op::RELEASE))
    }

    /// Undoes everything `client` holds on buffer `handle`, in reverse order of
    /// acquisition (access, mappings, attachments, the hold), and frees the buffer when
    /// it was the last holder. Failures are logged: this also runs for clients that died.
    fn let_go(&mut self, client: ClientId, handle: u32, events: &mut Vec<(ClientId, Event)>) {
        let Some(c) = self.clients.get_mut(&client) else { return };
        let Some(buffer) = c.buffers.remove(&handle) else { return };
        let atts: Vec<(u32, AttachmentId)> =
            c.attachments.iter().filter(|(_, (_, b))| *b == handle).map(|(h, (a, _))| (*h, *a)).collect();
        let maps: Vec<MapState> = {
            let hs: Vec<u32> = c
                .mappings
                .iter()
                .filter(|(_, m)| atts.iter().any(|(h, _)| *h == m.attachment))
                .map(|(h, _)| *h)
                .collect();
            hs.iter().filter_map(|h| c.mappings.remove(h)).collect()
        };
        for (h, _) in &atts {
            c.attachments.remove(h);
        }
        let creator_bytes = self.shared.get(&buffer).filter(|s| s.creator == client).map_or(0, |s| s.size);
        c.bytes = c.bytes.saturating_sub(creator_bytes);
        for m in maps.iter().rev() {
            if let Some(f) = m.fence {
                log_failure("signal", client, self.exporter.signal(f));
            }
            log_failure("unmap", client, self.exporter.unmap(m.id));
        }
        for (_, a) in atts.iter().rev() {
            log_failure("detach", client, self.exporter.detach(*a));
            self.owners.remove(a);
        }
        if let Some(s) = self.shared.get_mut(&buffer) {
            s.holders -= 1;
            if s.holders == 0 {
                let token = s.token;
                self.shared.remove(&buffer);
                self.tokens.remove(&token);
                log_failure("release", client, self.exporter.release(buffer));
                tracing::info!(client, buffer = %buffer, "released: last holder let go");
            }
        }
        self.drain(events);
    }

    /// A client went away: everything it held is released; other holders keep shared
    /// buffers. Returns the events its cleanup caused (moves for other holders).
    pub fn disconnect(&mut self, client: ClientId) -> Vec<(ClientId, Event)> {
        let mut events = Vec::new();
        let handles: Vec<u32> =
            self.clients.get(&client).map(|c| c.buffers.keys().rev().copied().collect()).unwrap_or_default();
        for h in handles {
            self.let_go(client, h, &mut events);
        }
        self.clients.remove(&client);
        events.retain(|(c, _)| *c != client);
        if let Some(r) = self.recorder.as_mut() {
            r.disconnect(client, &events);
        }
        events
    }

    fn status(&mut self, client: ClientId) -> Result<Reply, ErrorReply> {
        let c = &self.clients[&client];
        let mut buffers = Vec::new();
        for (h, b) in &c.buffers {
            let Some(s) = self.shared.get(b) else { continue };
            let attachments = c
                .attachments
                .iter()
                .filter(|(_, (_, bh))| bh == h)
                .map(|(ah, (a, _))| AttachmentStatus {
                    attachment: *ah,
                    device: self.exporter.device_of(*a).unwrap_or("?").to_owned(),
                    mappings: c.mappings.iter().filter(|(_, m)| m.attachment == *ah).map(|(mh, _)| *mh).collect(),
                })
                .collect();
            buffers.push(BufferStatus {
                buffer: *h,
                name: self.exporter.name(*b).unwrap_or("?").to_owned(),
                size: s.size,
                allocated: self.exporter.backing(*b).is_ok_and(|x| x.is_some()),
                generation: self.exporter.generation(*b).unwrap_or(0),
                creator: s.creator == client,
                attachments,
            });
        }
        let fds = u32::try_from(c.mappings.len()).unwrap_or(u32::MAX);
        Ok(Reply::Status { bytes: c.bytes, fds, quota: self.quota(), buffers })
    }

    fn inspect(&mut self, client: ClientId, offset: u64) -> Result<Reply, ErrorReply> {
        let uid = self.clients[&client].peer.uid;
        if !self.config.admins.contains(&uid) {
            return Err(err(
                ErrorCode::Permission,
                format!("inspect is for administrators (uids {:?}); this client is uid {uid}", self.config.admins),
            ));
        }
        if offset == 0 || self.clients[&client].inspect.is_none() {
            let text = self.inspect_json().to_string().into_bytes();
            self.client(client)?.inspect = Some(text);
        }
        let text = self.clients[&client].inspect.as_deref().unwrap_or_default();
        let total = text.len() as u64;
        let start = usize::try_from(offset.min(total)).unwrap_or(text.len());
        let end = (start + INSPECT_CHUNK).min(text.len());
        Ok(Reply::Inspect { total, chunk: text[start..end].to_vec() })
    }

    /// The administrator's view: buffers (holders, attachments, plan, backing), clients,
    /// counters and the backend's accounting.
    pub fn inspect_json(&self) -> serde_json::Value {
        let mut buffers = Vec::new();
        let mut ids: Vec<&BufferId> = self.shared.keys().collect();
        ids.sort();
        for b in ids {
            let s = &self.shared[b];
            let attachments: Vec<_> = self
                .exporter
                .attachments_of(*b)
                .map(|a| a.to_vec())
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    let owner = self.owners.get(a).map(|(c, _)| *c);
                    json!({"attachment": a.to_string(), "device": self.exporter.device_of(*a).unwrap_or("?"),
                           "client": owner, "mappings": self.exporter.mappings_of(*a).map(<[_]>::len).unwrap_or(0)})
                })
                .collect();
            let backing = self
                .exporter
                .backing(*b)
                .ok()
                .flatten()
                .and_then(|x| self.exporter.backend().describe(x).ok())
                .map(|d| json!({"segments": d.segments.iter().map(ToString::to_string).collect::<Vec<_>>(), "cache_mode": format!("{:?}", d.cache_mode)}));
            buffers.push(json!({
                "buffer": b.to_string(),
                "name": self.exporter.name(*b).unwrap_or("?"),
                "size": s.size,
                "creator": s.creator,
                "holders": s.holders,
                "generation": self.exporter.generation(*b).unwrap_or(0),
                "attachments": attachments,
                "plan": self.exporter.plan(*b).ok().flatten().and_then(|p| serde_json::to_value(p).ok()),
                "backing": backing,
            }));
        }
        let mut clients: Vec<_> = self
            .clients
            .iter()
            .map(|(id, c)| {
                json!({"client": id, "name": c.name, "pid": c.peer.pid, "uid": c.peer.uid, "gid": c.peer.gid,
                       "buffers": c.buffers.len(), "attachments": c.attachments.len(), "mappings": c.mappings.len(), "bytes": c.bytes})
            })
            .collect();
        clients.sort_by_key(|c| c["client"].as_u64());
        json!({
            "backend": self.exporter.backend().kind(),
            "platform": self.exporter.platform().name,
            "limits": self.config.limits,
            "buffers": buffers,
            "clients": clients,
            "stats": self.exporter.stats(),
            "accounting": self.exporter.backend().accounting(),
        })
    }
}

fn log_failure(what: &str, client: ClientId, r: Result<(), ExportError>) {
    if let Err(e) = r {
        tracing::warn!(client, error = %e, "cleanup: {what} failed");
    }
}

fn layout_of(plan: &dmaplace_core::Plan) -> Layout {
    match &plan.layout {
        Some(l) => Layout {
            size: plan.size.bytes(),
            fourcc: l.layout.format as u32,
            modifier: l.layout.modifier,
            width: l.layout.width,
            height: l.layout.height,
            planes: l.layout.planes.iter().map(|p| Plane { offset: p.offset, pitch: p.pitch }).collect(),
        },
        None => Layout { size: plan.size.bytes(), fourcc: 0, modifier: 0, width: 0, height: 0, planes: Vec::new() },
    }
}
