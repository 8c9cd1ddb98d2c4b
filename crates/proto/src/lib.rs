//! dmaplace-proto: the messages `dmaplaced` and its clients exchange over a Unix
//! `SOCK_SEQPACKET` socket, as specified in `docs/PROTOCOL.md`.
//!
//! One datagram is one message: a 16-byte header (magic, version, kind, sequence
//! number, body length) and a body whose layout the kind fixes. Integers are little
//! endian; strings are a `u16` byte count and UTF-8; lists are a count and their items.
//! The decoder is strict (every length checked, no trailing bytes, no unknown kinds,
//! flags or tags) and never panics: it is fuzzed (`fuzz/fuzz_targets/proto_decode.rs`).
//!
//! ```
//! use dmaplace_proto::{Body, Message, Request};
//! let m = Message { seq: 7, body: Body::Request(Request::Status) };
//! let bytes = m.encode().unwrap();
//! assert_eq!(Message::decode(&bytes).unwrap(), m);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod types;

pub use codec::{DecodeError, EncodeError};
pub use types::*;

/// The four magic bytes every message starts with.
pub const MAGIC: [u8; 4] = *b"DMPL";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 16;
/// The largest datagram either side sends or accepts, header included.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest device or buffer name, in bytes.
pub const MAX_NAME: usize = 64;
/// Share tokens are this many random bytes (128 bits).
pub const TOKEN_LEN: usize = 16;
/// The most planes a layout has (DRM's limit).
pub const MAX_PLANES: usize = 4;
/// The most modifiers a create request lists.
pub const MAX_MODIFIERS: usize = 64;
/// The most bytes of the inspect JSON one reply carries.
pub const INSPECT_CHUNK: usize = 60 * 1024;
