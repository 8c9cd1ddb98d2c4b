//! `dmaplaced --record FILE`: the session as a trace (`docs/TRACE.md`), written event
//! by event with `dmaplace_eval`'s [`TraceWriter`], so that `dmaplace sim --trace FILE`
//! replays what real processes did under every placement policy.
//!
//! Clients' handles are per connection; the trace's are global: each buffer, attachment,
//! mapping and access gets its own trace handle (`b1`, `a1`, `m1`, `f1`) when the daemon
//! accepts it. What is written:
//!
//! | request (accepted) | trace |
//! |---|---|
//! | `create` | `create` (size or image, the name) |
//! | `attach` | `attach` with the device and hints |
//! | `attach` refused with `conflict` | `attach` then `detach`: the attempt, which a replay refuses too |
//! | `map` | `map` |
//! | `begin_access` / `end_access` | `fence` / `signal` |
//! | `unmap`, `detach` | the same |
//! | `release`, a disconnect | `signal`, `unmap`, `detach` of what that client held on the buffer; `release` when it was the last holder |
//!
//! Each event is preceded by `advance` for the wall-clock time since the previous one.
//! Not written: requests the daemon refused other than conflicts (a map refused as
//! `move_pending`, a stale mapping's `begin_access`, ...); `busy` refusals (a replay's
//! `deferred` policy queues such an attach rather than refusing it, so the attempt would
//! replay as a queued move; record with `--busy queue` to compare them).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use dmaplace_core::Usage;
use dmaplace_eval::trace::{AttId, BufId, FenceId, Header, MapId, Op, TraceWriter};
use dmaplace_proto::{ErrorCode, Event, Reply, Request, Token};

use crate::engine::core_desc;
use crate::service::{ClientId, Outcome, Peer, Recorder};

#[derive(Default)]
struct Held {
    /// Buffer handle -> trace buffer.
    buffers: BTreeMap<u32, BufId>,
    /// Attachment handle -> (trace attachment, buffer handle).
    attachments: BTreeMap<u32, (AttId, u32)>,
    /// Mapping handle -> (trace mapping, attachment handle, access in flight).
    mappings: BTreeMap<u32, (MapId, u32, Option<FenceId>)>,
}

/// Writes a session as a trace.
pub struct TraceRecorder<W: Write + Send> {
    w: TraceWriter<W>,
    t0: Instant,
    next: u32,
    tokens: HashMap<Token, BufId>,
    holders: HashMap<BufId, u32>,
    clients: HashMap<ClientId, Held>,
    /// The first failure; after it nothing more is written (a trace with a hole would
    /// replay something that did not happen).
    failed: Option<String>,
}

impl<W: Write + Send> std::fmt::Debug for TraceRecorder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceRecorder").field("clients", &self.clients.len()).field("failed", &self.failed).finish()
    }
}

impl TraceRecorder<BufWriter<File>> {
    /// Creates `path` (replacing it) and writes the header.
    pub fn create(path: &Path, header: &Header) -> std::io::Result<TraceRecorder<BufWriter<File>>> {
        let file = File::create(path)?;
        TraceRecorder::new(BufWriter::new(file), header)
    }
}

impl<W: Write + Send> TraceRecorder<W> {
    /// Writes the header to `out`; events follow as the daemon handles them.
    pub fn new(out: W, header: &Header) -> std::io::Result<TraceRecorder<W>> {
        Ok(TraceRecorder {
            w: TraceWriter::new(out, header)?,
            t0: Instant::now(),
            next: 0,
            tokens: HashMap::new(),
            holders: HashMap::new(),
            clients: HashMap::new(),
            failed: None,
        })
    }

