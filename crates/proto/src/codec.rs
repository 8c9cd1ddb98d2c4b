//! Bytes to messages and back. Every read is bounds-checked; nothing here panics on
//! input.

use crate::types::*;
use crate::{HEADER_LEN, INSPECT_CHUNK, MAGIC, MAX_MESSAGE, MAX_MODIFIERS, MAX_NAME, MAX_PLANES, TOKEN_LEN, VERSION};

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("message of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    /// Over [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the maximum of {MAX_MESSAGE}")]
    TooLarge(usize),
    /// Not `DMPL`.
    #[error("bad magic {0:02x?} (expected \"DMPL\")")]
    Magic([u8; 4]),
    /// A version this crate does not speak.
    #[error("protocol version {0} (this side speaks {VERSION})")]
    Version(u16),
    /// The header's length disagrees with the datagram.
    #[error("header says the body is {said} bytes, the datagram holds {got}")]
    Length {
        /// Header's body length.
        said: u32,
        /// Bytes after the header.
        got: usize,
    },
    /// An unknown kind.
    #[error("unknown message kind {0:#06x}")]
    Kind(u16),
    /// A field runs past the end.
    #[error("{kind}: field `{field}` runs past the end of the body")]
    Truncated {
        /// Message kind.
        kind: &'static str,
        /// Field.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{kind}: {extra} trailing byte(s) after the last field")]
    Trailing {
        /// Message kind.
        kind: &'static str,
        /// Count.
        extra: usize,
    },
    /// A field's value is out of range.
    #[error("{kind}: field `{field}`: {what}")]
    Field {
        /// Message kind.
        kind: &'static str,
        /// Field.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
}

/// Why a message cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or list over its limit.
    #[error("field `{field}` is {len} long; the limit is {max}")]
    TooLong {
        /// Field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole message exceeds [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds the maximum of {MAX_MESSAGE}")]
    TooLarge(usize),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
        let n = u16::try_from(len).ok().filter(|_| len <= max).ok_or(EncodeError::TooLong { field, len, max })?;
        self.u16(n);
        Ok(())
    }
    fn str(&mut self, field: &'static str, s: &str, max: usize) -> Result<(), EncodeError> {
        self.count(field, s.len(), max)?;
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn u32s(&mut self, field: &'static str, v: &[u32]) -> Result<(), EncodeError> {
        self.count(field, v.len(), MAX_LIST)?;
        v.iter().for_each(|x| self.u32(*x));
        Ok(())
    }
}

/// The most items in a list of handles or buffers.
const MAX_LIST: usize = 4096;
/// The longest error message.
const MAX_TEXT: usize = 8192;

struct Reader<'a> {
    buf: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { kind: self.kind, field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn bad(&self, field: &'static str, what: impl Into<String>) -> DecodeError {
        DecodeError::Field { kind: self.kind, field, what: what.into() }
    }
    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16(field)?);
        if n > max {
            return Err(self.bad(field, format!("{n} items; the limit is {max}")));
        }
        Ok(n)
    }
    fn str(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let n = self.count(field, max)?;
        let bytes = self.take(n, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.bad(field, format!("not UTF-8: {e}")))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad(field, format!("a flag is 0 or 1, got {v}"))),
        }
    }
    fn u32s(&mut self, field: &'static str) -> Result<Vec<u32>, DecodeError> {
        let n = self.count(field, MAX_LIST)?;
        (0..n).map(|_| self.u32(field)).collect()
    }
    fn end(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { kind: self.kind, extra }),
        }
    }
}

