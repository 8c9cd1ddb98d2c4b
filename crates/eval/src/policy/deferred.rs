//! `deferred` and `deferred-no-migrate`: dmaplace's exporter on the simulated machine.
//!
//! Late attachers that do not fit are queued ([`BusyPolicy::Queue`]): the move runs when
//! the last fence signals, and a map that comes before waits for it. Importers re-map
//! after `move_notify`, as dynamic importers do. Without moves, a late attacher whose
//! constraints the backing does not meet is refused at attach.
//!
//! The layout is committed at the first allocation: a late attacher that needs another
//! layout is refused by the exporter under both policies (a `layout` failure), since a
//! move changes where the pages are, never the layout.

use std::collections::HashMap;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::exporter::{
    AllocationTime, AttachmentId, BufferId, BusyPolicy, Event, ExportError, Exporter, ExporterConfig,
    FenceId as XFence, MappingId,
};
use dmaplace_core::{BufferDesc, ConflictKind, Platform, Request, Usage, solve, verify};
use dmaplace_sim::{Machine, SimError};

use super::{Creation, Engine, Fail, Mapped, Step, internal, pitch, sim_failure};
use crate::metrics::{Failure, Meter, Reason};
use crate::trace::{AttId, BufId, FenceId, MapId};

#[derive(Debug)]
struct Buf {
    id: BufferId,
    desc: BufferDesc,
    atts: Vec<AttId>,
}

#[derive(Debug)]
struct Att {
    id: AttachmentId,
    buf: BufId,
    device: String,
    hints: Usage,
}

/// dmaplace's policy, with or without moves.
pub(crate) struct Deferred {
    e: Exporter<Machine>,
    no_migrate: bool,
    bufs: HashMap<BufId, Buf>,
    keys: HashMap<BufferId, u64>,
    next_key: u64,
    atts: HashMap<AttId, Att>,
    maps: HashMap<MapId, MappingId>,
    by_mapping: HashMap<MappingId, MapId>,
    fences: HashMap<FenceId, XFence>,
    waiting: Vec<(MapId, AttId)>,
    settled: Vec<(MapId, Result<(), Failure>)>,
}

/// Whether a conflict is about the length of one contiguous run.
fn contiguous_conflict(kind: &ConflictKind) -> bool {
    matches!(
        kind,
        ConflictKind::NoRoom { contiguous: true, .. }
            | ConflictKind::NoContiguousPool { .. }
            | ConflictKind::SegmentLimit { .. }
    )
}

fn classify(err: ExportError) -> Fail {
    match err {
        ExportError::Conflict { conflict, .. } => {
            Fail::Policy(Failure::new(Reason::Conflict, contiguous_conflict(&conflict.kind), conflict.message))
        }
        e @ ExportError::LayoutConflict { .. } => Fail::Policy(Failure::new(Reason::Layout, false, e.to_string())),
        ExportError::Busy { reason, .. } => Fail::Policy(Failure::new(Reason::Busy, false, reason)),
        ExportError::Backend(b) => match b.downcast_ref::<SimError>() {
            Some(e) => sim_failure(e),
            None => Fail::Internal(b.to_string()),
        },
        other => Fail::Internal(other.to_string()),
    }
}

impl Deferred {
    pub(crate) fn new(platform: Platform, machine: Machine, no_migrate: bool) -> Deferred {
        let config = ExporterConfig { busy: BusyPolicy::Queue, allocation: AllocationTime::FirstMap };
        Deferred {
            e: Exporter::new(platform, machine, config),
            no_migrate,
            bufs: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
            atts: HashMap::new(),
            maps: HashMap::new(),
            by_mapping: HashMap::new(),
            fences: HashMap::new(),
            waiting: Vec::new(),
            settled: Vec::new(),
        }
    }

    fn key(&self, b: BufferId) -> Step<u64> {
        self.keys.get(&b).copied().ok_or_else(|| Fail::Internal(format!("exporter event for unknown {b}")))
    }

    fn contiguous(&self, b: BufferId) -> bool {
        self.e.plan(b).ok().flatten().is_some_and(|p| p.contiguous())
    }