    /// The first write failure, if any (nothing was written after it).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn id(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    fn write(&mut self, op: &Op) {
        if self.failed.is_some() {
            return;
        }
        let now = u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let r = self.w.at(now).and_then(|()| self.w.op(op)).and_then(|()| self.w.flush().map_err(Into::into));
        if let Err(e) = r {
            tracing::error!(error = %e, "--record: the trace stops here");
            self.failed = Some(e.to_string());
        }
    }

    fn created(&mut self, client: ClientId, request: &Request, reply: &Reply) {
        let (Request::Create { desc, name }, Reply::Created { buffer, token, .. }) = (request, reply) else { return };
        let Ok(desc) = core_desc(desc) else { return };
        let buf = BufId(self.id());
        self.write(&Op::Create { buf, desc, usage: Usage::empty(), name: name.clone() });
        self.tokens.insert(*token, buf);
        self.holders.insert(buf, 1);
        self.clients.entry(client).or_default().buffers.insert(*buffer, buf);
    }

    fn attach(&mut self, client: ClientId, request: &Request, reply: &Result<Reply, dmaplace_proto::ErrorReply>) {
        let Request::Attach { token, device, hints } = request else { return };
        let Some(&buf) = self.tokens.get(token) else { return };
        let hints = Usage::from_bits_truncate(*hints);
        let att = AttId(self.id());
        match reply {
            Ok(Reply::Attached { attachment, buffer, .. }) => {
                self.write(&Op::Attach { att, buf, device: device.clone(), hints });
                let held = self.clients.entry(client).or_default();
                if held.buffers.insert(*buffer, buf).is_none() {
                    *self.holders.entry(buf).or_default() += 1;
                }
                held.attachments.insert(*attachment, (att, *buffer));
            }
            Err(e) if e.code == ErrorCode::Conflict => {
                self.write(&Op::Attach { att, buf, device: device.clone(), hints });
                self.write(&Op::Detach { att });
            }
            _ => {}
        }
    }

    fn map(&mut self, client: ClientId, request: &Request, reply: &Reply) {
        let (Request::Map { attachment }, Reply::Mapped { mapping, .. }) = (request, reply) else { return };
        let Some(&(att, _)) = self.clients.get(&client).and_then(|h| h.attachments.get(attachment)) else { return };
        let map = MapId(self.id());
        self.write(&Op::Map { map, att });
        if let Some(h) = self.clients.get_mut(&client) {
            h.mappings.insert(*mapping, (map, *attachment, None));
        }
    }

    fn access(&mut self, client: ClientId, mapping: u32, begin: bool) {
        let Some(&(map, _, fence)) = self.clients.get(&client).and_then(|h| h.mappings.get(&mapping)) else { return };
        let fence = match (begin, fence) {
            (true, None) => {
                let f = FenceId(self.id());
                self.write(&Op::Fence { fence: f, map });
                Some(f)
            }
            (false, Some(f)) => {
                self.write(&Op::Signal { fence: f });
                None
            }
            _ => return,
        };
        if let Some(m) = self.clients.get_mut(&client).and_then(|h| h.mappings.get_mut(&mapping)) {
            m.2 = fence;
        }
    }

    fn unmap(&mut self, client: ClientId, mapping: u32) {
        let Some((map, _, fence)) = self.clients.get_mut(&client).and_then(|h| h.mappings.remove(&mapping)) else {
            return;
        };
        if let Some(f) = fence {
            self.write(&Op::Signal { fence: f });
        }
        self.write(&Op::Unmap { map });
    }

    fn detach(&mut self, client: ClientId, attachment: u32) {
        let Some((att, _)) = self.clients.get_mut(&client).and_then(|h| h.attachments.remove(&attachment)) else {
            return;
        };
        self.write(&Op::Detach { att });
    }

    /// What the daemon's `let_go` does: this client's mappings and attachments on the
    /// buffer go, then the hold; the buffer is released with its last holder.
    fn let_go(&mut self, client: ClientId, buffer: u32) {
        let Some(held) = self.clients.get(&client) else { return };
        let Some(&buf) = held.buffers.get(&buffer) else { return };
        let atts: Vec<u32> = held.attachments.iter().filter(|(_, (_, b))| *b == buffer).map(|(h, _)| *h).collect();
        let maps: Vec<u32> =
            held.mappings.iter().filter(|(_, (_, a, _))| atts.contains(a)).map(|(h, _)| *h).rev().collect();
        for m in maps {
            self.unmap(client, m);
        }
        for a in atts.into_iter().rev() {
            self.detach(client, a);
        }
        if let Some(h) = self.clients.get_mut(&client) {
            h.buffers.remove(&buffer);
        }
        let left = self.holders.get_mut(&buf).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if left == 0 {
            self.holders.remove(&buf);
            self.tokens.retain(|_, b| *b != buf);
            self.write(&Op::Release { buf });
        }
    }
}

impl<W: Write + Send> Recorder for TraceRecorder<W> {
    fn request(&mut self, client: ClientId, _peer: Peer, _seq: u32, request: &Request, outcome: &Outcome) {
        if let Request::Attach { .. } = request {
            return self.attach(client, request, &outcome.reply);
        }
        let Ok(reply) = &outcome.reply else { return };
        match request {
            Request::Create { .. } => self.created(client, request, reply),
            Request::Map { .. } => self.map(client, request, reply),
            Request::BeginAccess { mapping } => self.access(client, *mapping, true),
            Request::EndAccess { mapping } => self.access(client, *mapping, false),
            Request::Unmap { mapping } => self.unmap(client, *mapping),
            Request::Detach { attachment } => self.detach(client, *attachment),
            Request::Release { buffer } => self.let_go(client, *buffer),
            Request::Hello { .. } | Request::Attach { .. } | Request::Status | Request::Inspect { .. } => {}
        }
    }

    fn disconnect(&mut self, client: ClientId, _events: &[(ClientId, Event)]) {
        let buffers: Vec<u32> =
            self.clients.get(&client).map(|h| h.buffers.keys().rev().copied().collect()).unwrap_or_default();
        for b in buffers {
            self.let_go(client, b);
        }
        self.clients.remove(&client);
    }
}
