//! The trace format: every well-formed trace round-trips through its text (a property,
//! from a fixed, committed seed: `PROPTEST_RNG_SEED` overrides it, `PROPTEST_CASES` the
//! count); malformed traces are refused with the line and what is wrong; the writer
//! refuses what would not parse back.

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::layout::parse_fourcc;
use dmaplace_core::{BufferDesc, ImageDesc, Size, Usage};
use dmaplace_eval::trace::{AttId, BufId, FenceId, Header, MapId, Op, Trace, TraceWriter};
use dmaplace_sim::BackgroundLoad;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// The committed seed of the round-trip property.
const SEED: u64 = 0x7ace_2026_0011;

fn runner() -> TestRunner {
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(SEED);
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    eprintln!("trace round trip: PROPTEST_RNG_SEED={seed} PROPTEST_CASES={cases}");
    TestRunner::new(Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() })
}

/// One random step of a trace; [`build`] turns it into an event valid for the handles
/// live at that point.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    pick: usize,
    reuse: bool,
    size: u64,
    dims: (u32, u32),
    format: usize,
    modifiers: Vec<u64>,
    usage: u32,
    name: String,
    ns: u64,
    fill: f64,
    churn: u32,
    access: u8,
}

const FORMATS: &[&str] = &["XR24", "AR24", "NV12", "YUYV", "P010", "RG16"];

fn step() -> impl Strategy<Value = Step> {
    let text = "[a-zA-Z0-9 _.:\"\\\\#=é\\n\\t-]{0,10}";
    (
        (any::<u8>(), any::<usize>(), any::<bool>(), 1u64..(1 << 40), (1u32..=65536, 1u32..=65536)),
        (0..FORMATS.len(), prop::collection::vec(prop_oneof![Just(0u64), any::<u64>()], 0..3), any::<u32>()),
        (text, any::<u64>(), 0.0f64..=1.0, 0u32..=10_000_000, 0u8..3),
    )
        .prop_map(
            |((kind, pick, reuse, size, dims), (format, modifiers, usage), (name, ns, fill, churn, access))| Step {
                kind,
                pick,
                reuse,
                size,
                dims,
                format,
                modifiers,
                usage,
                name,
                ns,
                fill,
                churn,
                access,
            },
        )
}

fn header() -> impl Strategy<Value = Header> {
    let text = "[a-zA-Z0-9 _.\"=#é-]{0,8}";
    (
        prop::option::of(text),
        prop::option::of(any::<u64>()),
        prop::option::of((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, 0u32..=20)),
        prop::collection::vec((text, text), 0..3),
    )
        .prop_map(|(platform, seed, bg, meta)| Header {
            platform,
            seed,
            background: bg.map(|(fill, prefill, movable, cma_share, max_order)| BackgroundLoad {
                fill,
                prefill,
                movable,
                cma_share,
                max_order,
            }),
            meta,
        })
}

/// Live handles while building.
#[derive(Default)]
struct Live {
    bufs: Vec<(BufId, bool)>,
    atts: Vec<(AttId, BufId)>,
    maps: Vec<(MapId, AttId, u32)>,
    fences: Vec<(FenceId, MapId)>,
    next: u32,
    dead: Vec<u32>,
}

impl Live {
    /// A fresh handle number, or one whose holder is gone.
    fn number(&mut self, s: &Step) -> u32 {
        if s.reuse && !self.dead.is_empty() {
            let i = s.pick % self.dead.len();
            return self.dead.swap_remove(i);
        }
        self.next += 1;
        self.next
    }
}

fn desc(s: &Step) -> BufferDesc {
    if s.kind.is_multiple_of(2) {
        return BufferDesc::Size(Size::new(s.size));
    }
    let format = parse_fourcc(FORMATS[s.format]).unwrap();
    BufferDesc::Image(ImageDesc { width: s.dims.0, height: s.dims.1, format, modifiers: s.modifiers.clone() })
}

