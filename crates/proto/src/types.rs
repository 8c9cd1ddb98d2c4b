//! The messages, as Rust values. `docs/PROTOCOL.md` gives each one's bytes.

use std::fmt;

use crate::TOKEN_LEN;

/// A share token: 128 random bits that let their holder attach to a buffer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl fmt::Debug for Token {
    /// Tokens are secrets: debug output and logs show only that one is there.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Lower-case hex, 32 characters (what the CLI prints and reads).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`Token::to_hex`]'s form.
    pub fn from_hex(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.len() != 2 * TOKEN_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("a token is {} hex digits, got {:?}", 2 * TOKEN_LEN, text));
        }
        let mut t = [0u8; TOKEN_LEN];
        for (i, byte) in t.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Token(t))
    }
}

/// What a buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desc {
    /// A number of bytes.
    Size(u64),
    /// An image; the devices' layout rules decide pitches, offsets and size.
    Image {
        /// Pixels.
        width: u32,
        /// Pixels.
        height: u32,
        /// A DRM fourcc code (`DRM_FORMAT_XRGB8888` = `XR24`).
        fourcc: u32,
        /// Acceptable modifiers; empty: any.
        modifiers: Vec<u64>,
    },
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first message of a connection: the versions the client speaks.
    Hello {
        /// Oldest version.
        min_version: u16,
        /// Newest version.
        max_version: u16,
        /// A name for logs.
        name: String,
    },
    /// A new buffer, with no memory yet.
    Create {
        /// Size or image.
        desc: Desc,
        /// A name for logs and `inspect`.
        name: String,
    },
    /// Attaches a device of the platform, with usage hints, to the buffer the token names.
    Attach {
        /// The buffer's share token.
        token: Token,
        /// A platform device name.
        device: String,
        /// Usage hint bits (`SCANOUT` = 1, ...).
        hints: u32,
    },
    /// Maps an attachment: returns the buffer's fd and committed layout.
    Map {
        /// The attachment.
        attachment: u32,
    },
    /// The mapping's device starts DMA: the buffer must not move until it ends.
    BeginAccess {
        /// The mapping.
        mapping: u32,
    },
    /// The DMA started by `BeginAccess` is complete.
    EndAccess {
        /// The mapping.
        mapping: u32,
    },
    /// Drops a mapping.
    Unmap {
        /// The mapping.
        mapping: u32,
    },
    /// Detaches a device (its mappings first).
    Detach {
        /// The attachment.
        attachment: u32,
    },
    /// Lets go of a buffer (its attachments first).
    Release {
        /// The buffer.
        buffer: u32,
    },
    /// What this client holds.
    Status,
    /// The daemon's state as JSON, for administrators, from a byte offset.
    Inspect {
        /// Offset into the JSON text; 0 takes a new snapshot.
        offset: u64,
    },
}

impl Request {
    /// The request's kind byte.
    pub fn kind(&self) -> u16 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::Create { .. } => op::CREATE,
            Request::Attach { .. } => op::ATTACH,
            Request::Map { .. } => op::MAP,
            Request::BeginAccess { .. } => op::BEGIN_ACCESS,
            Request::EndAccess { .. } => op::END_ACCESS,
            Request::Unmap { .. } => op::UNMAP,
            Request::Detach { .. } => op::DETACH,
            Request::Release { .. } => op::RELEASE,
            Request::Status => op::STATUS,
            Request::Inspect { .. } => op::INSPECT,
        }
    }

    /// The operation's name, as logs and errors write it.
    pub fn name(&self) -> &'static str {
        op::name(self.kind())
    }
}

/// Message kinds (the header's `kind` field).
pub mod op {
    /// `hello`.
    pub const HELLO: u16 = 0x01;
    /// `create`.
    pub const CREATE: u16 = 0x02;
    /// `attach`.
    pub const ATTACH: u16 = 0x03;
    /// `map`.
    pub const MAP: u16 = 0x04;
    /// `begin_access`.
    pub const BEGIN_ACCESS: u16 = 0x05;
    /// `end_access`.
    pub const END_ACCESS: u16 = 0x06;
    /// `unmap`.
    pub const UNMAP: u16 = 0x07;
    /// `detach`.
    pub const DETACH: u16 = 0x08;
    /// `release`.
    pub const RELEASE: u16 = 0x09;
    /// `status`.
    pub const STATUS: u16 = 0x0a;
    /// `inspect`.
    pub const INSPECT: u16 = 0x0b;
    /// A successful reply to request `r` has kind `REPLY | r`.
    pub const REPLY: u16 = 0x80;
    /// The `moved` event.
    pub const EVENT_MOVED: u16 = 0x41;
    /// An error reply.
    pub const ERROR: u16 = 0xff;

