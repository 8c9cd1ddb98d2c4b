//! libdmaplace: the client of `dmaplaced` (`docs/PROTOCOL.md`).
//!
//! A [`Client`] is one connection. Requests block until their reply; `moved` events
//! that arrive meanwhile are queued and read with [`Client::next_event`]. Every fd the
//! daemon hands over arrives close-on-exec and owned ([`Mapped::fd`]).
//!
//! ```no_run
//! use dmaplace::{Client, Desc, hints};
//! let mut producer = Client::connect(dmaplace::default_socket(), "camera")?;
//! let buf = producer.create(Desc::Size(1 << 20), "frame")?;
//! let att = producer.attach(&buf.token, "isp", hints::CAMERA_WRITE)?;
//! let map = producer.map(att.attachment)?; // the first map allocates for every attachment
//! producer.begin_access(map.mapping)?;     // the device writes: no move now
//! producer.end_access(map.mapping)?;
//! producer.release(buf.buffer)?;
//! # Ok::<(), dmaplace::Error>(())
//! ```
//!
//! The C API over it is its own crate, `crates/capi` (`libdmaplace.so`, `libdmaplace.a`,
//! `dmaplace.h`), so that this one has no `unsafe`; [`agent`] drives a client from text
//! commands (`dmaplace client shell` and the multi-process tests).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use dmaplace_proto::{
    AttachHow, BufferStatus, Desc, ErrorCode, ErrorReply, Event, Layout, MAX_MESSAGE, Plane, Quota, Token, VERSION,
};
use dmaplace_proto::{Body, Message, Reply, Request};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};

/// Usage hint bits for [`Client::attach`] (the daemon's platform decides what each
/// means for each device).
pub mod hints {
    /// Scanned out by a display.
    pub const SCANOUT: u32 = 1 << 0;
    /// A cursor plane.
    pub const CURSOR: u32 = 1 << 1;
    /// Rendered to.
    pub const RENDERING: u32 = 1 << 2;
    /// Sampled.
    pub const TEXTURING: u32 = 1 << 3;
    /// Written by a camera.
    pub const CAMERA_WRITE: u32 = 1 << 4;
    /// Read by a camera pipeline.
    pub const CAMERA_READ: u32 = 1 << 5;
    /// Written by a video decoder.
    pub const VIDEO_DECODE: u32 = 1 << 6;
    /// Read by a video encoder.
    pub const VIDEO_ENCODE: u32 = 1 << 7;
    /// Read often by the CPU.
    pub const CPU_READ_OFTEN: u32 = 1 << 8;
    /// Written often by the CPU.
    pub const CPU_WRITE_OFTEN: u32 = 1 << 9;
    /// Protected content.
    pub const PROTECTED: u32 = 1 << 10;
    /// Must be linear.
    pub const LINEAR: u32 = 1 << 11;

    /// Parses `SCANOUT,RENDERING` (case-insensitive; `-` or empty: none).
    pub fn parse(text: &str) -> Result<u32, String> {
        let mut bits = 0;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty() && *w != "-") {
            bits |= match word.to_ascii_uppercase().as_str() {
                "SCANOUT" => SCANOUT,
                "CURSOR" => CURSOR,
                "RENDERING" => RENDERING,
                "TEXTURING" => TEXTURING,
                "CAMERA_WRITE" => CAMERA_WRITE,
                "CAMERA_READ" => CAMERA_READ,
                "VIDEO_DECODE" => VIDEO_DECODE,
                "VIDEO_ENCODE" => VIDEO_ENCODE,
                "CPU_READ_OFTEN" => CPU_READ_OFTEN,
                "CPU_WRITE_OFTEN" => CPU_WRITE_OFTEN,
                "PROTECTED" => PROTECTED,
                "LINEAR" => LINEAR,
                other => return Err(format!("unknown usage hint `{other}`")),
            };
        }
        Ok(bits)
    }
}

/// `$XDG_RUNTIME_DIR/dmaplace.sock`, else `/run/dmaplace.sock` (the daemon's default).
pub fn default_socket() -> PathBuf {
    match std::env::var_os("DMAPLACE_SOCKET") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if !dir.is_empty() => Path::new(&dir).join("dmaplace.sock"),
            _ => PathBuf::from("/run/dmaplace.sock"),
        },
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("{op}: {errno}")]
    Io {
        /// The call.
        op: String,
        /// The error.
        errno: Errno,
    },
    /// The daemon refused the request.
    #[error("dmaplaced: {0}")]
    Daemon(ErrorReply),
    /// The daemon sent something that is not a valid answer.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A request could not be encoded (a name too long, ...).
    #[error("request: {0}")]
    Encode(#[from] dmaplace_proto::EncodeError),
    /// A caller's argument is unusable (the C API: NULL, not UTF-8).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// No reply within the timeout.
    #[error("no reply from dmaplaced within {0:?}")]
    Timeout(Duration),
    /// The daemon closed the connection.
    #[error("dmaplaced closed the connection")]
    Closed,
}

impl From<ErrorReply> for Error {
    fn from(e: ErrorReply) -> Error {
        Error::Daemon(e)
    }
}