impl Message {
    /// The datagram's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The datagram's bytes, written over `out` (a buffer reused from message to
    /// message, so that sending allocates nothing). On error `out` holds no message.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.clear();
        let mut w = Writer(std::mem::take(out));
        let r = self.write(&mut w);
        *out = w.0;
        if r.is_err() {
            out.clear();
        }
        r
    }

    fn write(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.0.extend_from_slice(&MAGIC);
        w.u16(VERSION);
        w.u16(self.kind());
        w.u32(self.seq);
        w.u32(0); // body length, patched below
        match &self.body {
            Body::Request(r) => encode_request(w, r)?,
            Body::Reply(r) => encode_reply(w, r)?,
            Body::Error(e) => {
                w.u16(e.code as u16);
                w.str("message", truncate(&e.message, MAX_TEXT), MAX_TEXT)?;
            }
            Body::Event(Event::Moved { buffer, attachment, generation, invalidated }) => {
                w.u32(*buffer);
                w.u32(*attachment);
                w.u32(*generation);
                w.u32s("invalidated", invalidated)?;
            }
        }
        let len = w.0.len();
        if len > MAX_MESSAGE {
            return Err(EncodeError::TooLarge(len));
        }
        // CAST: len <= MAX_MESSAGE fits u32.
        let body = u32::try_from(len - HEADER_LEN).map_err(|_| EncodeError::TooLarge(len))?;
        w.0[12..16].copy_from_slice(&body.to_le_bytes());
        Ok(())
    }

    /// The header's kind for this message.
    pub fn kind(&self) -> u16 {
        match &self.body {
            Body::Request(r) => r.kind(),
            Body::Reply(r) => op::REPLY | reply_op(r),
            Body::Error(_) => op::ERROR,
            Body::Event(Event::Moved { .. }) => op::EVENT_MOVED,
        }
    }

    /// Parses one datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Short(bytes.len()));
        }
        let mut h = Reader { buf: &bytes[..HEADER_LEN], kind: "header" };
        let magic = h.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let version = h.u16("version")?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = h.u16("kind")?;
        let seq = h.u32("seq")?;
        let said = h.u32("length")?;
        let body = &bytes[HEADER_LEN..];
        if usize::try_from(said).ok() != Some(body.len()) {
            return Err(DecodeError::Length { said, got: body.len() });
        }
        let mut r = Reader { buf: body, kind: op::name(kind) };
        let body = match kind {
            op::ERROR => {
                let raw = r.u16("code")?;
                let code = ErrorCode::from_u16(raw).ok_or_else(|| r.bad("code", format!("unknown code {raw}")))?;
                Body::Error(ErrorReply { code, message: r.str("message", MAX_TEXT)? })
            }
            op::EVENT_MOVED => Body::Event(Event::Moved {
                buffer: r.u32("buffer")?,
                attachment: r.u32("attachment")?,
                generation: r.u32("generation")?,
                invalidated: r.u32s("invalidated")?,
            }),
            k if k & op::REPLY != 0 => Body::Reply(decode_reply(&mut r, k & !op::REPLY)?),
            k => Body::Request(decode_request(&mut r, k)?),
        };
        r.end()?;
        Ok(Message { seq, body })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn encode_request(w: &mut Writer, r: &Request) -> Result<(), EncodeError> {
    match r {
        Request::Hello { min_version, max_version, name } => {
            w.u16(*min_version);
            w.u16(*max_version);
            w.str("name", name, MAX_NAME)?;
        }
        Request::Create { desc, name } => {
            match desc {
                Desc::Size(s) => {
                    w.u8(0);
                    w.u64(*s);
                }
                Desc::Image { width, height, fourcc, modifiers } => {
                    w.u8(1);
                    w.u32(*width);
                    w.u32(*height);
                    w.u32(*fourcc);
                    w.count("modifiers", modifiers.len(), MAX_MODIFIERS)?;
                    modifiers.iter().for_each(|m| w.u64(*m));
                }
            }
            w.str("name", name, MAX_NAME)?;
        }
        Request::Attach { token, device, hints } => {
            w.0.extend_from_slice(&token.0);
            w.str("device", device, MAX_NAME)?;
            w.u32(*hints);
        }
        Request::Map { attachment } | Request::Detach { attachment } => w.u32(*attachment),
        Request::BeginAccess { mapping } | Request::EndAccess { mapping } | Request::Unmap { mapping } => {
            w.u32(*mapping)
        }
        Request::Release { buffer } => w.u32(*buffer),
        Request::Status => {}
        Request::Inspect { offset } => w.u64(*offset),
    }
    Ok(())
}

