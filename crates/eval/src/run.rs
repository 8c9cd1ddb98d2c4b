//! Replaying a trace under a policy on a fresh simulated machine.
//!
//! The runner owns what is common to every policy: simulated time, the other users of
//! memory, sampling, and the fate of handles. An event whose handle failed earlier (an
//! attach refused, an import that failed) is skipped and counted, as the application
//! would have had nothing to call it on. At the end everything still live is torn down
//! and the machine's invariants are checked, so a run never ends on a corrupt state.

use std::collections::{BTreeSet, HashMap, HashSet};

use dmaplace_core::{Platform, Usage};
use dmaplace_sim::{Machine, SimConfig};

use crate::metrics::{Failure, Meter, RunMetrics};
use crate::policy::{Creation, Deferred, Eager, Engine, Fail, Mapped, Policy};
use crate::trace::{AttId, BufId, FenceId, MapId, Op, Trace};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Seed of the machine's background load (the trace's `seed` line when `None`, else 0).
    pub seed: Option<u64>,
    /// Samples over the run's simulated time.
    pub samples: u64,
    /// Whether to record the memory-map heatmap.
    pub heatmap: bool,
    /// Whether to check the machine's invariants after the run ([`Machine::check`]: every
    /// frame owned once, none lost). On by default; the speed benchmark turns it off, as
    /// it costs time in proportion to memory, not to events.
    pub check: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { seed: None, samples: 200, heatmap: false, check: true }
    }
}

/// Why a run could not be done (as opposed to a policy failing events, which is measured).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The trace uses a device the platform does not have.
    #[error("trace event {event} attaches `{device}`, which platform `{platform}` does not have; its devices: {known}")]
    UnknownDevice {
        /// 1-based event number.
        event: usize,
        /// The device.
        device: String,
        /// The platform.
        platform: String,
        /// Its devices.
        known: String,
    },
    /// The simulated machine cannot be built for the platform.
    #[error("simulated machine for `{platform}`: {reason}")]
    Machine {
        /// The platform.
        platform: String,
        /// Why.
        reason: String,
    },
    /// An exporter or machine invariant broke: a bug, reported with the event.
    #[error("{policy}: event {event} ({verb}): {reason}")]
    Internal {
        /// The policy.
        policy: Policy,
        /// 1-based event number (0: teardown).
        event: usize,
        /// The event's verb.
        verb: &'static str,
        /// What broke.
        reason: String,
    },
}

/// What the handles of the trace are, as far as the runner knows.
#[derive(Default)]
struct Handles {
    bufs: BTreeSet<BufId>,
    atts: BTreeSet<(BufId, AttId)>,
    maps: BTreeSet<(AttId, MapId)>,
    fences: BTreeSet<FenceId>,
    cpu: BTreeSet<BufId>,
    /// Failed handles: events that need them are skipped.
    dead_bufs: HashSet<BufId>,
    dead_atts: HashSet<AttId>,
    dead_maps: HashSet<MapId>,
    dead_fences: HashSet<FenceId>,
    dead_cpu: HashSet<BufId>,
    waiting: HashSet<MapId>,
    att_buf: HashMap<AttId, BufId>,
    map_att: HashMap<MapId, AttId>,
}

