//! The socket side: one thread, non-blocking sockets and `epoll` (level-triggered), so a
//! slow or hostile client can hold up nobody. Each readiness of a client reads at most
//! [`ServerConfig::batch`] messages from it; a reply is sent at once from a reused buffer
//! and queued (bounded, per client) only when the client's socket is full; a client that
//! does not drain its queue within [`ServerConfig::send_timeout`], never says hello
//! within [`ServerConfig::handshake_timeout`], or keeps sending garbage is disconnected,
//! and everything it held is released.
//!
//! What one request costs the daemon in system calls: `epoll_wait` (shared by every
//! client ready at that moment), `recvmsg`, `sendmsg`; plus what the engine does.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dmaplace_proto::{Body, ErrorCode, ErrorReply, HEADER_LEN, MAX_MESSAGE, Message};
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::engine::Engine;
use crate::service::{ClientId, Peer, Service};

/// Who may connect, and the socket's robustness settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The socket's path.
    pub socket: PathBuf,
    /// The group the socket file is given (its mode is 0660), if any.
    pub socket_group: Option<u32>,
    /// Users allowed to connect (besides root and the daemon's own user).
    pub allow_uids: Vec<u32>,
    /// Groups (the peer's effective gid) allowed to connect.
    pub allow_gids: Vec<u32>,
    /// A client must say hello within this.
    pub handshake_timeout: Duration,
    /// A queued reply or event must be taken by the client within this.
    pub send_timeout: Duration,
    /// Messages queued for one client before it counts as not reading.
    pub max_queue: usize,
    /// Malformed or out-of-order messages before disconnection.
    pub max_malformed: u32,
    /// Connections at once.
    pub max_clients: usize,
    /// Messages read from one client per readiness (1: a client that waits for each reply,
    /// the usual one, costs no `recvmsg` that finds nothing).
    pub batch: usize,
}

impl ServerConfig {
    /// Defaults for `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            socket: socket.into(),
            socket_group: None,
            allow_uids: Vec::new(),
            allow_gids: Vec::new(),
            handshake_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(5),
            max_queue: 256,
            max_malformed: 3,
            max_clients: 4096,
            batch: 1,
        }
    }
}

/// `$XDG_RUNTIME_DIR/dmaplace.sock`, else `/run/dmaplace.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("dmaplace.sock"),
        _ => PathBuf::from("/run/dmaplace.sock"),
    }
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket operation.
    #[error("{op} {path}: {errno}")]
    Socket {
        /// What was done.
        op: &'static str,
        /// The socket path.
        path: String,
        /// The error.
        errno: Errno,
    },
    /// Another daemon answers on the path.
    #[error("another dmaplaced is listening on {0}")]
    InUse(String),
}

struct Out {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    since: Instant,
}

struct Conn {
    fd: OwnedFd,
    /// What epoll watches for now.
    watching: epoll::EventFlags,
    peer: Peer,
    accepted: Instant,
    queue: VecDeque<Out>,
    malformed: u32,
    /// Flush what is queued, then close.
    closing: bool,
    /// Refused by the policy: its first message is answered with this, then it is closed.
    denied: Option<String>,
    dead: Option<String>,
}

/// The daemon's socket loop around a [`Service`].
pub struct Server<E: Engine> {
    service: Service<E>,
    config: ServerConfig,
    listener: OwnedFd,
    conns: BTreeMap<ClientId, Conn>,
    next_id: ClientId,
    own_uid: u32,
    /// One receive buffer, reused (a message is handled before the next is read).
    buf: Vec<u8>,
    /// One send buffer, reused: a reply is encoded here and sent from here.
    out: Vec<u8>,
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
    /// Connections marked dead since the last reap.
    dying: bool,
    last_tick: Instant,
    last_expire: Instant,
}

/// epoll data of the listener and of the stop fd; clients use their id (from 1).
const LISTENER: u64 = 0;
const STOP: u64 = u64::MAX;

impl<E: Engine> std::fmt::Debug for Server<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("socket", &self.config.socket).field("conns", &self.conns.len()).finish()
    }
}