fn decode_request(r: &mut Reader<'_>, kind: u16) -> Result<Request, DecodeError> {
    Ok(match kind {
        op::HELLO => Request::Hello {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            name: r.str("name", MAX_NAME)?,
        },
        op::CREATE => {
            let desc = match r.u8("desc")? {
                0 => Desc::Size(r.u64("size")?),
                1 => {
                    let (width, height, fourcc) = (r.u32("width")?, r.u32("height")?, r.u32("fourcc")?);
                    let n = r.count("modifiers", MAX_MODIFIERS)?;
                    let modifiers = (0..n).map(|_| r.u64("modifiers")).collect::<Result<_, _>>()?;
                    Desc::Image { width, height, fourcc, modifiers }
                }
                t => return Err(r.bad("desc", format!("tag {t} is neither 0 (size) nor 1 (image)"))),
            };
            Request::Create { desc, name: r.str("name", MAX_NAME)? }
        }
        op::ATTACH => Request::Attach {
            token: Token(r.array::<TOKEN_LEN>("token")?),
            device: r.str("device", MAX_NAME)?,
            hints: r.u32("hints")?,
        },
        op::MAP => Request::Map { attachment: r.u32("attachment")? },
        op::BEGIN_ACCESS => Request::BeginAccess { mapping: r.u32("mapping")? },
        op::END_ACCESS => Request::EndAccess { mapping: r.u32("mapping")? },
        op::UNMAP => Request::Unmap { mapping: r.u32("mapping")? },
        op::DETACH => Request::Detach { attachment: r.u32("attachment")? },
        op::RELEASE => Request::Release { buffer: r.u32("buffer")? },
        op::STATUS => Request::Status,
        op::INSPECT => Request::Inspect { offset: r.u64("offset")? },
        k => return Err(DecodeError::Kind(k)),
    })
}

fn reply_op(r: &Reply) -> u16 {
    match r {
        Reply::Hello { .. } => op::HELLO,
        Reply::Created { .. } => op::CREATE,
        Reply::Attached { .. } => op::ATTACH,
        Reply::Mapped { .. } => op::MAP,
        Reply::Done(kind) => *kind,
        Reply::Status { .. } => op::STATUS,
        Reply::Inspect { .. } => op::INSPECT,
    }
}

fn encode_quota(w: &mut Writer, q: &Quota) {
    w.u64(q.bytes);
    w.u32(q.buffers);
    w.u32(q.fds);
}

fn decode_quota(r: &mut Reader<'_>) -> Result<Quota, DecodeError> {
    Ok(Quota { bytes: r.u64("quota.bytes")?, buffers: r.u32("quota.buffers")?, fds: r.u32("quota.fds")? })
}

fn encode_reply(w: &mut Writer, r: &Reply) -> Result<(), EncodeError> {
    match r {
        Reply::Hello { version, max_message, backend, platform, quota } => {
            w.u16(*version);
            w.u32(*max_message);
            w.str("backend", backend, MAX_NAME)?;
            w.str("platform", platform, MAX_NAME)?;
            encode_quota(w, quota);
        }
        Reply::Created { buffer, token, size } => {
            w.u32(*buffer);
            w.0.extend_from_slice(&token.0);
            w.u64(*size);
        }
        Reply::Attached { attachment, buffer, how } => {
            w.u32(*attachment);
            w.u32(*buffer);
            w.u8(*how as u8);
        }
        Reply::Mapped { mapping, generation, layout } => {
            w.u32(*mapping);
            w.u32(*generation);
            w.u64(layout.size);
            w.u32(layout.fourcc);
            w.u64(layout.modifier);
            w.u32(layout.width);
            w.u32(layout.height);
            w.count("planes", layout.planes.len(), MAX_PLANES)?;
            for p in &layout.planes {
                w.u32(p.offset);
                w.u32(p.pitch);
            }
        }
        Reply::Done(_) => {}
        Reply::Status { bytes, fds, quota, buffers } => {
            w.u64(*bytes);
            w.u32(*fds);
            encode_quota(w, quota);
            w.count("buffers", buffers.len(), MAX_LIST)?;
            for b in buffers {
                w.u32(b.buffer);
                w.str("name", &b.name, MAX_NAME)?;
                w.u64(b.size);
                w.u8(u8::from(b.allocated));
                w.u32(b.generation);
                w.u8(u8::from(b.creator));
                w.count("attachments", b.attachments.len(), MAX_LIST)?;
                for a in &b.attachments {
                    w.u32(a.attachment);
                    w.str("device", &a.device, MAX_NAME)?;
                    w.u32s("mappings", &a.mappings)?;
                }
            }
        }
        Reply::Inspect { total, chunk } => {
            w.u64(*total);
            w.count("chunk", chunk.len(), INSPECT_CHUNK)?;
            w.0.extend_from_slice(chunk);
        }
    }
    Ok(())
}

