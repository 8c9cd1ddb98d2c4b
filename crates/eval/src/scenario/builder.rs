//! A builder for scenario traces: events are stamped with simulated time by independent
//! actors (a decoder, a display, a recorder), then merged in time order with `advance`
//! between them. Handles are numbered in creation order.

use dmaplace_core::{BufferDesc, ImageDesc, Size, Usage};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::trace::{AttId, BufId, FenceId, Header, Lifecycle, MapId, Op, Trace};

/// A millisecond in ns.
pub(crate) const MS: u64 = 1_000_000;
/// A second in ns.
pub(crate) const S: u64 = 1_000_000_000;

/// A buffer and, per device, its attachment and mapping.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) buf: BufId,
    pub(crate) users: Vec<User>,
}

/// One device's attachment and mapping of a [`Shared`] buffer.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub(crate) device: String,
    pub(crate) hints: Usage,
    pub(crate) att: AttId,
    pub(crate) map: MapId,
}

impl Shared {
    /// The mapping of `device` (its first attachment).
    pub(crate) fn map(&self, device: &str) -> MapId {
        self.users.iter().find(|u| u.device == device).map(|u| u.map).expect("the scenario attached the device")
    }

    /// The mapping of `device`'s attachment with `hints` (a device attached twice: an
    /// application's GPU context and the compositor's).
    pub(crate) fn map_with(&self, device: &str, hints: Usage) -> MapId {
        let u = self.users.iter().find(|u| u.device == device && u.hints == hints);
        u.map(|u| u.map).expect("the scenario attached the device with these hints")
    }
}

pub(crate) struct Gen {
    events: Vec<(u64, u64, Op)>,
    next: [u32; 4],
    pub(crate) rng: Xoshiro256PlusPlus,
}

impl Gen {
    pub(crate) fn new(seed: u64) -> Gen {
        Gen { events: Vec::new(), next: [1; 4], rng: Xoshiro256PlusPlus::seed_from_u64(seed) }
    }

    fn id(&mut self, kind: usize) -> u32 {
        self.next[kind] += 1;
        self.next[kind] - 1
    }

    pub(crate) fn at(&mut self, t: u64, op: Op) {
        let seq = self.events.len() as u64;
        self.events.push((t, seq, op));
    }

    pub(crate) fn create(&mut self, t: u64, desc: BufferDesc, usage: Usage, name: &str) -> BufId {
        let buf = BufId(self.id(0));
        self.at(t, Op::Create { buf, desc, usage, name: name.to_owned() });
        buf
    }

    pub(crate) fn attach(&mut self, t: u64, buf: BufId, device: &str, hints: Usage) -> AttId {
        let att = AttId(self.id(1));
        self.at(t, Op::Attach { att, buf, device: device.to_owned(), hints });
        att
    }

    pub(crate) fn map(&mut self, t: u64, att: AttId) -> MapId {
        let map = MapId(self.id(2));
        self.at(t, Op::Map { map, att });
        map
    }

    /// DMA on `map` from `t` for `dur` ns: a fence, then its signal.
    pub(crate) fn dma(&mut self, t: u64, map: MapId, dur: u64) {
        let fence = FenceId(self.id(3));
        self.at(t, Op::Fence { fence, map });
        self.at(t + dur.max(1), Op::Signal { fence });
    }

    /// A device joins a shared buffer: attach, then map.
    pub(crate) fn join(&mut self, t: u64, s: &mut Shared, device: &str, hints: Usage) {
        let att = self.attach(t, s.buf, device, hints);
        let map = self.map(t, att);
        s.users.push(User { device: device.to_owned(), hints, att, map });
    }

    /// A device leaves a shared buffer: unmap, then detach.
    pub(crate) fn leave(&mut self, t: u64, s: &mut Shared, device: &str) {
        if let Some(i) = s.users.iter().position(|u| u.device == device) {
            let u = s.users.remove(i);
            self.at(t, Op::Unmap { map: u.map });
            self.at(t, Op::Detach { att: u.att });
        }
    }

    /// A buffer for the devices known when it is created: each attaches, then each maps
    /// (the order a dmaplace-aware allocation takes: GBM with the display's usage, a
    /// decoder pool imported into GL before the first frame). Devices that come later
    /// [`Gen::join`].
    pub(crate) fn shared(
        &mut self,
        t: u64,
        desc: &BufferDesc,
        usage: Usage,
        name: &str,
        devices: &[(&str, Usage)],
    ) -> Shared {
        let buf = self.create(t, desc.clone(), usage, name);
        let atts: Vec<AttId> = devices.iter().map(|(d, h)| self.attach(t, buf, d, *h)).collect();
        let mut s = Shared { buf, users: Vec::new() };
        for ((d, hints), att) in devices.iter().zip(atts) {
            let map = self.map(t, att);
            s.users.push(User { device: (*d).to_owned(), hints: *hints, att, map });
        }
        s
    }

    /// Every user leaves and the buffer is released at `t`.
    pub(crate) fn release(&mut self, t: u64, mut s: Shared) {
        for d in s.users.iter().map(|u| u.device.clone()).collect::<Vec<_>>() {
            self.leave(t, &mut s, &d);
        }
        self.at(t, Op::Release { buf: s.buf });
    }

    /// The other users of memory churn `rate` steps per second from `from` to `to`, in
    /// 100 ms slices.
    pub(crate) fn churn(&mut self, from: u64, to: u64, rate: u64) {
        let per_slice = u32::try_from(rate / 10).unwrap_or(u32::MAX);
        if per_slice == 0 {
            return;
        }
        let mut t = from;
        while t < to {
            self.at(t, Op::OtherChurn { steps: per_slice });
            t += 100 * MS;
        }
    }

    /// The trace: events in time order (creation order among equal times) with `advance`
    /// between different times. Fails when the scenario broke a handle's lifecycle (a
    /// bug in the scenario).
    pub(crate) fn finish(mut self, header: Header) -> Result<Trace, String> {
        self.events.sort_by_key(|(t, seq, _)| (*t, *seq));
        let mut ops = Vec::with_capacity(self.events.len() * 11 / 10);
        let mut now = 0;
        let mut life = Lifecycle::new();
        for (i, (t, _, op)) in self.events.into_iter().enumerate() {
            if t > now {
                ops.push(Op::Advance { ns: t - now });
                now = t;
            }
            life.apply(&op, i + 1).map_err(|e| format!("scenario event {} at {t} ns ({}): {e}", i + 1, op.verb()))?;
            ops.push(op);
        }
        Ok(Trace { header, ops })
    }
}

/// The item for frame `i` of a pool used in turn (`items[i % len]`).
pub(crate) fn nth<T>(items: &[T], i: u64) -> &T {
    // CAST: the remainder is below the length, a usize.
    #[allow(clippy::cast_possible_truncation)]
    let k = (i % items.len() as u64) as usize;
    &items[k]
}

/// An image buffer description.
pub(crate) fn image(width: u32, height: u32, format: &str) -> BufferDesc {
    let format = dmaplace_core::layout::parse_fourcc(format).expect("scenario formats are known fourccs");
    BufferDesc::Image(ImageDesc { width, height, format, modifiers: vec![] })
}

/// A raw buffer description.
pub(crate) fn bytes(size: Size) -> BufferDesc {
    BufferDesc::Size(size)
}
