//! The daemon's state machine, without sockets: every request of every client passes
//! through [`Service::handle`] (and every disconnect through [`Service::disconnect`]),
//! which is where a [`Recorder`] sees it. One [`Engine`] holds all buffers; each client
//! sees them only through its own handles.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;

use dmaplace_core::exporter::BusyPolicy;
use dmaplace_core::{Platform, Size, Usage};
use dmaplace_proto::{
    AttachmentStatus, BufferStatus, Desc, ErrorCode, ErrorReply, Event, INSPECT_CHUNK, MAX_MESSAGE, Quota, Reply,
    Request, Token, VERSION, op,
};
use serde_json::json;

use crate::engine::{CoreEngine, Engine, Notice};
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

struct MapState<M, F> {
    id: M,
    attachment: u32,
    access: Option<F>,
}

struct Client<E: Engine> {
    peer: Peer,
    name: String,
    greeted: bool,
    next_handle: u32,
    buffers: BTreeMap<u32, E::Buffer>,
    attachments: BTreeMap<u32, (E::Attachment, u32)>,
    mappings: BTreeMap<u32, MapState<E::Mapping, E::Access>>,
    bytes: u64,
    inspect: Option<Vec<u8>>,
}

impl<E: Engine> Client<E> {
    fn handle(&mut self) -> u32 {
        self.next_handle += 1;
        self.next_handle
    }
    fn buffer_handle(&self, id: E::Buffer) -> Option<u32> {
        self.buffers.iter().find(|(_, b)| **b == id).map(|(h, _)| *h)
    }
}

/// The state machine.
pub struct Service<E: Engine> {
    engine: E,
    config: ServiceConfig,
    clients: HashMap<ClientId, Client<E>>,
    shared: HashMap<E::Buffer, Shared>,
    tokens: HashMap<Token, E::Buffer>,
    owners: HashMap<E::Attachment, (ClientId, u32)>,
    recorder: Option<Box<dyn Recorder>>,
    random: Tokens,
}

impl<E: Engine> std::fmt::Debug for Service<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("engine", &self.engine.kind())
            .field("clients", &self.clients.len())
            .field("buffers", &self.shared.len())
            .finish_non_exhaustive()
    }
}

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

/// Share tokens: 128 bits each from `getrandom(2)`, fetched 4 KiB at a time (256 tokens
/// per system call); each byte is handed out once.
struct Tokens {
    pool: Box<[u8; 4096]>,
    used: usize,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens { pool: Box::new([0u8; 4096]), used: 4096 }
    }

    fn next(&mut self) -> Result<Token, ErrorReply> {
        if self.used + dmaplace_proto::TOKEN_LEN > self.pool.len() {
            let mut filled = 0;
            while filled < self.pool.len() {
                filled += rustix::rand::getrandom(&mut self.pool[filled..], rustix::rand::GetRandomFlags::empty())
                    .map_err(|e| err(ErrorCode::Internal, format!("getrandom: {e}")))?;
            }
            self.used = 0;
        }
        let mut t = [0u8; dmaplace_proto::TOKEN_LEN];
        t.copy_from_slice(&self.pool[self.used..self.used + dmaplace_proto::TOKEN_LEN]);
        // Handed out: not kept where a later read of the pool could find it.
        self.pool[self.used..self.used + dmaplace_proto::TOKEN_LEN].fill(0);
        self.used += dmaplace_proto::TOKEN_LEN;
        Ok(Token(t))
    }
}

impl<P: Placer> Service<CoreEngine<P>> {
    /// A service whose exporter is `dmaplace_core`'s, placing memory with `placer` on
    /// `platform`.
    pub fn new(platform: Platform, placer: P, config: ServiceConfig) -> Service<CoreEngine<P>> {
        let engine = CoreEngine::new(platform, placer, config.busy);
        Service::with_engine(engine, config)
    }
}

impl<E: Engine> Service<E> {
    /// A service over `engine`.
    pub fn with_engine(engine: E, config: ServiceConfig) -> Service<E> {
        Service {
            engine,
            config,
            clients: HashMap::new(),
            shared: HashMap::new(),
            tokens: HashMap::new(),
            owners: HashMap::new(),
            recorder: None,
            random: Tokens::new(),
        }
    }