impl Error {
    /// The daemon's error code, if the daemon refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Daemon(e) => Some(e.code),
            _ => None,
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// A new buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// Its handle in this client.
    pub buffer: u32,
    /// The share token (a secret).
    pub token: Token,
    /// Bytes requested, or the packed image size.
    pub size: u64,
}

/// An attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// Its handle.
    pub attachment: u32,
    /// The buffer's handle in this client.
    pub buffer: u32,
    /// How it was served.
    pub how: AttachHow,
}

/// A mapping: the buffer's fd and its committed layout.
#[derive(Debug)]
pub struct Mapped {
    /// Its handle.
    pub mapping: u32,
    /// Times the buffer moved before this map.
    pub generation: u32,
    /// The layout.
    pub layout: Layout,
    /// The buffer (a dma-buf on real heaps; a memfd on the simulated backend).
    pub fd: OwnedFd,
}

/// What `hello` told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The daemon's backend: `sim`, `heaps`, `kmod`.
    pub backend: String,
    /// Its platform.
    pub platform: String,
    /// This client's limits.
    pub quota: Quota,
}

/// What `status` told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Bytes charged to this client.
    pub bytes: u64,
    /// Live mappings.
    pub fds: u32,
    /// Limits.
    pub quota: Quota,
    /// Buffers held.
    pub buffers: Vec<BufferStatus>,
}

/// A connection to `dmaplaced`.
#[derive(Debug)]
pub struct Client {
    fd: OwnedFd,
    seq: u32,
    events: VecDeque<Event>,
    hello: Hello,
    timeout: Duration,
    /// The receive buffer, reused.
    buf: Vec<u8>,
    /// The send buffer, reused.
    out: Vec<u8>,
}

fn io(op: &str) -> impl FnOnce(Errno) -> Error + '_ {
    move |errno| Error::Io { op: op.to_owned(), errno }
}

impl AsFd for Client {
    /// The socket: readable when an event (or a reply) is waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Client {
    /// Connects to the daemon at `socket` and says hello as `name`.
    pub fn connect(socket: impl AsRef<Path>, name: &str) -> Result<Client> {
        let path = socket.as_ref();
        let what = format!("connect {}", path.display());
        let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(io(&what))?;
        let addr = SocketAddrUnix::new(path).map_err(io(&what))?;
        rustix::net::connect(&fd, &addr).map_err(io(&what))?;
        let mut c = Client {
            fd,
            seq: 0,
            events: VecDeque::new(),
            hello: Hello {
                backend: String::new(),
                platform: String::new(),
                quota: Quota { bytes: 0, buffers: 0, fds: 0 },
            },
            timeout: Duration::from_secs(30),
            buf: vec![0u8; MAX_MESSAGE],
            out: Vec::with_capacity(256),
        };
        c.set_timeout(c.timeout);
        let (reply, _) =
            c.call(Request::Hello { min_version: VERSION, max_version: VERSION, name: name.to_owned() })?;
        match reply {
            Reply::Hello { backend, platform, quota, .. } => c.hello = Hello { backend, platform, quota },
            other => return Err(unexpected("hello", &other)),
        }
        Ok(c)
    }