fn decode_reply(r: &mut Reader<'_>, kind: u16) -> Result<Reply, DecodeError> {
    Ok(match kind {
        op::HELLO => Reply::Hello {
            version: r.u16("version")?,
            max_message: r.u32("max_message")?,
            backend: r.str("backend", MAX_NAME)?,
            platform: r.str("platform", MAX_NAME)?,
            quota: decode_quota(r)?,
        },
        op::CREATE => Reply::Created {
            buffer: r.u32("buffer")?,
            token: Token(r.array::<TOKEN_LEN>("token")?),
            size: r.u64("size")?,
        },
        op::ATTACH => {
            let (attachment, buffer) = (r.u32("attachment")?, r.u32("buffer")?);
            let raw = r.u8("how")?;
            let how = AttachHow::from_u8(raw).ok_or_else(|| r.bad("how", format!("unknown value {raw}")))?;
            Reply::Attached { attachment, buffer, how }
        }
        op::MAP => {
            let (mapping, generation) = (r.u32("mapping")?, r.u32("generation")?);
            let (size, fourcc, modifier) = (r.u64("size")?, r.u32("fourcc")?, r.u64("modifier")?);
            let (width, height) = (r.u32("width")?, r.u32("height")?);
            let n = r.count("planes", MAX_PLANES)?;
            let planes = (0..n)
                .map(|_| Ok(Plane { offset: r.u32("offset")?, pitch: r.u32("pitch")? }))
                .collect::<Result<_, _>>()?;
            Reply::Mapped { mapping, generation, layout: Layout { size, fourcc, modifier, width, height, planes } }
        }
        op::BEGIN_ACCESS | op::END_ACCESS | op::UNMAP | op::DETACH | op::RELEASE => Reply::Done(kind),
        op::STATUS => {
            let (bytes, fds, quota) = (r.u64("bytes")?, r.u32("fds")?, decode_quota(r)?);
            let n = r.count("buffers", MAX_LIST)?;
            let mut buffers = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                buffers.push(decode_buffer_status(r)?);
            }
            Reply::Status { bytes, fds, quota, buffers }
        }
        op::INSPECT => {
            let total = r.u64("total")?;
            let n = r.count("chunk", INSPECT_CHUNK)?;
            Reply::Inspect { total, chunk: r.take(n, "chunk")?.to_vec() }
        }
        k => return Err(DecodeError::Kind(k | op::REPLY)),
    })
}