    /// A kind's name.
    pub fn name(kind: u16) -> &'static str {
        match kind & !REPLY {
            HELLO => "hello",
            CREATE => "create",
            ATTACH => "attach",
            MAP => "map",
            BEGIN_ACCESS => "begin_access",
            END_ACCESS => "end_access",
            UNMAP => "unmap",
            DETACH => "detach",
            RELEASE => "release",
            STATUS => "status",
            INSPECT => "inspect",
            _ if kind == EVENT_MOVED => "moved",
            _ if kind == ERROR => "error",
            _ => "unknown",
        }
    }
}

/// How an attach was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AttachHow {
    /// No memory yet: it will be placed for this device too.
    BeforeAllocation = 0,
    /// The memory already suits the device.
    Fits = 1,
    /// The buffer moved for the device; the other holders got `moved`.
    Migrated = 2,
    /// The buffer will move once the DMA in flight ends; maps wait until then.
    Queued = 3,
}

impl AttachHow {
    /// From the wire byte.
    pub fn from_u8(v: u8) -> Option<AttachHow> {
        Some(match v {
            0 => AttachHow::BeforeAllocation,
            1 => AttachHow::Fits,
            2 => AttachHow::Migrated,
            3 => AttachHow::Queued,
            _ => return None,
        })
    }
}

/// One plane of a layout (`drm_mode_fb_cmd2.offsets[i]`, `pitches[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plane {
    /// Byte offset.
    pub offset: u32,
    /// Bytes per row.
    pub pitch: u32,
}

/// The committed layout of a mapped buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of memory behind the fd.
    pub size: u64,
    /// DRM fourcc; 0 for a buffer created by size.
    pub fourcc: u32,
    /// DRM format modifier (`DRM_FORMAT_MOD_LINEAR` = 0); 0 for a buffer created by size.
    pub modifier: u64,
    /// Pixels; 0 for a buffer created by size.
    pub width: u32,
    /// Pixels; 0 for a buffer created by size.
    pub height: u32,
    /// Up to 4 planes; none for a buffer created by size.
    pub planes: Vec<Plane>,
}

impl Layout {
    /// The layout of a buffer created by size: `size` bytes, no image.
    pub fn sized(size: u64) -> Layout {
        Layout { size, fourcc: 0, modifier: 0, width: 0, height: 0, planes: Vec::new() }
    }
}

/// Per-client limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Bytes of buffers the client created and holds.
    pub bytes: u64,
    /// Buffers the client holds (created or attached by token).
    pub buffers: u32,
    /// Mappings, each of which handed the client an fd.
    pub fds: u32,
}

/// One attachment in a status reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentStatus {
    /// Handle.
    pub attachment: u32,
    /// Device.
    pub device: String,
    /// Live mapping handles.
    pub mappings: Vec<u32>,
}

/// One buffer in a status reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferStatus {
    /// Handle.
    pub buffer: u32,
    /// Name.
    pub name: String,
    /// Bytes requested (or the packed image size).
    pub size: u64,
    /// Whether memory is allocated.
    pub allocated: bool,
    /// Times the buffer moved.
    pub generation: u32,
    /// Whether this client created it (and is charged for it).
    pub creator: bool,
    /// This client's attachments to it.
    pub attachments: Vec<AttachmentStatus>,
}

