//! Writing traces: the canonical text of each line, and [`TraceWriter`], which a recorder
//! calls event by event.

use std::fmt::Write as _;
use std::io;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::layout::{fourcc_name, modifier_name};
use dmaplace_core::{BufferDesc, Size, Usage};

use super::{Header, Lifecycle, MAGIC, Op, TraceError, VERSION};

/// Characters a value may hold without quotes.
pub(super) fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '+' | ',' | '|' | '-')
}

/// `text` bare when it can be, else in double quotes with `\"`, `\\`, `\n`, `\t` escaped.
fn quoted(text: &str) -> String {
    if !text.is_empty() && text.chars().all(is_bare) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `8MiB`, `4KiB`, `12345`: the largest binary unit that divides the size exactly.
pub(super) fn size_text(size: Size) -> String {
    let b = size.bytes();
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    b.to_string()
}

/// `33ms`, `2s`, `1500us`: the largest unit that divides the duration exactly.
pub(super) fn duration_text(ns: u64) -> String {
    for (div, unit) in [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")] {
        if ns >= div && ns.is_multiple_of(div) {
            return format!("{}{unit}", ns / div);
        }
    }
    format!("{ns}ns")
}

/// `SCANOUT,RENDERING`.
pub(super) fn usage_text(usage: Usage) -> String {
    usage.iter_names().map(|(n, _)| n).collect::<Vec<_>>().join(",")
}

pub(super) fn access_text(access: CpuAccess) -> &'static str {
    match access {
        CpuAccess::Read => "read",
        CpuAccess::Write => "write",
        CpuAccess::ReadWrite => "readwrite",
    }
}

/// Appends the header lines.
pub(super) fn header(h: &Header, out: &mut String) {
    let _ = writeln!(out, "{MAGIC} {VERSION}");
    if let Some(p) = &h.platform {
        let _ = writeln!(out, "platform {}", quoted(p));
    }
    if let Some(s) = h.seed {
        let _ = writeln!(out, "seed {s}");
    }
    if let Some(b) = &h.background {
        let _ = writeln!(
            out,
            "background fill={} prefill={} movable={} cma-share={} max-order={}",
            b.fill, b.prefill, b.movable, b.cma_share, b.max_order
        );
    }
    for (k, v) in &h.meta {
        let _ = writeln!(out, "meta {}={}", quoted(k), quoted(v));
    }
}

fn desc_text(desc: &BufferDesc) -> String {
    match desc {
        BufferDesc::Size(s) => format!("size={}", size_text(*s)),
        BufferDesc::Image(img) => {
            let mut t = format!("image={}x{} format={}", img.width, img.height, quoted(&fourcc_name(img.format)));
            if !img.modifiers.is_empty() {
                let names: Vec<String> = img.modifiers.iter().map(|m| modifier_name(*m, &[])).collect();
                let _ = write!(t, " modifiers={}", names.join(","));
            }
            t
        }
    }
}

/// Appends the op's line.
pub(super) fn op(op: &Op, out: &mut String) {
    let verb = op.verb();
    let _ = match op {
        Op::Create { buf, desc, usage, name } => {
            let _ = write!(out, "{verb} {buf} {}", desc_text(desc));
            if !usage.is_empty() {
                let _ = write!(out, " usage={}", usage_text(*usage));
            }
            if !name.is_empty() {
                let _ = write!(out, " name={}", quoted(name));
            }
            writeln!(out)
        }
        Op::Attach { att, buf, device, hints } => {
            let _ = write!(out, "{verb} {att} {buf} {}", quoted(device));
            if !hints.is_empty() {
                let _ = write!(out, " hints={}", usage_text(*hints));
            }
            writeln!(out)
        }
        Op::Map { map, att } => writeln!(out, "{verb} {map} {att}"),
        Op::Fence { fence, map } => writeln!(out, "{verb} {fence} {map}"),
        Op::Signal { fence } => writeln!(out, "{verb} {fence}"),
        Op::CpuBegin { buf, access } => writeln!(out, "{verb} {buf} {}", access_text(*access)),
        Op::CpuEnd { buf } | Op::Release { buf } => writeln!(out, "{verb} {buf}"),
        Op::Unmap { map } => writeln!(out, "{verb} {map}"),
        Op::Detach { att } => writeln!(out, "{verb} {att}"),
        Op::Advance { ns } => writeln!(out, "{verb} {}", duration_text(*ns)),
        Op::OtherFill { fill } => writeln!(out, "{verb} fill={fill}"),
        Op::OtherChurn { steps } => writeln!(out, "{verb} churn={steps}"),
    };
}