fn sock_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> ServerError + 'a {
    move |errno| ServerError::Socket { op, path: path.display().to_string(), errno }
}

/// Removes a socket file no daemon answers on; refuses to touch a live one.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    if !path.exists() {
        return Ok(());
    }
    let probe = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(sock_err("socket", path))?;
    let addr = SocketAddrUnix::new(path).map_err(sock_err("address", path))?;
    match rustix::net::connect(&probe, &addr) {
        Ok(()) => Err(ServerError::InUse(path.display().to_string())),
        Err(_) => std::fs::remove_file(path).map_err(|e| ServerError::Socket {
            op: "remove stale socket",
            path: path.display().to_string(),
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        }),
    }
}

fn error_bytes(seq: u32, code: ErrorCode, message: String) -> Vec<u8> {
    Message { seq, body: Body::Error(ErrorReply { code, message }) }.encode().unwrap_or_default()
}

/// The `seq` of a datagram whose header is readable, for error replies.
fn seq_of(bytes: &[u8]) -> u32 {
    if bytes.len() >= HEADER_LEN { u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) } else { 0 }
}

impl<E: Engine> Server<E> {
    /// Binds the socket (mode 0660) and serves `service` on it.
    pub fn bind(service: Service<E>, config: ServerConfig) -> Result<Server<E>, ServerError> {
        let path = config.socket.clone();
        clear_stale(&path)?;
        // Created 0660 (no window with wider permissions): umask 0117 around bind.
        let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o117));
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(sock_err("socket", &path))?;
        let addr = SocketAddrUnix::new(&path).map_err(sock_err("address", &path))?;
        let bound = rustix::net::bind(&listener, &addr);
        rustix::process::umask(old_umask);
        bound.map_err(sock_err("bind", &path))?;
        rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(0o660)).map_err(sock_err("chmod 0660", &path))?;
        if let Some(g) = config.socket_group {
            rustix::fs::chown(&path, None, Some(rustix::fs::Gid::from_raw(g))).map_err(sock_err("chown", &path))?;
        }
        rustix::net::listen(&listener, 128).map_err(sock_err("listen", &path))?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(sock_err("epoll_create", &path))?;
        epoll::add(&epoll, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN)
            .map_err(sock_err("epoll_ctl", &path))?;
        let own_uid = rustix::process::geteuid().as_raw();
        tracing::info!(socket = %path.display(), backend = service.engine().kind(), platform = %service.engine().platform(), "listening");
        Ok(Server {
            service,
            config,
            listener,
            conns: BTreeMap::new(),
            next_id: 1,
            own_uid,
            buf: vec![0u8; MAX_MESSAGE],
            out: Vec::with_capacity(256),
            epoll,
            events: Vec::with_capacity(256),
            dying: false,
            last_tick: Instant::now(),
            last_expire: Instant::now(),
        })
    }

    /// The state machine.
    pub fn service(&self) -> &Service<E> {
        &self.service
    }

    /// The state machine, mutably (to install a recorder).
    pub fn service_mut(&mut self) -> &mut Service<E> {
        &mut self.service
    }

    fn allowed(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || self.config.allow_uids.contains(&peer.uid)
            || self.config.allow_gids.contains(&peer.gid)
    }

    /// Serves until `stop` becomes readable (a byte on a pipe: SIGTERM, or a test), then
    /// releases every client's buffers and removes the socket.
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<(), ServerError> {
        let path = self.config.socket.clone();
        epoll::add(&self.epoll, stop, epoll::EventData::new_u64(STOP), epoll::EventFlags::IN)
            .map_err(sock_err("epoll_ctl", &path))?;
        let result = self.serve(&path);
        let _ = epoll::delete(&self.epoll, stop);
        self.shutdown();
        result
    }

    fn serve(&mut self, path: &Path) -> Result<(), ServerError> {
        let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        let mut events = std::mem::take(&mut self.events);
        loop {
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&timeout)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    self.events = events;
                    return Err(sock_err("epoll_wait", path)(e));
                }
            }
            for ev in &events {
                let (id, flags) = (ev.data.u64(), ev.flags);
                match id {
                    STOP => {
                        self.events = events;
                        return Ok(());
                    }
                    LISTENER => self.accept_all(),
                    id => {
                        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                            self.read_some(id);
                        }
                        if flags.contains(epoll::EventFlags::OUT) {
                            self.flush(id);
                        }
                    }
                }
            }
            self.housekeeping();
        }
    }

    /// Timeouts, the dead, and the engine's poll: timeouts are seconds long, so they
    /// are looked at every 100 ms, not after every message.
    fn housekeeping(&mut self) {
        if self.last_expire.elapsed() >= Duration::from_millis(100) {
            self.last_expire = Instant::now();
            self.expire();
        }
        if self.dying {
            self.reap();
        }
        self.tick();
    }

    /// Lets the engine look for moves made outside the daemon, at most every 200 ms.
    fn tick(&mut self) {
        if self.last_tick.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_tick = Instant::now();
        let events = self.service.poll();
        self.deliver(events);
    }

    /// What epoll should watch for on `id`: input unless it is closing, output while
    /// replies wait.
    fn rearm(&mut self, id: ClientId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let mut want = epoll::EventFlags::empty();
        if !c.closing && c.dead.is_none() {
            want |= epoll::EventFlags::IN;
        }
        if !c.queue.is_empty() && c.dead.is_none() {
            want |= epoll::EventFlags::OUT;
        }
        if want != c.watching {
            c.watching = want;
            if let Err(e) = epoll::modify(&self.epoll, &c.fd, epoll::EventData::new_u64(id), want) {
                tracing::warn!(client = id, error = %e, "epoll_ctl");
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let fd = match rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
                Ok(fd) => fd,
                Err(Errno::AGAIN | Errno::INTR) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            };
            let peer = match rustix::net::sockopt::socket_peercred(&fd) {
                Ok(c) => Peer { pid: c.pid.as_raw_nonzero().get(), uid: c.uid.as_raw(), gid: c.gid.as_raw() },
                Err(e) => {
                    tracing::warn!(error = %e, "SO_PEERCRED failed: connection dropped");
                    continue;
                }
            };
            // A refused peer is answered when it speaks (closing a socket with its hello
            // unread would reset the connection and lose the answer).
            let denied = (!self.allowed(&peer)).then(|| {
                tracing::warn!(
                    pid = peer.pid,
                    uid = peer.uid,
                    gid = peer.gid,
                    "connection refused by the uid/gid policy"
                );
                format!("uid {} gid {} may not use this daemon", peer.uid, peer.gid)
            });
            if self.conns.len() >= self.config.max_clients {
                tracing::warn!(pid = peer.pid, limit = self.config.max_clients, "too many clients: connection dropped");
                let msg = format!("the daemon serves at most {} clients", self.config.max_clients);
                let _ = send(fd.as_fd(), &error_bytes(0, ErrorCode::Quota, msg), None);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            if denied.is_none() {
                self.service.connect(id, peer);
            }
            tracing::debug!(client = id, pid = peer.pid, uid = peer.uid, "connected");
            if let Err(e) = epoll::add(&self.epoll, &fd, epoll::EventData::new_u64(id), epoll::EventFlags::IN) {
                tracing::warn!(error = %e, "epoll_ctl: connection dropped");
                self.service.disconnect(id);
                continue;
            }
            self.conns.insert(
                id,
                Conn {
                    fd,
                    watching: epoll::EventFlags::IN,
                    peer,
                    accepted: Instant::now(),
                    queue: VecDeque::new(),
                    malformed: 0,
                    closing: false,
                    denied,
                    dead: None,
                },
            );
        }
    }

    fn read_some(&mut self, id: ClientId) {
        let mut buf = std::mem::take(&mut self.buf);
        self.read_batch(id, &mut buf);
        self.buf = buf;
    }

    fn read_batch(&mut self, id: ClientId, buf: &mut [u8]) {
        for _ in 0..self.config.batch {
            let Some(conn) = self.conns.get(&id) else { return };
            if conn.closing || conn.dead.is_some() {
                return;
            }
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC;
            let got = rustix::net::recvmsg(&conn.fd, &mut [IoSliceMut::new(buf)], &mut control, flags);
            // Clients send no fds: any that came are closed here, whatever else happened.
            let fds = control
                .drain()
                .map(|m| match m {
                    RecvAncillaryMessage::ScmRights(fds) => fds.count(),
                    _ => 0,
                })
                .sum::<usize>();
            let msg = match got {
                Ok(m) => m,
                Err(Errno::AGAIN | Errno::INTR) => return,
                Err(e) => return self.kill(id, format!("recvmsg: {e}")),
            };
            if msg.bytes == 0 && !msg.flags.contains(ReturnFlags::TRUNC) {
                return self.kill(id, "closed the connection".into());
            }
            let bytes = &buf[..msg.bytes.min(buf.len())];
            let seq = seq_of(bytes);
            if let Some(why) = self.conns.get(&id).and_then(|c| c.denied.clone()) {
                self.enqueue(
                    id,
                    Message { seq, body: Body::Error(ErrorReply { code: ErrorCode::Permission, message: why }) },
                    None,
                );
                if let Some(c) = self.conns.get_mut(&id) {
                    c.closing = true;
                }
                self.flush(id);
                self.rearm(id);
                return;
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) || fds > 0 {
                let why = if msg.flags.contains(ReturnFlags::CTRUNC) {
                    "control data was truncated (MSG_CTRUNC); requests carry no fds".to_owned()
                } else {
                    format!("the request carried {fds} fd(s); requests carry none (closed)")
                };
                self.garbage(id, seq, ErrorCode::Control, why);
                continue;
            }
            if msg.bytes > MAX_MESSAGE {
                self.garbage(
                    id,
                    seq,
                    ErrorCode::TooLarge,
                    format!("a message of {} bytes exceeds the maximum of {MAX_MESSAGE}", msg.bytes),
                );
                continue;
            }
            match Message::decode(bytes) {
                Ok(Message { seq, body: Body::Request(req) }) => {
                    let out = self.service.handle(id, seq, &req);
                    if matches!(&out.reply, Err(e) if e.code == ErrorCode::Sequence) {
                        self.count_garbage(id);
                    }
                    let body = match out.reply {
                        Ok(r) => Body::Reply(r),
                        Err(e) => Body::Error(e),
                    };
                    self.enqueue(id, Message { seq, body }, out.fd);
                    self.deliver(out.events);
                }
                Ok(_) => {
                    self.garbage(id, seq, ErrorCode::Malformed, "clients send requests, not replies or events".into())
                }
                Err(e) => self.garbage(id, seq, ErrorCode::Malformed, e.to_string()),
            }
        }
    }

    fn count_garbage(&mut self, id: ClientId) {
        let limit = self.config.max_malformed;
        if let Some(c) = self.conns.get_mut(&id) {
            c.malformed += 1;
            if c.malformed >= limit {
                tracing::warn!(
                    client = id,
                    pid = c.peer.pid,
                    count = c.malformed,
                    "disconnecting a client that keeps sending garbage"
                );
                c.closing = true;
            }
        }
        // Closes now if everything queued is already sent.
        self.flush(id);
    }

    fn garbage(&mut self, id: ClientId, seq: u32, code: ErrorCode, message: String) {
        tracing::debug!(client = id, %code, message, "bad message");
        self.enqueue(id, Message { seq, body: Body::Error(ErrorReply { code, message }) }, None);
        self.count_garbage(id);
    }

    /// Sends `m` now if nothing waits before it, else queues it (bounded).
    fn enqueue(&mut self, id: ClientId, m: Message, fd: Option<OwnedFd>) {
        let mut out = std::mem::take(&mut self.out);
        if let Err(e) = m.encode_into(&mut out) {
            tracing::error!(client = id, error = %e, "reply does not encode");
            out = error_bytes(m.seq, ErrorCode::Internal, format!("the reply does not encode: {e}"));
        }
        self.send_or_queue(id, &out, fd);
        self.out = out;
    }

    fn send_or_queue(&mut self, id: ClientId, bytes: &[u8], fd: Option<OwnedFd>) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.dead.is_some() {
            return;
        }
        if c.queue.is_empty() {
            match send(c.fd.as_fd(), bytes, fd.as_ref().map(AsFd::as_fd)) {
                Ok(()) => return self.close_if_done(id),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => return self.kill(id, format!("sendmsg: {e}")),
            }
        }
        if c.queue.len() >= self.config.max_queue {
            return self.kill(id, format!("{} replies and events unread", self.config.max_queue));
        }
        c.queue.push_back(Out { bytes: bytes.to_vec(), fd, since: Instant::now() });
        self.rearm(id);
    }

    /// A client marked `closing` is closed once everything queued for it is sent.
    fn close_if_done(&mut self, id: ClientId) {
        if self.conns.get(&id).is_some_and(|c| c.closing && c.queue.is_empty()) {
            self.kill(id, "disconnected after repeated malformed messages".into());
        }
    }

    fn deliver(&mut self, events: Vec<(ClientId, dmaplace_proto::Event)>) {
        for (client, e) in events {
            tracing::info!(client, event = ?e, "event");
            self.enqueue(client, Message { seq: 0, body: Body::Event(e) }, None);
        }
    }

    fn flush(&mut self, id: ClientId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        while let Some(out) = c.queue.front() {
            match send(c.fd.as_fd(), &out.bytes, out.fd.as_ref().map(AsFd::as_fd)) {
                Ok(()) => {
                    c.queue.pop_front();
                }
                Err(Errno::AGAIN | Errno::INTR) => return,
                Err(e) => return self.kill(id, format!("sendmsg: {e}")),
            }
        }
        self.close_if_done(id);
        self.rearm(id);
    }

    fn kill(&mut self, id: ClientId, why: String) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.dead.is_none()
        {
            c.dead = Some(why);
            self.dying = true;
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for (id, c) in &self.conns {
            if !self.service.greeted(*id) && now.duration_since(c.accepted) > self.config.handshake_timeout {
                late.push((*id, format!("no hello within {:?}", self.config.handshake_timeout)));
            } else if let Some(out) = c.queue.front()
                && now.duration_since(out.since) > self.config.send_timeout
            {
                late.push((*id, format!("a reply stayed unread for {:?}", self.config.send_timeout)));
            }
        }
        for (id, why) in late {
            self.kill(id, why);
        }
    }

    /// Drops dead connections; their cleanup's events go to the other holders.
    fn reap(&mut self) {
        self.dying = false;
        loop {
            let Some((id, why)) = self.conns.iter().find_map(|(id, c)| c.dead.clone().map(|w| (*id, w))) else {
                return;
            };
            // Closing the fd takes it out of the epoll set.
            let conn = self.conns.remove(&id);
            let events = self.service.disconnect(id);
            if let Some(c) = conn {
                tracing::info!(client = id, pid = c.peer.pid, why, "disconnected; its buffers released");
            }
            self.deliver(events);
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<ClientId> = self.conns.keys().copied().collect();
        for id in ids {
            self.conns.remove(&id);
            self.service.disconnect(id);
        }
        let _ = std::fs::remove_file(&self.config.socket);
        tracing::info!(buffers = self.service.buffers(), "shut down");
    }
}

impl<E: Engine> Drop for Server<E> {
    fn drop(&mut self) {
        if !self.conns.is_empty() {
            self.shutdown();
        }
    }
}

/// One datagram, with an fd when given; never blocks and never raises SIGPIPE.
fn send(fd: BorrowedFd<'_>, bytes: &[u8], pass: Option<BorrowedFd<'_>>) -> Result<(), Errno> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let one;
    if let Some(p) = pass {
        one = [p];
        if !control.push(SendAncillaryMessage::ScmRights(&one)) {
            return Err(Errno::NOBUFS);
        }
    }
    rustix::net::sendmsg(fd, &[IoSlice::new(bytes)], &mut control, SendFlags::DONTWAIT | SendFlags::NOSIGNAL).map(drop)
}
