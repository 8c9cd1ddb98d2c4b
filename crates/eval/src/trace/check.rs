//! Handle lifecycles: what makes a sequence of events well-formed.
//!
//! A buffer is created before it is attached and released only when nothing is attached
//! and the CPU is not accessing it; an attachment is detached only when unmapped; a
//! mapping is unmapped only when its fences have signalled. A handle may be reused once
//! its previous holder is gone. These are the dma-buf rules the exporter enforces, so a
//! trace that passes them never asks a policy for something no kernel would allow.

use std::collections::HashMap;

use super::{AttId, BufId, FenceId, MapId, Op};

#[derive(Debug)]
struct Buf {
    attachments: u32,
    cpu: bool,
}

#[derive(Debug)]
struct Att {
    buf: BufId,
    mappings: u32,
}

#[derive(Debug)]
struct Map {
    att: AttId,
    fences: u32,
}

/// Which handles are live, checked one event at a time. The parser and [`super::TraceWriter`]
/// use it; a recorder can too.
#[derive(Debug, Default)]
pub struct Lifecycle {
    bufs: HashMap<BufId, Buf>,
    atts: HashMap<AttId, Att>,
    maps: HashMap<MapId, Map>,
    fences: HashMap<FenceId, MapId>,
    /// Where each dead handle died, for messages: (kind letter, number) -> line.
    gone: HashMap<(char, u32), usize>,
    line: usize,
}

fn fresh<K: std::hash::Hash + Eq + std::fmt::Display, V>(
    live: &HashMap<K, V>,
    id: K,
    what: &str,
) -> Result<(), String> {
    if live.contains_key(&id) {
        return Err(format!("{what} {id} is already live; a handle is reused only after its {what} is gone"));
    }
    Ok(())
}

impl Lifecycle {
    /// Nothing live.
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    fn missing(&self, prefix: char, n: u32, what: &str) -> String {
        match self.gone.get(&(prefix, n)) {
            Some(at) => format!("{what} {prefix}{n} is gone (it ended at line {at})"),
            None => format!("{what} {prefix}{n} was never created"),
        }
    }

    fn bury(&mut self, prefix: char, n: u32) {
        self.gone.insert((prefix, n), self.line);
    }

    fn buf(&mut self, id: BufId) -> Result<&mut Buf, String> {
        if !self.bufs.contains_key(&id) {
            return Err(self.missing(BufId::PREFIX, id.0, BufId::WHAT));
        }
        Ok(self.bufs.get_mut(&id).expect("checked"))
    }

    fn att(&mut self, id: AttId) -> Result<&mut Att, String> {
        if !self.atts.contains_key(&id) {
            return Err(self.missing(AttId::PREFIX, id.0, AttId::WHAT));
        }
        Ok(self.atts.get_mut(&id).expect("checked"))
    }

    fn map(&mut self, id: MapId) -> Result<&mut Map, String> {
        if !self.maps.contains_key(&id) {
            return Err(self.missing(MapId::PREFIX, id.0, MapId::WHAT));
        }
        Ok(self.maps.get_mut(&id).expect("checked"))
    }

    /// Applies the event on `line`; on error nothing changed and the message says which
    /// handle is wrong and why.
    pub fn apply(&mut self, op: &Op, line: usize) -> Result<(), String> {
        self.line = line;
        match op {
            Op::Create { buf, .. } => {
                fresh(&self.bufs, *buf, BufId::WHAT)?;
                self.bufs.insert(*buf, Buf { attachments: 0, cpu: false });
            }
            Op::Attach { att, buf, .. } => {
                fresh(&self.atts, *att, AttId::WHAT)?;
                self.buf(*buf)?.attachments += 1;
                self.atts.insert(*att, Att { buf: *buf, mappings: 0 });
            }
            Op::Map { map, att } => {
                fresh(&self.maps, *map, MapId::WHAT)?;
                self.att(*att)?.mappings += 1;
                self.maps.insert(*map, Map { att: *att, fences: 0 });
            }
            Op::Fence { fence, map } => {
                fresh(&self.fences, *fence, FenceId::WHAT)?;
                self.map(*map)?.fences += 1;
                self.fences.insert(*fence, *map);
            }
            Op::Signal { fence } => {
                let map = self.fences.remove(fence).ok_or_else(|| self.missing(FenceId::PREFIX, fence.0, "fence"))?;
                self.bury(FenceId::PREFIX, fence.0);
                self.map(map)?.fences -= 1;
            }
            Op::CpuBegin { buf, .. } => {
                let b = self.buf(*buf)?;
                if b.cpu {
                    return Err(format!("CPU access to {buf} already began"));
                }
                b.cpu = true;
            }
            Op::CpuEnd { buf } => {
                let b = self.buf(*buf)?;
                if !b.cpu {
                    return Err(format!("no CPU access to {buf} to end"));
                }
                b.cpu = false;
            }
            Op::Unmap { map } => {
                let m = self.map(*map)?;
                if m.fences > 0 {
                    return Err(format!("{map} still has {} unsignalled fence(s); signal them first", m.fences));
                }
                let att = m.att;
                self.maps.remove(map);
                self.bury(MapId::PREFIX, map.0);
                self.att(att)?.mappings -= 1;
            }
            Op::Detach { att } => {
                let a = self.att(*att)?;
                if a.mappings > 0 {
                    return Err(format!("{att} is still mapped {} time(s); unmap first", a.mappings));
                }
                let buf = a.buf;
                self.atts.remove(att);
                self.bury(AttId::PREFIX, att.0);
                self.buf(buf)?.attachments -= 1;
            }
            Op::Release { buf } => {
                let b = self.buf(*buf)?;
                if b.attachments > 0 {
                    return Err(format!("{buf} still has {} attachment(s); detach first", b.attachments));
                }
                if b.cpu {
                    return Err(format!("the CPU is still accessing {buf}; end CPU access first"));
                }
                self.bufs.remove(buf);
                self.bury(BufId::PREFIX, buf.0);
            }
            Op::Advance { .. } | Op::OtherFill { .. } | Op::OtherChurn { .. } => {}
        }
        Ok(())
    }
}