/// A successful reply's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// To `hello`.
    Hello {
        /// The version both sides now speak.
        version: u16,
        /// The largest message the daemon accepts.
        max_message: u32,
        /// The daemon's backend (`sim`, `heaps`, `kmod`).
        backend: String,
        /// The platform's name.
        platform: String,
        /// This client's limits.
        quota: Quota,
    },
    /// To `create`.
    Created {
        /// The buffer's handle.
        buffer: u32,
        /// Its share token (secret: hand it only to processes that may use the buffer).
        token: Token,
        /// Bytes requested (or the packed image size).
        size: u64,
    },
    /// To `attach`.
    Attached {
        /// The attachment's handle.
        attachment: u32,
        /// The buffer's handle in this client (new if the client did not hold it).
        buffer: u32,
        /// How it was served.
        how: AttachHow,
    },
    /// To `map`; the datagram carries the buffer's fd (`SCM_RIGHTS`).
    Mapped {
        /// The mapping's handle.
        mapping: u32,
        /// Times the buffer has moved.
        generation: u32,
        /// The committed layout.
        layout: Layout,
    },
    /// To `begin_access`, `end_access`, `unmap`, `detach`, `release`: done.
    Done(u16),
    /// To `status`.
    Status {
        /// Bytes charged to this client.
        bytes: u64,
        /// Live mappings (fds handed out).
        fds: u32,
        /// Limits.
        quota: Quota,
        /// Buffers this client holds.
        buffers: Vec<BufferStatus>,
    },
    /// To `inspect`.
    Inspect {
        /// Length of the whole JSON text.
        total: u64,
        /// Its bytes from the requested offset.
        chunk: Vec<u8>,
    },
}

/// What the daemon says without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The buffer moved: the listed mappings are stale; unmap them and map again.
    Moved {
        /// The buffer's handle in this client.
        buffer: u32,
        /// This client's attachment that was notified.
        attachment: u32,
        /// The buffer's generation after the move.
        generation: u32,
        /// This client's mappings that are now stale.
        invalidated: Vec<u32>,
    },
}

/// Error codes (the `code` field of an error reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed = 1,
    /// No common protocol version.
    Version = 2,
    /// Out of order: a request before `hello`, or a second `hello`.
    Sequence = 3,
    /// No such handle in this client.
    NoSuchHandle = 4,
    /// The token names no buffer (or one this client may not use).
    BadToken = 5,
    /// The platform has no such device.
    UnknownDevice = 6,
    /// A malformed buffer description, name or hint set.
    Invalid = 7,
    /// No placement satisfies the device together with the others.
    Conflict = 8,
    /// The buffer cannot move now: DMA is in flight.
    Busy = 9,
    /// A move is queued: maps wait for the DMA in flight to end.
    MovePending = 10,
    /// The mapping is stale: the buffer moved.
    Stale = 11,
    /// Still in use: mappings, attachments or access outstanding.
    InUse = 12,
    /// A per-client limit would be exceeded.
    Quota = 13,
    /// Not allowed (`inspect` needs an administrator).
    Permission = 14,
    /// The memory backend failed.
    Backend = 15,
    /// A message over the size limit.
    TooLarge = 16,
    /// Control data truncated (`MSG_CTRUNC`) or an fd where none belongs.
    Control = 17,
    /// A daemon bug; the daemon logs it.
    Internal = 18,
}

impl ErrorCode {
    /// From the wire value.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => Version,
            3 => Sequence,
            4 => NoSuchHandle,
            5 => BadToken,
            6 => UnknownDevice,
            7 => Invalid,
            8 => Conflict,
            9 => Busy,
            10 => MovePending,
            11 => Stale,
            12 => InUse,
            13 => Quota,
            14 => Permission,
            15 => Backend,
            16 => TooLarge,
            17 => Control,
            18 => Internal,
            _ => return None,
        })
    }

    /// Its name in `docs/PROTOCOL.md`.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            Version => "version",
            Sequence => "sequence",
            NoSuchHandle => "no_such_handle",
            BadToken => "bad_token",
            UnknownDevice => "unknown_device",
            Invalid => "invalid",
            Conflict => "conflict",
            Busy => "busy",
            MovePending => "move_pending",
            Stale => "stale",
            InUse => "in_use",
            Quota => "quota",
            Permission => "permission",
            Backend => "backend",
            TooLarge => "too_large",
            Control => "control",
            Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error reply: a code and a message in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What failed, naming the handle, device, constraint and values.
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply { code, message: message.into() }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// A message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Client to daemon.
    Request(Request),
    /// Daemon to client, answering the request with the same `seq`.
    Reply(Reply),
    /// Daemon to client, refusing the request with the same `seq`.
    Error(ErrorReply),
    /// Daemon to client, unasked (`seq` 0).
    Event(Event),
}

/// One datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The request's number, chosen by the client; replies and errors echo it; 0 for events.
    pub seq: u32,
    /// The body.
    pub body: Body,
}