fn decode_buffer_status(r: &mut Reader<'_>) -> Result<BufferStatus, DecodeError> {
    let buffer = r.u32("buffer")?;
    let name = r.str("name", MAX_NAME)?;
    let size = r.u64("size")?;
    let allocated = r.flag("allocated")?;
    let generation = r.u32("generation")?;
    let creator = r.flag("creator")?;
    let n = r.count("attachments", MAX_LIST)?;
    let mut attachments = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        attachments.push(AttachmentStatus {
            attachment: r.u32("attachment")?,
            device: r.str("device", MAX_NAME)?,
            mappings: r.u32s("mappings")?,
        });
    }
    Ok(BufferStatus { buffer, name, size, allocated, generation, creator, attachments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_into_reuses_the_buffer_and_equals_encode() {
        let big = Message { seq: 1, body: Body::Error(ErrorReply::new(ErrorCode::Busy, "x".repeat(300))) };
        let small = Message { seq: 2, body: Body::Request(Request::Map { attachment: 9 }) };
        let mut buf = Vec::new();
        big.encode_into(&mut buf).unwrap();
        assert_eq!(buf, big.encode().unwrap());
        small.encode_into(&mut buf).unwrap();
        assert_eq!(buf, small.encode().unwrap());
        assert_eq!(buf.len(), HEADER_LEN + 4);
        let too_long = Message { seq: 3, body: Body::Request(Request::Status) };
        let bad = Message {
            seq: 3,
            body: Body::Request(Request::Create { desc: Desc::Size(1), name: "n".repeat(MAX_NAME + 1) }),
        };
        assert!(bad.encode_into(&mut buf).is_err());
        assert!(buf.is_empty(), "a failed encode leaves no half message");
        too_long.encode_into(&mut buf).unwrap();
        assert_eq!(Message::decode(&buf).unwrap(), too_long);
    }

    fn roundtrip(body: Body) {
        let m = Message { seq: 42, body };
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn every_kind_round_trips() {
        let token = Token([7; TOKEN_LEN]);
        for r in [
            Request::Hello { min_version: 1, max_version: 1, name: "cam".into() },
            Request::Create { desc: Desc::Size(4096), name: "b".into() },
            Request::Create {
                desc: Desc::Image {
                    width: 64,
                    height: 32,
                    fourcc: u32::from_le_bytes(*b"XR24"),
                    modifiers: vec![0, 5],
                },
                name: "img".into(),
            },
            Request::Attach { token, device: "dpu".into(), hints: 1 },
            Request::Map { attachment: 3 },
            Request::BeginAccess { mapping: 4 },
            Request::EndAccess { mapping: 4 },
            Request::Unmap { mapping: 4 },
            Request::Detach { attachment: 3 },
            Request::Release { buffer: 2 },
            Request::Status,
            Request::Inspect { offset: 9 },
        ] {
            roundtrip(Body::Request(r));
        }
        let quota = Quota { bytes: 1 << 30, buffers: 64, fds: 256 };
        let layout = Layout {
            size: 8192,
            fourcc: 1,
            modifier: 2,
            width: 3,
            height: 4,
            planes: vec![Plane { offset: 0, pitch: 256 }, Plane { offset: 4096, pitch: 256 }],
        };
        for r in [
            Reply::Hello { version: 1, max_message: 65536, backend: "sim".into(), platform: "refsoc".into(), quota },
            Reply::Created { buffer: 1, token, size: 4096 },
            Reply::Attached { attachment: 2, buffer: 1, how: AttachHow::Queued },
            Reply::Mapped { mapping: 5, generation: 1, layout },
            Reply::Done(op::UNMAP),
            Reply::Status {
                bytes: 4096,
                fds: 1,
                quota,
                buffers: vec![BufferStatus {
                    buffer: 1,
                    name: "b".into(),
                    size: 4096,
                    allocated: true,
                    generation: 2,
                    creator: true,
                    attachments: vec![AttachmentStatus { attachment: 2, device: "gpu".into(), mappings: vec![5] }],
                }],
            },
            Reply::Inspect { total: 3, chunk: b"{}\n".to_vec() },
        ] {
            roundtrip(Body::Reply(r));
        }
        roundtrip(Body::Error(ErrorReply::new(ErrorCode::Busy, "in flight")));
        roundtrip(Body::Event(Event::Moved { buffer: 1, attachment: 2, generation: 3, invalidated: vec![4, 5] }));
    }

    #[test]
    fn exact_bytes_of_a_map_request() {
        let bytes = Message { seq: 0x0102_0304, body: Body::Request(Request::Map { attachment: 9 }) }.encode().unwrap();
        assert_eq!(bytes, [b'D', b'M', b'P', b'L', 1, 0, 4, 0, 4, 3, 2, 1, 4, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn malformed_input_is_named() {
        let ok = Message { seq: 1, body: Body::Request(Request::Map { attachment: 9 }) }.encode().unwrap();
        assert_eq!(Message::decode(&ok[..10]), Err(DecodeError::Short(10)));
        let mut bad = ok.clone();
        bad[0] = b'X';
        assert!(matches!(Message::decode(&bad), Err(DecodeError::Magic(_))));
        let mut bad = ok.clone();
        bad.push(0);
        assert_eq!(Message::decode(&bad), Err(DecodeError::Length { said: 4, got: 5 }));
        bad[12] = 5;
        assert_eq!(Message::decode(&bad), Err(DecodeError::Trailing { kind: "map", extra: 1 }));
        let mut bad = ok.clone();
        bad[6] = 0x33;
        assert_eq!(Message::decode(&bad), Err(DecodeError::Kind(0x33)));
        let mut bad = ok;
        bad[4] = 2;
        assert_eq!(Message::decode(&bad), Err(DecodeError::Version(2)));
        let long = Request::Hello { min_version: 1, max_version: 1, name: "x".repeat(MAX_NAME + 1) };
        assert!(matches!(
            Message { seq: 1, body: Body::Request(long) }.encode(),
            Err(EncodeError::TooLong { field: "name", .. })
        ));
    }

    #[test]
    fn tokens_do_not_leak_into_debug_output() {
        let t = Token([0xab; TOKEN_LEN]);
        assert_eq!(format!("{t:?}"), "Token(..)");
        assert_eq!(Token::from_hex(&t.to_hex()).unwrap(), t);
        assert!(Token::from_hex("abc").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics_and_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(m) = Message::decode(&bytes) {
                let again = m.encode().unwrap();
                proptest::prop_assert_eq!(Message::decode(&again).unwrap(), m);
            }
        }
    }
}