    /// Feeds the exporter's events to the meter; re-maps importers told to by `move_notify`.
    fn drain(&mut self, meter: &mut Meter) -> Step {
        loop {
            let events = self.e.take_events();
            if events.is_empty() {
                return Ok(());
            }
            for ev in events {
                match ev {
                    Event::Allocated { buffer, contiguous, segments, .. } => {
                        meter.allocated(self.key(buffer)?, segments, contiguous);
                    }
                    Event::Migrated { buffer, to, copied, .. } => {
                        let contiguous = self.contiguous(buffer);
                        meter.moved(self.key(buffer)?, to, contiguous, copied.bytes());
                    }
                    Event::Released { buffer } => {
                        meter.freed(self.key(buffer)?);
                        self.keys.remove(&buffer);
                    }
                    Event::MoveFailed { buffer, reason } => {
                        meter.failed(&Failure::new(Reason::MoveFailed, self.contiguous(buffer), reason));
                    }
                    Event::MoveNotify(n) => {
                        for old in n.invalidated {
                            if let Some(map) = self.by_mapping.remove(&old) {
                                self.remap(meter, map, n.buffer, n.attachment, old)?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The importer of `map` re-maps after a move; a failure kills the mapping.
    fn remap(&mut self, meter: &mut Meter, map: MapId, buffer: BufferId, att: AttachmentId, old: MappingId) -> Step {
        self.e.unmap(old).map_err(|e| Fail::Internal(format!("unmapping stale {old}: {e}")))?;
        self.maps.remove(&map);
        match self.e.map(att) {
            Ok((new, _)) => {
                meter.count(|m| m.remaps += 1);
                self.register(meter, map, buffer, new);
            }
            Err(e) => match classify(e) {
                Fail::Policy(f) => self.settled.push((map, Err(Failure { reason: Reason::Remap, ..f }))),
                internal => return Err(internal),
            },
        }
        Ok(())
    }

    fn register(&mut self, meter: &mut Meter, map: MapId, buffer: BufferId, id: MappingId) {
        self.maps.insert(map, id);
        self.by_mapping.insert(id, map);
        let platform = self.e.platform();
        let layout = self.e.plan(buffer).ok().flatten().and_then(|p| p.layout.as_ref()).map(|l| &l.layout);
        if let Ok(Some(m)) = self.e.backend_mapping(id) {
            meter.mapped(platform, self.e.backend(), m, pitch(layout));
        }
    }

    /// Maps that waited for a move try again (after a fence, CPU end, unmap or detach).
    fn retry_waiting(&mut self, meter: &mut Meter) -> Step {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (map, att) in waiting {
            let (id, buffer) = self.ids(att)?;
            match self.e.map(id) {
                Ok((new, _)) => {
                    self.register(meter, map, buffer, new);
                    self.settled.push((map, Ok(())));
                }
                Err(ExportError::MovePending { .. }) => self.waiting.push((map, att)),
                Err(e) => match classify(e) {
                    Fail::Policy(f) => self.settled.push((map, Err(f))),
                    internal => return Err(internal),
                },
            }
        }
        self.drain(meter)
    }

    /// The exporter's ids of an attachment and its buffer.
    fn ids(&self, att: AttId) -> Step<(AttachmentId, BufferId)> {
        let a = self.atts.get(&att).ok_or_else(|| internal("an attachment"))?;
        let b = self.bufs.get(&a.buf).ok_or_else(|| internal("a buffer"))?;
        Ok((a.id, b.id))
    }

    /// Without moves: whether the current backing fails the newcomer (`Some(refusal)`).
    /// `None` too when the exporter refuses it whatever the backing (no placement for the
    /// devices together, or a layout the committed one does not meet): the attach then
    /// fails with the exporter's own reason, as under `deferred`.
    fn misfit(&self, b: &Buf, device: &str, hints: Usage) -> Step<Option<Failure>> {
        let Some(backing) = self.e.backing(b.id).map_err(|e| Fail::Internal(e.to_string()))? else {
            return Ok(None);
        };
        if self.e.layout_misfit(b.id, device, hints).map_err(|e| Fail::Internal(e.to_string()))?.is_some() {
            return Ok(None);
        }
        let platform = self.e.platform();
        let mut devices = Vec::with_capacity(b.atts.len() + 1);
        for a in &b.atts {
            let a = self.atts.get(a).ok_or_else(|| internal("misfit"))?;
            devices.push((platform.require_device(&a.device).map_err(|e| Fail::Internal(e.to_string()))?, a.hints));
        }
        devices.push((platform.require_device(device).map_err(|e| Fail::Internal(e.to_string()))?, hints));
        let requests: Vec<Request<'_>> = devices.iter().map(|(d, h)| Request { device: d, hints: *h }).collect();
        // An unsolvable set is the exporter's to refuse, with its conflict.
        let Ok(plan) = solve(platform, &b.desc, &requests) else { return Ok(None) };
        let described = self.e.backend().backing(backing).map_err(|e| Fail::Internal(e.to_string()))?;
        Ok(verify(&plan, &plan.devices, &described).err().map(|v| {
            let contiguous = plan.contiguous() && described.runs().len() > 1;
            Failure::new(Reason::NoMove, contiguous, format!("`{device}` does not fit and buffers never move: {v}"))
        }))
    }
}

impl Engine for Deferred {
    fn create(&mut self, _meter: &mut Meter, c: &Creation<'_>) -> Step {
        let id = self.e.export(c.desc.clone(), c.name).map_err(classify)?;
        self.keys.insert(id, self.next_key);
        self.next_key += 1;
        self.e.take_events();
        self.bufs.insert(c.buf, Buf { id, desc: c.desc.clone(), atts: Vec::new() });
        Ok(())
    }

    fn attach(&mut self, meter: &mut Meter, att: AttId, buf: BufId, device: &str, hints: Usage) -> Step {
        let b = self.bufs.get(&buf).ok_or_else(|| internal("attach"))?;
        if self.no_migrate
            && let Some(refusal) = self.misfit(b, device, hints)?
        {
            return Err(refusal.into());
        }
        let result = self.e.attach(b.id, device, hints);
        let id = match result {
            Ok(id) => id,
            Err(e) => {
                self.drain(meter)?;
                return Err(classify(e));
            }
        };
        self.atts.insert(att, Att { id, buf, device: device.to_owned(), hints });
        self.bufs.get_mut(&buf).expect("checked").atts.push(att);
        self.drain(meter)
    }

    fn map(&mut self, meter: &mut Meter, map: MapId, att: AttId) -> Step<Mapped> {
        let (id, buffer) = self.ids(att)?;
        match self.e.map(id) {
            Ok((new, _)) => {
                self.register(meter, map, buffer, new);
                self.drain(meter)?;
                Ok(Mapped::Live)
            }
            Err(ExportError::MovePending { .. }) => {
                meter.count(|m| m.waits += 1);
                self.waiting.push((map, att));
                Ok(Mapped::Waiting)
            }
            Err(e) => {
                self.drain(meter)?;
                Err(classify(e))
            }
        }
    }

    fn fence(&mut self, _meter: &mut Meter, fence: FenceId, map: MapId) -> Step {
        let id = *self.maps.get(&map).ok_or_else(|| internal("fence"))?;
        let f = self.e.fence(id).map_err(classify)?;
        self.fences.insert(fence, f);
        Ok(())
    }

    fn signal(&mut self, meter: &mut Meter, fence: FenceId) -> Step {
        let f = self.fences.remove(&fence).ok_or_else(|| internal("signal"))?;
        self.e.signal(f).map_err(classify)?;
        self.drain(meter)?;
        self.retry_waiting(meter)
    }

    fn cpu_begin(&mut self, meter: &mut Meter, buf: BufId, access: CpuAccess) -> Step {
        let id = self.bufs.get(&buf).ok_or_else(|| internal("cpu-begin"))?.id;
        let r = self.e.begin_cpu_access(id, access);
        self.drain(meter)?;
        r.map(|_| ()).map_err(classify)
    }

    fn cpu_end(&mut self, meter: &mut Meter, buf: BufId) -> Step {
        let id = self.bufs.get(&buf).ok_or_else(|| internal("cpu-end"))?.id;
        self.e.end_cpu_access(id).map_err(classify)?;
        self.drain(meter)?;
        self.retry_waiting(meter)
    }

    fn unmap(&mut self, meter: &mut Meter, map: MapId) -> Step {
        let id = self.maps.remove(&map).ok_or_else(|| internal("unmap"))?;
        self.by_mapping.remove(&id);
        self.e.unmap(id).map_err(classify)?;
        self.drain(meter)?;
        self.retry_waiting(meter)
    }

    fn detach(&mut self, meter: &mut Meter, att: AttId) -> Step {
        let a = self.atts.remove(&att).ok_or_else(|| internal("detach"))?;
        if let Some(b) = self.bufs.get_mut(&a.buf) {
            b.atts.retain(|x| *x != att);
        }
        self.e.detach(a.id).map_err(classify)?;
        self.drain(meter)?;
        self.retry_waiting(meter)
    }

    fn release(&mut self, meter: &mut Meter, buf: BufId) -> Step {
        let b = self.bufs.remove(&buf).ok_or_else(|| internal("release"))?;
        self.e.release(b.id).map_err(classify)?;
        self.drain(meter)
    }

    fn cancel_wait(&mut self, map: MapId) {
        self.waiting.retain(|(m, _)| *m != map);
    }

    fn settled(&mut self) -> Vec<(MapId, Result<(), Failure>)> {
        std::mem::take(&mut self.settled)
    }

    fn machine(&self) -> &Machine {
        self.e.backend()
    }

    fn machine_mut(&mut self) -> &mut Machine {
        self.e.backend_mut()
    }
}