/// Why a [`TraceWriter`] did not write an event.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The event breaks a handle's lifecycle (the trace would not parse back).
    #[error(transparent)]
    Invalid(#[from] TraceError),
    /// The output failed.
    #[error("writing the trace: {0}")]
    Io(#[from] io::Error),
}

/// Writes a trace event by event, checking each against the handles' lifecycles, so what
/// it writes always parses back (`dmaplaced --record FILE` is meant to use it).
///
/// ```
/// use dmaplace_core::{BufferDesc, Size, Usage};
/// use dmaplace_eval::trace::{AttId, BufId, Header, MapId, Op, Trace, TraceWriter};
///
/// let mut out = Vec::new();
/// let mut w = TraceWriter::new(&mut out, &Header { platform: Some("refsoc".into()), ..Header::default() }).unwrap();
/// w.op(&Op::Create { buf: BufId(1), desc: BufferDesc::Size(Size::mib(8)), usage: Usage::empty(), name: "frame".into() }).unwrap();
/// w.at(16_000_000).unwrap(); // 16 ms later
/// w.op(&Op::Attach { att: AttId(1), buf: BufId(1), device: "gpu".into(), hints: Usage::RENDERING }).unwrap();
/// assert!(w.op(&Op::Map { map: MapId(1), att: AttId(7) }).is_err()); // never attached
/// let text = String::from_utf8(out).unwrap();
/// assert!(text.contains("advance 16ms\n"));
/// assert_eq!(Trace::parse("rec", &text).unwrap().ops.len(), 3);
/// ```
#[derive(Debug)]
pub struct TraceWriter<W: io::Write> {
    out: W,
    life: Lifecycle,
    /// Lines written so far (the next event's line is one more).
    line: usize,
    /// Simulated (or recorded) time of the last event, in ns.
    now: u64,
    text: String,
}

impl<W: io::Write> TraceWriter<W> {
    /// Writes the header to `out` and returns a writer for the events.
    pub fn new(mut out: W, h: &Header) -> io::Result<TraceWriter<W>> {
        let mut text = String::new();
        header(h, &mut text);
        out.write_all(text.as_bytes())?;
        let line = text.lines().count();
        Ok(TraceWriter { out, life: Lifecycle::new(), line, now: 0, text: String::new() })
    }

    /// Writes one event, after checking it against the handles' lifecycles.
    pub fn op(&mut self, o: &Op) -> Result<(), WriteError> {
        let line = self.line + 1;
        self.life.apply(o, line).map_err(|message| TraceError { file: "<trace writer>".into(), line, message })?;
        self.text.clear();
        op(o, &mut self.text);
        self.out.write_all(self.text.as_bytes())?;
        self.line = line;
        if let Op::Advance { ns } = o {
            self.now = self.now.saturating_add(*ns);
        }
        Ok(())
    }

    /// Moves the clock to `now_ns` (nanoseconds since the recording began), writing an
    /// `advance` when time has passed since the last event. Time never runs backwards.
    pub fn at(&mut self, now_ns: u64) -> Result<(), WriteError> {
        if now_ns < self.now {
            let message = format!("time runs backwards: {now_ns} ns after {} ns", self.now);
            return Err(TraceError { file: "<trace writer>".into(), line: self.line + 1, message }.into());
        }
        if now_ns > self.now {
            self.op(&Op::Advance { ns: now_ns - self.now })?;
        }
        Ok(())
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output.
    pub fn into_inner(self) -> W {
        self.out
    }
}