/// A valid event for step `s`, or `None` when none of its kind applies.
fn event(live: &mut Live, s: &Step) -> Option<Op> {
    let usage = Usage::from_bits_truncate(s.usage);
    let pick = |n: usize| s.pick % n.max(1);
    match s.kind % 13 {
        0 => Some(Op::Create { buf: BufId(live.number(s)), desc: desc(s), usage, name: s.name.clone() }),
        1 if !live.bufs.is_empty() => {
            let buf = live.bufs[pick(live.bufs.len())].0;
            let att = AttId(live.number(s));
            live.atts.push((att, buf));
            Some(Op::Attach { att, buf, device: format!("dev{}", s.format), hints: usage })
        }
        2 if !live.atts.is_empty() => {
            let att = live.atts[pick(live.atts.len())].0;
            let map = MapId(live.number(s));
            live.maps.push((map, att, 0));
            Some(Op::Map { map, att })
        }
        3 if !live.maps.is_empty() => {
            let i = pick(live.maps.len());
            live.maps[i].2 += 1;
            let fence = FenceId(live.number(s));
            live.fences.push((fence, live.maps[i].0));
            Some(Op::Fence { fence, map: live.maps[i].0 })
        }
        4 if !live.fences.is_empty() => {
            let (fence, map) = live.fences.swap_remove(pick(live.fences.len()));
            live.maps.iter_mut().find(|m| m.0 == map)?.2 -= 1;
            live.dead.push(fence.0);
            Some(Op::Signal { fence })
        }
        5 if !live.bufs.is_empty() => {
            let i = pick(live.bufs.len());
            let (buf, cpu) = &mut live.bufs[i];
            *cpu = !*cpu;
            let access = [CpuAccess::Read, CpuAccess::Write, CpuAccess::ReadWrite][usize::from(s.access)];
            Some(if *cpu { Op::CpuBegin { buf: *buf, access } } else { Op::CpuEnd { buf: *buf } })
        }
        6 => {
            let i = live.maps.iter().position(|m| m.2 == 0)?;
            let (map, ..) = live.maps.remove(i);
            live.dead.push(map.0);
            Some(Op::Unmap { map })
        }
        7 => {
            let i = live.atts.iter().position(|(a, _)| !live.maps.iter().any(|m| m.1 == *a))?;
            let (att, _) = live.atts.remove(i);
            live.dead.push(att.0);
            Some(Op::Detach { att })
        }
        8 => {
            let i = live.bufs.iter().position(|(b, cpu)| !cpu && !live.atts.iter().any(|a| a.1 == *b))?;
            let (buf, _) = live.bufs.remove(i);
            live.dead.push(buf.0);
            Some(Op::Release { buf })
        }
        9 => Some(Op::Advance { ns: s.ns }),
        10 => Some(Op::OtherFill { fill: s.fill }),
        11 => Some(Op::OtherChurn { steps: s.churn }),
        _ => None,
    }
}

fn build(header: Header, steps: &[Step]) -> Trace {
    let mut live = Live::default();
    let mut ops = Vec::new();
    for s in steps {
        if let Some(op) = event(&mut live, s) {
            if let Op::Create { buf, .. } = &op {
                live.bufs.push((*buf, false));
            }
            ops.push(op);
        }
    }
    Trace { header, ops }
}