    /// What the daemon said at hello.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// How long a request waits for its reply (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        // A blocking receive with SO_RCVTIMEO: no poll(2) before each reply.
        self.timeout = timeout.max(Duration::from_micros(1));
        let _ =
            rustix::net::sockopt::set_socket_timeout(&self.fd, rustix::net::sockopt::Timeout::Recv, Some(self.timeout));
    }

    /// Sends raw bytes as one datagram (tests of the daemon's validation).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        send(self.fd.as_fd(), bytes)
    }

    /// Receives one message (tests of the daemon's validation).
    pub fn recv_raw(&mut self, timeout: Duration) -> Result<(Message, Vec<OwnedFd>)> {
        self.recv(Some(timeout))
    }

    fn call(&mut self, request: Request) -> Result<(Reply, Vec<OwnedFd>)> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        Message { seq, body: Body::Request(request) }.encode_into(&mut self.out)?;
        send(self.fd.as_fd(), &self.out)?;
        let t0 = Instant::now();
        loop {
            // Blocks at most `timeout` per message (SO_RCVTIMEO); events arriving in the
            // meantime do not extend the wait past it.
            let (m, fds) = self.recv(None)?;
            match m.body {
                Body::Event(e) => {
                    self.events.push_back(e);
                    if t0.elapsed() > self.timeout {
                        return Err(Error::Timeout(self.timeout));
                    }
                }
                Body::Reply(r) if m.seq == seq => return Ok((r, fds)),
                Body::Error(e) if m.seq == seq || m.seq == 0 => return Err(Error::Daemon(e)),
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message (seq {}) while waiting for {seq}: {other:?}",
                        m.seq
                    )));
                }
            }
        }
    }

    /// Receives one message: blocking up to the socket's receive timeout, or, given
    /// `wait`, polling for that long first.
    fn recv(&mut self, wait: Option<Duration>) -> Result<(Message, Vec<OwnedFd>)> {
        let mut flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC;
        if let Some(timeout) = wait {
            if !wait_readable(self.fd.as_fd(), timeout)? {
                return Err(Error::Timeout(timeout));
            }
            flags |= RecvFlags::DONTWAIT;
        }
        let buf = &mut self.buf;
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = loop {
            match rustix::net::recvmsg(&self.fd, &mut [IoSliceMut::new(buf)], &mut control, flags) {
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Err(Error::Timeout(wait.unwrap_or(self.timeout))),
                other => break other.map_err(io("recvmsg"))?,
            }
        };
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        if got.bytes == 0 {
            return Err(Error::Closed);
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol("control data truncated (MSG_CTRUNC): an fd was lost".into()));
        }
        if got.bytes > buf.len() {
            return Err(Error::Protocol(format!("a message of {} bytes exceeds {MAX_MESSAGE}", got.bytes)));
        }
        let m = Message::decode(&buf[..got.bytes]).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok((m, fds))
    }

    /// A new buffer with no memory yet.
    pub fn create(&mut self, desc: Desc, name: &str) -> Result<Created> {
        match self.call(Request::Create { desc, name: name.to_owned() })?.0 {
            Reply::Created { buffer, token, size } => Ok(Created { buffer, token, size }),
            other => Err(unexpected("create", &other)),
        }
    }

    /// Attaches `device` (a platform device name) with usage `hints` ([`hints`]) to the
    /// buffer `token` names.
    pub fn attach(&mut self, token: &Token, device: &str, hints: u32) -> Result<Attached> {
        match self.call(Request::Attach { token: *token, device: device.to_owned(), hints })?.0 {
            Reply::Attached { attachment, buffer, how } => Ok(Attached { attachment, buffer, how }),
            other => Err(unexpected("attach", &other)),
        }
    }

    /// Maps an attachment; the first map of a buffer allocates for every attachment.
    pub fn map(&mut self, attachment: u32) -> Result<Mapped> {
        let (reply, mut fds) = self.call(Request::Map { attachment })?;
        match reply {
            Reply::Mapped { mapping, generation, layout } => {
                if fds.len() != 1 {
                    return Err(Error::Protocol(format!("a map reply carries one fd, this one {}", fds.len())));
                }
                Ok(Mapped { mapping, generation, layout, fd: fds.remove(0) })
            }
            other => Err(unexpected("map", &other)),
        }
    }

    fn done(&mut self, request: Request) -> Result<()> {
        let name = request.name();
        match self.call(request)?.0 {
            Reply::Done(_) => Ok(()),
            other => Err(unexpected(name, &other)),
        }
    }

    /// The mapping's device starts DMA: the buffer will not move until [`Client::end_access`].
    pub fn begin_access(&mut self, mapping: u32) -> Result<()> {
        self.done(Request::BeginAccess { mapping })
    }
    /// The DMA is complete (a queued move may run now).
    pub fn end_access(&mut self, mapping: u32) -> Result<()> {
        self.done(Request::EndAccess { mapping })
    }
    /// Drops a mapping (close its fd too).
    pub fn unmap(&mut self, mapping: u32) -> Result<()> {
        self.done(Request::Unmap { mapping })
    }
    /// Detaches (after unmapping).
    pub fn detach(&mut self, attachment: u32) -> Result<()> {
        self.done(Request::Detach { attachment })
    }
    /// Lets go of a buffer: this client's mappings and attachments on it are undone too.
    pub fn release(&mut self, buffer: u32) -> Result<()> {
        self.done(Request::Release { buffer })
    }

    /// What this client holds.
    pub fn status(&mut self) -> Result<Status> {
        match self.call(Request::Status)?.0 {
            Reply::Status { bytes, fds, quota, buffers } => Ok(Status { bytes, fds, quota, buffers }),
            other => Err(unexpected("status", &other)),
        }
    }

    /// The daemon's JSON view of everything (administrators only).
    pub fn inspect(&mut self) -> Result<String> {
        let mut text = Vec::new();
        loop {
            match self.call(Request::Inspect { offset: text.len() as u64 })?.0 {
                Reply::Inspect { total, chunk } => {
                    let done = chunk.is_empty();
                    text.extend_from_slice(&chunk);
                    if done || text.len() as u64 >= total {
                        break;
                    }
                }
                other => return Err(unexpected("inspect", &other)),
            }
        }
        String::from_utf8(text).map_err(|e| Error::Protocol(format!("inspect JSON is not UTF-8: {e}")))
    }

    /// The next event: a queued one, or one that arrives within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        match self.recv(Some(timeout)) {
            Ok((Message { body: Body::Event(e), .. }, _)) => Ok(Some(e)),
            Ok((m, _)) => Err(Error::Protocol(format!("unexpected message while waiting for events: {m:?}"))),
            Err(Error::Timeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn unexpected(op: &str, reply: &Reply) -> Error {
    Error::Protocol(format!("`{op}` was answered with {reply:?}"))
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::Io { op: "poll".into(), errno: e }),
        }
    }
}

fn send(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<()> {
    let mut control = SendAncillaryBuffer::default();
    rustix::net::sendmsg(fd, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).map_err(io("sendmsg"))?;
    Ok(())
}