/// Every device each buffer instance will have attached, by the index of its `create`.
fn attachers(trace: &Trace) -> HashMap<usize, Vec<(String, Usage)>> {
    let mut live: HashMap<BufId, usize> = HashMap::new();
    let mut out: HashMap<usize, Vec<(String, Usage)>> = HashMap::new();
    for (i, op) in trace.ops.iter().enumerate() {
        match op {
            Op::Create { buf, .. } => {
                live.insert(*buf, i);
            }
            Op::Attach { buf, device, hints, .. } => {
                if let Some(&at) = live.get(buf) {
                    let list = out.entry(at).or_default();
                    if !list.iter().any(|(d, h)| d == device && h == hints) {
                        list.push((device.clone(), *hints));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn check_devices(trace: &Trace, platform: &Platform) -> Result<(), RunError> {
    for (i, op) in trace.ops.iter().enumerate() {
        if let Op::Attach { device, .. } = op
            && platform.device(device).is_none()
        {
            let known: Vec<&str> = platform.devices.iter().map(|d| d.name.as_str()).collect();
            return Err(RunError::UnknownDevice {
                event: i + 1,
                device: device.clone(),
                platform: platform.name.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// The machine a trace runs on: the platform, the seed, the trace's background load.
pub fn machine_for(trace: &Trace, platform: &Platform, seed: u64) -> Result<Machine, RunError> {
    let background = trace.header.background.unwrap_or_default();
    Machine::new(platform, SimConfig::seeded(seed).with_background(background))
        .map_err(|e| RunError::Machine { platform: platform.name.clone(), reason: e.to_string() })
}

/// The seed a run uses: the options', else the trace's, else 0.
pub fn seed_of(trace: &Trace, opts: &RunOptions) -> u64 {
    opts.seed.or(trace.header.seed).unwrap_or(0)
}

/// Replays `trace` on `platform` under `policy`, on a fresh machine ([`machine_for`]).
/// `progress` is told how many events are done, every few thousand.
pub fn run(
    trace: &Trace,
    platform: &Platform,
    policy: Policy,
    opts: &RunOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<RunMetrics, RunError> {
    let machine = machine_for(trace, platform, seed_of(trace, opts))?;
    replay(trace, platform, policy, machine, opts, progress)
}

/// Replays `trace` on `machine` (built for `platform`, e.g. by [`machine_for`]) under
/// `policy`: [`run`] without building the machine (what the speed benchmark times).
pub fn replay(
    trace: &Trace,
    platform: &Platform,
    policy: Policy,
    machine: Machine,
    opts: &RunOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<RunMetrics, RunError> {
    check_devices(trace, platform)?;
    let mut meter = Meter::new(platform, policy, trace.duration_ns(), opts.samples, opts.heatmap);
    meter.set_iotlb_entries(machine.config().iotlb_entries);
    let mut engine: Box<dyn Engine> = match policy {
        Policy::Deferred => Box::new(Deferred::new(platform.clone(), machine, false)),
        Policy::DeferredNoMigrate => Box::new(Deferred::new(platform.clone(), machine, true)),
        _ => Box::new(Eager::new(platform.clone(), machine, policy)),
    };
    let mut r = Replay { engine: engine.as_mut(), meter, h: Handles::default(), attachers: attachers(trace), now: 0 };
    r.meter.sample(0, r.engine.machine(), true);
    for (i, op) in trace.ops.iter().enumerate() {
        r.step(i, op).map_err(|reason| RunError::Internal { policy, event: i + 1, verb: op.verb(), reason })?;
        if i % 4096 == 4095 {
            progress(i as u64 + 1);
        }
    }
    progress(trace.ops.len() as u64);
    r.meter.m.events = trace.ops.len() as u64;
    r.teardown().map_err(|reason| RunError::Internal { policy, event: 0, verb: "teardown", reason })?;
    let now = r.now;
    let Replay { engine: _, meter, .. } = r;
    if opts.check {
        let checked = engine.machine().check();
        checked.map_err(|v| RunError::Internal { policy, event: 0, verb: "check", reason: v.to_string() })?;
    }
    Ok(meter.finish(engine.machine(), now))
}

struct Replay<'a> {
    engine: &'a mut dyn Engine,
    meter: Meter,
    h: Handles,
    attachers: HashMap<usize, Vec<(String, Usage)>>,
    now: u64,
}

impl Replay<'_> {
    /// A failure is counted; a bug stops the run.
    fn outcome<T>(&mut self, r: Result<T, Fail>) -> Result<Option<T>, String> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(Fail::Policy(f)) => {
                self.meter.failed(&f);
                Ok(None)
            }
            Err(Fail::Internal(e)) => Err(e),
        }
    }

    fn skip(&mut self) {
        if self.meter.counting {
            self.meter.m.skipped += 1;
        }
    }

    /// Calls the engine unless `skip` (a handle the event needs has failed: skipped and
    /// counted). `None` when skipped or failed.
    fn attempt<T>(
        &mut self,
        skip: bool,
        call: impl FnOnce(&mut dyn Engine, &mut Meter) -> Result<T, Fail>,
    ) -> Result<Option<T>, String> {
        if skip {
            self.skip();
            return Ok(None);
        }
        let r = call(&mut *self.engine, &mut self.meter);
        self.outcome(r)
    }

    fn step(&mut self, index: usize, op: &Op) -> Result<(), String> {
        match op {
            Op::Create { buf, desc, usage, name } => {
                let attachers = self.attachers.get(&index).map_or(&[][..], Vec::as_slice);
                let c = Creation { buf: *buf, desc, usage: *usage, name, attachers };
                let r = self.engine.create(&mut self.meter, &c);
                let ok = self.outcome(r)?.is_some();
                if ok {
                    self.h.bufs.insert(*buf)
                } else {
                    self.h.dead_bufs.insert(*buf)
                };
            }
            Op::Attach { att, buf, device, hints } => {
                self.h.att_buf.insert(*att, *buf);
                let dead = self.h.dead_bufs.contains(buf);
                let ok = self.attempt(dead, |e, m| e.attach(m, *att, *buf, device, *hints))?.is_some();
                if ok {
                    self.h.atts.insert((*buf, *att))
                } else {
                    self.h.dead_atts.insert(*att)
                };
            }
            Op::Map { map, att } => {
                self.h.map_att.insert(*map, *att);
                let dead = self.h.dead_atts.contains(att);
                match self.attempt(dead, |e, m| e.map(m, *map, *att))? {
                    Some(how) => {
                        self.h.maps.insert((*att, *map));
                        if how == Mapped::Waiting {
                            self.h.waiting.insert(*map);
                        }
                    }
                    None => {
                        self.h.dead_maps.insert(*map);
                    }
                }
            }
            Op::Fence { fence, map } => {
                // A mapping that waits for a move has nothing to fence yet.
                let dead = self.h.dead_maps.contains(map) || self.h.waiting.contains(map);
                let ok = self.attempt(dead, |e, m| e.fence(m, *fence, *map))?.is_some();
                if ok {
                    self.h.fences.insert(*fence)
                } else {
                    self.h.dead_fences.insert(*fence)
                };
            }
            Op::Signal { fence } => {
                let dead = self.h.dead_fences.remove(fence);
                self.h.fences.remove(fence);
                self.attempt(dead, |e, m| e.signal(m, *fence))?;
            }
            Op::CpuBegin { buf, access } => {
                let dead = self.h.dead_bufs.contains(buf);
                let ok = self.attempt(dead, |e, m| e.cpu_begin(m, *buf, *access))?.is_some();
                if ok {
                    self.h.cpu.insert(*buf)
                } else {
                    self.h.dead_cpu.insert(*buf)
                };
            }
            Op::CpuEnd { buf } => {
                let dead = self.h.dead_cpu.remove(buf);
                self.h.cpu.remove(buf);
                self.attempt(dead, |e, m| e.cpu_end(m, *buf))?;
            }
            Op::Unmap { map } => self.unmap(*map)?,
            Op::Detach { att } => {
                let buf = self.h.att_buf.remove(att).unwrap_or(BufId(0));
                let dead = self.h.dead_atts.remove(att);
                self.h.atts.remove(&(buf, *att));
                self.attempt(dead, |e, m| e.detach(m, *att))?;
            }
            Op::Release { buf } => {
                let dead = self.h.dead_bufs.remove(buf);
                self.h.bufs.remove(buf);
                self.attempt(dead, |e, m| e.release(m, *buf))?;
            }
            Op::Advance { ns } => {
                self.now = self.now.saturating_add(*ns);
                self.meter.sample(self.now, self.engine.machine(), false);
            }
            Op::OtherFill { fill } => {
                self.engine.machine_mut().set_background_fill(*fill);
            }
            Op::OtherChurn { steps } => {
                let events = self.engine.machine_mut().background_step(*steps);
                self.meter.count(|m| {
                    m.background_steps += u64::from(*steps);
                    m.background_events += events;
                });
            }
        }
        self.settle();
        Ok(())
    }

    /// An unmap: of a failed mapping, skipped; of one still waiting for a move, the wait
    /// is given up.
    fn unmap(&mut self, map: MapId) -> Result<(), String> {
        let att = self.h.map_att.remove(&map).unwrap_or(AttId(0));
        let dead = self.h.dead_maps.remove(&map);
        self.h.maps.remove(&(att, map));
        if !dead && self.h.waiting.remove(&map) {
            self.engine.cancel_wait(map);
            return Ok(());
        }
        self.attempt(dead, |e, m| e.unmap(m, map))?;
        Ok(())
    }

    /// Mappings whose wait ended: live, or failed (then dead, and counted).
    fn settle(&mut self) {
        for (map, result) in self.engine.settled() {
            self.h.waiting.remove(&map);
            if let Err(f) = result {
                self.fail_map(map, &f);
            }
        }
    }

    fn fail_map(&mut self, map: MapId, f: &Failure) {
        self.meter.failed(f);
        self.h.dead_maps.insert(map);
        if let Some(att) = self.h.map_att.get(&map) {
            self.h.maps.remove(&(*att, map));
        }
    }

    /// Ends what the trace left live, in dependency order, without counting it.
    fn teardown(&mut self) -> Result<(), String> {
        self.meter.sample(self.now, self.engine.machine(), true);
        self.meter.counting = false;
        let mut ops = Vec::new();
        ops.extend(self.h.fences.iter().map(|f| Op::Signal { fence: *f }));
        ops.extend(self.h.cpu.iter().map(|b| Op::CpuEnd { buf: *b }));
        ops.extend(self.h.maps.iter().map(|(_, m)| Op::Unmap { map: *m }));
        ops.extend(self.h.atts.iter().map(|(_, a)| Op::Detach { att: *a }));
        ops.extend(self.h.bufs.iter().map(|b| Op::Release { buf: *b }));
        for op in &ops {
            self.step(usize::MAX, op)?;
        }
        Ok(())
    }
}