#[test]
fn every_trace_round_trips_through_its_text() {
    runner()
        .run(&(header(), prop::collection::vec(step(), 0..60)), |(h, steps)| {
            let trace = build(h, &steps);
            let text = trace.to_text();
            let back = Trace::parse("generated", &text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(&back, &trace, "{}", text);
            // The writer, event by event, writes the same text.
            let mut out = Vec::new();
            let mut w = TraceWriter::new(&mut out, &trace.header).unwrap();
            for op in &trace.ops {
                w.op(op).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(String::from_utf8(out).unwrap(), text);
            Ok(())
        })
        .unwrap();
}

const HEAD: &str = "dmaplace-trace 1\n";

/// `(trace, line, what the error says)`.
const MALFORMED: &[(&str, usize, &str)] = &[
    ("", 1, "empty trace: a trace starts with `dmaplace-trace 1`"),
    ("# only a comment\n", 1, "empty trace"),
    ("create b1 size=1MiB\n", 1, "a trace starts with `dmaplace-trace 1`, got `create b1 size=1MiB`"),
    ("dmaplace-trace 2\n", 1, "trace format version 2 is not supported; this build reads version 1"),
    ("{H}create b1 size=0\n", 2, "`size` must be 1 B to 256 TiB, got 0 B"),
    ("{H}create b1 size=8XB\n", 2, "`size`:"),
    ("{H}create b1\n", 2, "`create` needs exactly one of `size=` and `image=`"),
    ("{H}create b1 size=1MiB image=2x2 format=NV12\n", 2, "exactly one of `size=` and `image=`"),
    ("{H}create b1 image=1920x1080\n", 2, "`create` needs `format=`"),
    ("{H}create b1 image=0x10 format=XR24\n", 2, "`image` must be WIDTHxHEIGHT, each 1 to 65536, got `0x10`"),
    ("{H}create b1 image=2x2 format=ZZZZ\n", 2, "`format`:"),
    ("{H}create b1 image=2x2 format=XR24 modifiers=LINEAR,BOGUS\n", 2, "`modifiers`: unknown modifier \"BOGUS\""),
    ("{H}create b1 size=1MiB usage=SCANOUT,FLYING\n", 2, "`usage`: unknown usage hint \"FLYING\""),
    ("{H}create b1 size=1MiB size=2MiB\n", 2, "key `size` given twice (column 21)"),
    ("{H}create x1 size=1MiB\n", 2, "expected a buffer handle such as b1, got `x1`"),
    ("{H}create b99999999999 size=1MiB\n", 2, "buffer handle `b99999999999` is over b4294967295"),
    ("{H}create b1 size=1MiB\ncreate b1 size=1MiB\n", 3, "create: buffer b1 is already live"),
    ("{H}attach a1 b9 gpu\n", 2, "attach: buffer b9 was never created"),
    ("{H}create b1 size=1MiB\nattach x1 b1 gpu\n", 3, "expected an attachment handle such as a1, got `x1`"),
    ("{H}create b1 size=1MiB\nattach a1 b1\n", 3, "`attach` takes 3 argument(s) (ATTACHMENT BUFFER DEVICE), got 2"),
    (
        "{H}create b1 size=1MiB\nattach a1 b1 gpu\nmap m1 a1 foo=bar\n",
        4,
        "`map` has no key `foo` (column 11); keys: none",
    ),
    (
        "{H}create b1 size=1MiB\nattach a1 b1 gpu\ndetach a1\nmap m1 a1\n",
        5,
        "map: attachment a1 is gone (it ended at line 4)",
    ),
    (
        "{H}create b1 size=1MiB\nattach a1 b1 gpu\nmap m1 a1\nfence f1 m1\nunmap m1\n",
        6,
        "unmap: m1 still has 1 unsignalled fence(s); signal them first",
    ),
    ("{H}create b1 size=1MiB\nattach a1 b1 gpu\nmap m1 a1\ndetach a1\n", 5, "detach: a1 is still mapped 1 time(s)"),
    (
        "{H}create b1 size=1MiB\nattach a1 b1 gpu\nrelease b1\n",
        4,
        "release: b1 still has 1 attachment(s); detach first",
    ),
    ("{H}create b1 size=1MiB\ncpu-end b1\n", 3, "cpu-end: no CPU access to b1 to end"),
    ("{H}create b1 size=1MiB\ncpu-begin b1 sideways\n", 3, "CPU access is read, write or readwrite, got `sideways`"),
    ("{H}create b1 size=1MiB\ncpu-begin b1 read\nrelease b1\n", 4, "the CPU is still accessing b1"),
    ("{H}signal f3\n", 2, "signal: fence f3 was never created"),
    ("{H}advance 16\n", 2, "a duration is a whole number with a unit (ns, us, ms, s, min, h), got `16`"),
    ("{H}advance 16 ms\n", 2, "`advance` takes 1 argument(s) (DURATION), got 2 (unexpected `ms` at column 12)"),
    ("{H}other fill=1.5\n", 2, "`fill` must be a number from 0 to 1, got `1.5`"),
    ("{H}other churn=10000001\n", 2, "`churn` is at most 10000000 steps per line, got 10000001"),
    ("{H}other fill=0.5 churn=3\n", 2, "`other` takes exactly one of `fill=` and `churn=`"),
    ("{H}frobnicate b1\n", 2, "unknown verb `frobnicate`"),
    ("{H}create b1 size=1MiB\nplatform refsoc\n", 3, "`platform` belongs in the header, before the first event"),
    ("{H}seed 1\nseed 2\n", 3, "`seed` is given twice"),
    ("{H}seed -1\n", 2, "`seed` must be a whole number in range, got `-1`"),
    ("{H}background fill=0.5\n", 2, "`background` needs `prefill=`"),
    ("{H}size=3\n", 2, "a line starts with a verb, not `size=`"),
    ("{H}create b1 size=1MiB name=\"open\n", 2, "the string opened at column 26 is not closed"),
    ("{H}create b1 size=1MiB name=\"a\\qb\"\n", 2, "unknown escape `\\q`"),
    ("{H}map m1 a1 @\n", 2, "unexpected character '@' at column 11"),
];

#[test]
fn malformed_traces_name_the_line_and_the_problem() {
    for (text, line, what) in MALFORMED {
        let text = text.replace("{H}", HEAD);
        let err = Trace::parse("bad.trace", &text).expect_err(&text);
        assert_eq!(err.line, *line, "{text:?}: {err}");
        assert!(err.message.contains(what), "{text:?}:\n  got  {}\n  want {what}", err.message);
        assert!(err.to_string().starts_with(&format!("bad.trace:{line}: ")), "{err}");
    }
}

#[test]
fn comments_blank_lines_and_quoted_names_are_read() {
    let text = "# made by hand\n\ndmaplace-trace 1   # the format\nplatform refsoc\nmeta scenario=\"by hand\"\n\ncreate b1 image=1920x1080 format=NV12 modifiers=LINEAR usage=scanout|rendering name=\"a \\\"frame\\\"\"\nadvance 2h\n";
    let t = Trace::parse("hand.trace", text).unwrap();
    assert_eq!(t.header.platform.as_deref(), Some("refsoc"));
    assert_eq!(t.meta("scenario"), Some("by hand"));
    assert_eq!(t.duration_ns(), 7_200_000_000_000);
    let Op::Create { name, usage, .. } = &t.ops[0] else { panic!("{:?}", t.ops[0]) };
    assert_eq!((name.as_str(), *usage), ("a \"frame\"", Usage::SCANOUT | Usage::RENDERING));
    assert_eq!(
        t.to_text(),
        "dmaplace-trace 1\nplatform refsoc\nmeta scenario=\"by hand\"\ncreate b1 image=1920x1080 format=NV12 modifiers=LINEAR usage=SCANOUT,RENDERING name=\"a \\\"frame\\\"\"\nadvance 7200s\n"
    );
}

#[test]
fn the_writer_refuses_what_would_not_parse_back() {
    let mut out = Vec::new();
    let mut w = TraceWriter::new(&mut out, &Header::default()).unwrap();
    w.op(&Op::Create {
        buf: BufId(1),
        desc: BufferDesc::Size(Size::mib(1)),
        usage: Usage::empty(),
        name: String::new(),
    })
    .unwrap();
    let err = w.op(&Op::Release { buf: BufId(2) }).unwrap_err().to_string();
    assert_eq!(err, "<trace writer>:3: buffer b2 was never created");
    w.at(5_000).unwrap();
    let err = w.at(4_000).unwrap_err().to_string();
    assert_eq!(err, "<trace writer>:4: time runs backwards: 4000 ns after 5000 ns");
    w.at(5_000).unwrap();
    w.op(&Op::Release { buf: BufId(1) }).unwrap();
    drop(w);
    assert_eq!(String::from_utf8(out).unwrap(), "dmaplace-trace 1\ncreate b1 size=1MiB\nadvance 5us\nrelease b1\n");
}