    /// Installs the hook that sees every request.
    pub fn set_recorder(&mut self, recorder: Box<dyn Recorder>) {
        self.recorder = Some(recorder);
    }

    /// The engine (tests, inspect).
    pub fn engine(&self) -> &E {
        &self.engine
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

    /// Lets the engine look for moves made outside the daemon (the kernel module's);
    /// returns the events for their holders.
    pub fn poll(&mut self) -> Vec<(ClientId, Event)> {
        self.engine.poll();
        let mut events = Vec::new();
        self.drain(&mut events);
        events
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
                    backend: self.engine.kind().to_owned(),
                    platform: self.engine.platform().to_owned(),
                    quota: self.quota(),
                })
            }
            (true, Request::Hello { .. }) => Err(err(ErrorCode::Sequence, "hello was already said on this connection")),
            (false, r) => Err(err(ErrorCode::Sequence, format!("`{}` before hello: say hello first", r.name()))),
            (true, Request::Create { desc, name }) => self.create(client, desc, name),
            (true, Request::Attach { token, device, hints }) => self.attach(client, token, device, *hints, events),
            (true, Request::Map { attachment }) => self.map(client, *attachment, events, fd),
            (true, Request::BeginAccess { mapping }) => self.begin_access(client, *mapping, events),
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

    fn client(&mut self, id: ClientId) -> Result<&mut Client<E>, ErrorReply> {
        self.clients.get_mut(&id).ok_or_else(|| err(ErrorCode::Internal, "no such client"))
    }

    fn create(&mut self, client: ClientId, desc: &Desc, name: &str) -> Result<Reply, ErrorReply> {
        let limits = self.config.limits;
        let c = self.client(client)?;
        if c.buffers.len() >= limits.buffers as usize {
            return Err(err(ErrorCode::Quota, format!("this client holds {} buffers, the limit", c.buffers.len())));
        }
        let name = if name.is_empty() { "buffer" } else { name };
        let token = self.random.next()?;
        let (buffer, size) = self.engine.export(desc, name)?;
        let c = self.client(client)?;
        if c.bytes.saturating_add(size) > limits.bytes {
            let used = c.bytes;
            let _ = self.engine.release(buffer);
            self.engine.take_notices();
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
        tracing::debug!(client, buffer = %buffer, handle, name, size, "create");
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
        let result = self.engine.attach(buffer, device, hints);
        // A move for this attach notifies the other holders (the engine left out this one).
        self.drain(events);
        let (attachment, how) = result?;
        let c = self.clients.get_mut(&client).ok_or_else(|| err(ErrorCode::Internal, "no such client"))?;
        let buffer_handle = match held {
            Some(h) => h,
            None => {
                let h = c.handle();
                c.buffers.insert(h, buffer);
                if let Some(s) = self.shared.get_mut(&buffer) {
                    s.holders += 1;
                }
                h
            }
        };
        let handle = c.handle();
        c.attachments.insert(handle, (attachment, buffer_handle));
        self.owners.insert(attachment, (client, handle));
        tracing::debug!(client, buffer = %buffer, attachment = %attachment, device, hints = %hints, ?how, "attach");
        Ok(Reply::Attached { attachment: handle, buffer: buffer_handle, how })
    }

    /// Turns a move notice into a `moved` event for the attachment's holder.
    fn route(&self, n: Notice<E::Buffer, E::Attachment, E::Mapping>, events: &mut Vec<(ClientId, Event)>) {
        let Some((client, att_handle)) = self.owners.get(&n.attachment).copied() else { return };
        let Some(c) = self.clients.get(&client) else { return };
        let Some(buffer) = c.buffer_handle(n.buffer) else { return };
        let invalidated = c.mappings.iter().filter(|(_, m)| n.invalidated.contains(&m.id)).map(|(h, _)| *h).collect();
        events.push((client, Event::Moved { buffer, attachment: att_handle, generation: n.generation, invalidated }));
    }

    fn drain(&mut self, events: &mut Vec<(ClientId, Event)>) {
        for n in self.engine.take_notices() {
            self.route(n, events);
        }
    }

    fn attachment(&self, client: ClientId, handle: u32) -> Result<(E::Attachment, u32), ErrorReply> {
        self.clients
            .get(&client)
            .and_then(|c| c.attachments.get(&handle).copied())
            .ok_or_else(|| err(ErrorCode::NoSuchHandle, format!("this client has no attachment {handle}")))
    }

    fn mapping(&self, client: ClientId, handle: u32) -> Result<&MapState<E::Mapping, E::Access>, ErrorReply> {
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
        let (attachment, buffer_handle) = self.attachment(client, handle)?;
        let limit = self.config.limits.fds;
        let c = self.clients.get(&client).ok_or_else(|| err(ErrorCode::Internal, "no such client"))?;
        let live = c.mappings.len();
        if live >= limit as usize {
            return Err(err(ErrorCode::Quota, format!("this client has {live} live mappings (fds), the limit")));
        }
        let buffer =
            *c.buffers.get(&buffer_handle).ok_or_else(|| err(ErrorCode::Internal, "attachment without buffer"))?;
        let result = self.engine.map(buffer, attachment);
        self.drain(events);
        let mapped = result?;
        *fd = Some(mapped.fd);
        let c = self.client(client)?;
        let m = c.handle();
        c.mappings.insert(m, MapState { id: mapped.id, attachment: handle, access: None });
        tracing::debug!(client, mapping = %mapped.id, handle = m, generation = mapped.generation, size = mapped.layout.size, "map");
        Ok(Reply::Mapped { mapping: m, generation: mapped.generation, layout: mapped.layout })
    }

    fn begin_access(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let m = self.mapping(client, handle)?;
        if m.access.is_some() {
            return Err(err(ErrorCode::InUse, format!("access already began on mapping {handle}")));
        }
        let id = m.id;
        let result = self.engine.begin_access(id);
        self.drain(events);
        let access = result?;
        if let Some(m) = self.client(client)?.mappings.get_mut(&handle) {
            m.access = Some(access);
        }
        Ok(Reply::Done(op::BEGIN_ACCESS))
    }

    fn end_access(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let access = self
            .mapping(client, handle)?
            .access
            .ok_or_else(|| err(ErrorCode::InUse, format!("no access began on mapping {handle}")))?;
        let result = self.engine.end_access(access);
        if let Some(m) = self.client(client)?.mappings.get_mut(&handle) {
            m.access = None;
        }
        self.drain(events);
        result?;
        Ok(Reply::Done(op::END_ACCESS))
    }

    fn unmap(
        &mut self,
        client: ClientId,
        handle: u32,
        events: &mut Vec<(ClientId, Event)>,
    ) -> Result<Reply, ErrorReply> {
        let m = self.mapping(client, handle)?;
        if m.access.is_some() {
            return Err(err(ErrorCode::InUse, format!("mapping {handle} has access in flight: end_access first")));
        }
        let id = m.id;
        let result = self.engine.unmap(id);
        self.drain(events);
        result?;
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
        let mapped: Vec<u32> = self
            .clients
            .get(&client)
            .map(|c| c.mappings.iter().filter(|(_, m)| m.attachment == handle).map(|(h, _)| *h).collect())
            .unwrap_or_default();
        if !mapped.is_empty() {
            return Err(err(
                ErrorCode::InUse,
                format!("attachment {handle} still has mappings {mapped:?}: unmap first"),
            ));
        }
        let result = self.engine.detach(attachment);
        self.drain(events);
        result?;
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
            .filter(|(_, m)| m.access.is_some() && c.attachments.get(&m.attachment).is_some_and(|(_, b)| *b == handle))
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
        let atts: Vec<(u32, E::Attachment)> =
            c.attachments.iter().filter(|(_, (_, b))| *b == handle).map(|(h, (a, _))| (*h, *a)).collect();
        let maps: Vec<MapState<E::Mapping, E::Access>> = {
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
            if let Some(a) = m.access {
                log_failure("end_access", client, self.engine.end_access(a));
            }
            log_failure("unmap", client, self.engine.unmap(m.id));
        }
        for (_, a) in atts.iter().rev() {
            log_failure("detach", client, self.engine.detach(*a));
            self.owners.remove(a);
        }
        if let Some(s) = self.shared.get_mut(&buffer) {
            s.holders -= 1;
            if s.holders == 0 {
                let token = s.token;
                self.shared.remove(&buffer);
                self.tokens.remove(&token);
                log_failure("release", client, self.engine.release(buffer));
                tracing::debug!(client, buffer = %buffer, "released: last holder let go");
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
        let c = self.clients.get(&client).ok_or_else(|| err(ErrorCode::Internal, "no such client"))?;
        let mut buffers = Vec::new();
        for (h, b) in &c.buffers {
            let Some(s) = self.shared.get(b) else { continue };
            let attachments = c
                .attachments
                .iter()
                .filter(|(_, (_, bh))| bh == h)
                .map(|(ah, (a, _))| AttachmentStatus {
                    attachment: *ah,
                    device: self.engine.device_of(*a).unwrap_or("?").to_owned(),
                    mappings: c.mappings.iter().filter(|(_, m)| m.attachment == *ah).map(|(mh, _)| *mh).collect(),
                })
                .collect();
            buffers.push(BufferStatus {
                buffer: *h,
                name: self.engine.name(*b).unwrap_or("?").to_owned(),
                size: s.size,
                allocated: self.engine.allocated(*b),
                generation: self.engine.generation(*b),
                creator: s.creator == client,
                attachments,
            });
        }
        let fds = u32::try_from(c.mappings.len()).unwrap_or(u32::MAX);
        Ok(Reply::Status { bytes: c.bytes, fds, quota: self.quota(), buffers })
    }

    fn inspect(&mut self, client: ClientId, offset: u64) -> Result<Reply, ErrorReply> {
        let uid = self.clients.get(&client).map_or(u32::MAX, |c| c.peer.uid);
        if !self.config.admins.contains(&uid) {
            return Err(err(
                ErrorCode::Permission,
                format!("inspect is for administrators (uids {:?}); this client is uid {uid}", self.config.admins),
            ));
        }
        if offset == 0 || self.clients.get(&client).is_some_and(|c| c.inspect.is_none()) {
            let text = self.inspect_json().to_string().into_bytes();
            self.client(client)?.inspect = Some(text);
        }
        let text = self.clients.get(&client).and_then(|c| c.inspect.as_deref()).unwrap_or_default();
        let total = text.len() as u64;
        let start = usize::try_from(offset.min(total)).unwrap_or(text.len());
        let end = (start + INSPECT_CHUNK).min(text.len());
        Ok(Reply::Inspect { total, chunk: text[start..end].to_vec() })
    }

    /// The administrator's view: buffers (holders, attachments, plan, backing), clients,
    /// counters and the backend's accounting.
    pub fn inspect_json(&self) -> serde_json::Value {
        let mut buffers = Vec::new();
        let mut ids: Vec<&E::Buffer> = self.shared.keys().collect();
        ids.sort();
        for b in ids {
            let s = &self.shared[b];
            let mut v = self.engine.buffer_json(*b);
            if let Some(atts) = v.get_mut("attachments").and_then(|a| a.as_array_mut()) {
                for a in atts {
                    let owner = self
                        .owners
                        .iter()
                        .find(|(id, _)| a["attachment"].as_str() == Some(id.to_string().as_str()))
                        .map(|(_, (c, _))| *c);
                    a["client"] = json!(owner);
                }
            }
            v["name"] = json!(self.engine.name(*b).unwrap_or("?"));
            v["size"] = json!(s.size);
            v["creator"] = json!(s.creator);
            v["holders"] = json!(s.holders);
            v["generation"] = json!(self.engine.generation(*b));
            buffers.push(v);
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
            "backend": self.engine.kind(),
            "platform": self.engine.platform(),
            "limits": self.config.limits,
            "buffers": buffers,
            "clients": clients,
            "stats": self.engine.stats_json(),
            "accounting": self.engine.accounting(),
        })
    }
}

fn log_failure(what: &str, client: ClientId, r: Result<(), ErrorReply>) {
    if let Err(e) = r {
        tracing::warn!(client, code = %e.code, error = %e.message, "cleanup: {what} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_across_pool_refills_and_not_kept() {
        let mut t = Tokens::new();
        let drawn: std::collections::HashSet<[u8; 16]> = (0..600).map(|_| t.next().unwrap().0).collect();
        assert_eq!(drawn.len(), 600, "600 draws (past two refills of 256) gave a repeat");
        assert!(!drawn.contains(&[0u8; 16]));
        assert!(t.pool[..t.used].iter().all(|b| *b == 0), "handed-out bytes stay in the pool");
    }
}
