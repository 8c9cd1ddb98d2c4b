//! Reading traces: a tokenizer (words, `key=value`, double-quoted strings, `#` comments)
//! and one parser per line kind. Every error names the line, the token and what was
//! expected.

use std::str::FromStr;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::layout::{format_info, parse_fourcc, parse_modifier};
use dmaplace_core::solver::{MAX_BUFFER_SIZE, MAX_DIMENSION};
use dmaplace_core::{BufferDesc, ImageDesc, Size, Usage};
use dmaplace_sim::BackgroundLoad;

use super::write::is_bare;
use super::{AttId, BufId, FenceId, Header, Lifecycle, MAGIC, MAX_CHURN, MapId, Op, Trace, TraceError, VERSION};

/// One whitespace-separated word: a value, or `key=value`.
#[derive(Debug, PartialEq)]
struct Token {
    key: Option<String>,
    value: String,
    /// 1-based column of its first character.
    col: usize,
}

/// Reads one piece (a run of bare characters, or a quoted string) starting at `chars[i]`.
fn piece(chars: &[(usize, char)], i: &mut usize) -> Result<String, String> {
    let mut out = String::new();
    if chars.get(*i).map(|c| c.1) == Some('"') {
        let open = chars[*i].0 + 1;
        *i += 1;
        loop {
            let Some(&(_, c)) = chars.get(*i) else {
                return Err(format!("the string opened at column {open} is not closed"));
            };
            *i += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let esc = chars.get(*i).map(|c| c.1);
                    *i += 1;
                    out.push(match esc {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some(e) => return Err(format!("unknown escape `\\{e}` in the string opened at column {open}")),
                        None => return Err(format!("the string opened at column {open} is not closed")),
                    });
                }
                c => out.push(c),
            }
        }
    }
    while let Some(&(_, c)) = chars.get(*i) {
        if !is_bare(c) {
            break;
        }
        out.push(c);
        *i += 1;
    }
    Ok(out)
}

fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<(usize, char)> = line.chars().enumerate().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (col, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            break;
        }
        let begin = i;
        let first = piece(&chars, &mut i)?;
        if i == begin {
            return Err(format!("unexpected character {c:?} at column {}", col + 1));
        }
        let token = if chars.get(i).map(|c| c.1) == Some('=') {
            i += 1;
            let value = piece(&chars, &mut i)?;
            Token { key: Some(first), value, col: col + 1 }
        } else {
            Token { key: None, value: first, col: col + 1 }
        };
        match chars.get(i) {
            Some(&(at, c)) if !c.is_whitespace() && c != '#' => {
                return Err(format!("unexpected character {c:?} at column {}", at + 1));
            }
            _ => {}
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// The arguments of one line after its verb.
struct Args<'a> {
    verb: &'a str,
    positional: Vec<&'a Token>,
    keyed: Vec<&'a Token>,
}

impl<'a> Args<'a> {
    fn new(verb: &'a str, tokens: &'a [Token]) -> Args<'a> {
        let (keyed, positional) = tokens.iter().partition(|t| t.key.is_some());
        Args { verb, positional, keyed }
    }

    /// Exactly `n` positional arguments, named in `what` for the message.
    fn positional(&self, what: &[&str]) -> Result<Vec<&'a str>, String> {
        if self.positional.len() != what.len() {
            let extra =
                self.positional.get(what.len()).map(|t| format!(" (unexpected `{}` at column {})", t.value, t.col));
            return Err(format!(
                "`{}` takes {} argument(s) ({}), got {}{}",
                self.verb,
                what.len(),
                what.join(" "),
                self.positional.len(),
                extra.unwrap_or_default()
            ));
        }
        Ok(self.positional.iter().map(|t| t.value.as_str()).collect())
    }

    /// Rejects keys outside `allowed` and repeated keys.
    fn keys(&self, allowed: &[&str]) -> Result<(), String> {
        for (i, t) in self.keyed.iter().enumerate() {
            let k = t.key.as_deref().unwrap_or_default();
            if !allowed.contains(&k) {
                let known = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                return Err(format!("`{}` has no key `{k}` (column {}); keys: {known}", self.verb, t.col));
            }
            if self.keyed[..i].iter().any(|o| o.key == t.key) {
                return Err(format!("key `{k}` given twice (column {})", t.col));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.keyed.iter().find(|t| t.key.as_deref() == Some(key)).map(|t| t.value.as_str())
    }

    fn require(&self, key: &str) -> Result<&'a str, String> {
        self.get(key).ok_or_else(|| format!("`{}` needs `{key}=`", self.verb))
    }
}

fn handle(text: &str, prefix: char, what: &str) -> Result<u32, String> {
    let digits = text.strip_prefix(prefix).filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    let Some(digits) = digits else {
        let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        return Err(format!("expected {article} {what} handle such as {prefix}1, got `{text}`"));
    };
    digits.parse().map_err(|_| format!("{what} handle `{text}` is over {prefix}{}", u32::MAX))
}

fn buf(t: &str) -> Result<BufId, String> {
    handle(t, BufId::PREFIX, BufId::WHAT).map(BufId)
}
fn att(t: &str) -> Result<AttId, String> {
    handle(t, AttId::PREFIX, AttId::WHAT).map(AttId)
}
fn map(t: &str) -> Result<MapId, String> {
    handle(t, MapId::PREFIX, MapId::WHAT).map(MapId)
}
fn fence(t: &str) -> Result<FenceId, String> {
    handle(t, FenceId::PREFIX, FenceId::WHAT).map(FenceId)
}

fn number<T: FromStr>(key: &str, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("`{key}` must be a whole number in range, got `{text}`"))
}

fn fraction(key: &str, text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{key}` must be a number from 0 to 1, got `{text}`")),
    }
}

fn usage(key: &str, text: &str) -> Result<Usage, String> {
    Usage::parse_list(text).map_err(|e| format!("`{key}`: {e}"))
}

fn size(text: &str) -> Result<Size, String> {
    let s = Size::from_str(text).map_err(|e| format!("`size`: {e}"))?;
    if s.is_zero() || s > MAX_BUFFER_SIZE {
        return Err(format!("`size` must be 1 B to {MAX_BUFFER_SIZE}, got {s}"));
    }
    Ok(s)
}

fn image(a: &Args<'_>, dims: &str) -> Result<BufferDesc, String> {
    let bad = || format!("`image` must be WIDTHxHEIGHT, each 1 to {MAX_DIMENSION}, got `{dims}`");
    let (w, h) = dims.split_once('x').ok_or_else(bad)?;
    let (width, height): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
        return Err(bad());
    }
    let fourcc = a.require("format")?;
    let format = parse_fourcc(fourcc).map_err(|e| format!("`format`: {e}"))?;
    if format_info(format).is_none() {
        return Err(format!("`format`: dmaplace has no layout rule for {fourcc}"));
    }
    let modifiers = match a.get("modifiers") {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|m| parse_modifier(m, &[]).map_err(|e| format!("`modifiers`: {e}")))
            .collect::<Result<_, _>>()?,
    };
    Ok(BufferDesc::Image(ImageDesc { width, height, format, modifiers }))
}

fn create(a: &Args<'_>) -> Result<Op, String> {
    a.keys(&["size", "image", "format", "modifiers", "usage", "name"])?;
    let [b] = a.positional(&["BUFFER"])?[..] else { unreachable!("positional checked the count") };
    let desc = match (a.get("size"), a.get("image")) {
        (Some(s), None) => {
            if a.get("format").is_some() || a.get("modifiers").is_some() {
                return Err("`format` and `modifiers` go with `image=`, not `size=`".into());
            }
            BufferDesc::Size(size(s)?)
        }
        (None, Some(dims)) => image(a, dims)?,
        _ => return Err("`create` needs exactly one of `size=` and `image=`".into()),
    };
    let usage = a.get("usage").map_or(Ok(Usage::empty()), |u| usage("usage", u))?;
    Ok(Op::Create { buf: buf(b)?, desc, usage, name: a.get("name").unwrap_or_default().to_owned() })
}

/// `16ms`, `2s`, `1500us`, `10ns`, `5min`, `2h`.
pub(super) fn duration(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("a duration is a whole number with a unit (ns, us, ms, s, min, h), got `{text}`")),
    };
    let n: u64 = num.parse().map_err(|_| format!("a duration needs a whole number before `{unit}`, got `{text}`"))?;
    n.checked_mul(scale).ok_or_else(|| format!("duration `{text}` is over {} ns", u64::MAX))
}

fn access(text: &str) -> Result<CpuAccess, String> {
    match text {
        "read" => Ok(CpuAccess::Read),
        "write" => Ok(CpuAccess::Write),
        "readwrite" => Ok(CpuAccess::ReadWrite),
        _ => Err(format!("CPU access is read, write or readwrite, got `{text}`")),
    }
}

fn other(a: &Args<'_>) -> Result<Op, String> {
    a.keys(&["fill", "churn"])?;
    a.positional(&[])?;
    match (a.get("fill"), a.get("churn")) {
        (Some(f), None) => Ok(Op::OtherFill { fill: fraction("fill", f)? }),
        (None, Some(n)) => {
            let steps: u32 = number("churn", n)?;
            if steps > MAX_CHURN {
                return Err(format!("`churn` is at most {MAX_CHURN} steps per line, got {steps}"));
            }
            Ok(Op::OtherChurn { steps })
        }
        _ => Err("`other` takes exactly one of `fill=` and `churn=`".into()),
    }
}

fn event(verb: &str, a: &Args<'_>) -> Result<Option<Op>, String> {
    let simple = |what: &[&str]| -> Result<Vec<&str>, String> {
        a.keys(&[])?;
        a.positional(what)
    };
    let op = match verb {
        "create" => create(a)?,
        "attach" => {
            a.keys(&["hints"])?;
            let [at, b, dev] = a.positional(&["ATTACHMENT", "BUFFER", "DEVICE"])?[..] else { unreachable!() };
            let hints = a.get("hints").map_or(Ok(Usage::empty()), |h| usage("hints", h))?;
            Op::Attach { att: att(at)?, buf: buf(b)?, device: dev.to_owned(), hints }
        }
        "map" => {
            let [m, at] = simple(&["MAPPING", "ATTACHMENT"])?[..] else { unreachable!() };
            Op::Map { map: map(m)?, att: att(at)? }
        }
        "fence" => {
            let [f, m] = simple(&["FENCE", "MAPPING"])?[..] else { unreachable!() };
            Op::Fence { fence: fence(f)?, map: map(m)? }
        }
        "signal" => Op::Signal { fence: fence(simple(&["FENCE"])?[0])? },
        "cpu-begin" => {
            let [b, acc] = simple(&["BUFFER", "read|write|readwrite"])?[..] else { unreachable!() };
            Op::CpuBegin { buf: buf(b)?, access: access(acc)? }
        }
        "cpu-end" => Op::CpuEnd { buf: buf(simple(&["BUFFER"])?[0])? },
        "unmap" => Op::Unmap { map: map(simple(&["MAPPING"])?[0])? },
        "detach" => Op::Detach { att: att(simple(&["ATTACHMENT"])?[0])? },
        "release" => Op::Release { buf: buf(simple(&["BUFFER"])?[0])? },
        "advance" => Op::Advance { ns: duration(simple(&["DURATION"])?[0])? },
        "other" => other(a)?,
        _ => return Ok(None),
    };
    Ok(Some(op))
}

fn background(a: &Args<'_>) -> Result<BackgroundLoad, String> {
    a.keys(&["fill", "prefill", "movable", "cma-share", "max-order"])?;
    a.positional(&[])?;
    let f = |k: &str| a.require(k).and_then(|v| fraction(k, v));
    let (fill, prefill, movable, cma_share) = (f("fill")?, f("prefill")?, f("movable")?, f("cma-share")?);
    let max_order: u32 = number("max-order", a.require("max-order")?)?;
    if max_order > 20 {
        return Err(format!("`max-order` is at most 20 (4 GiB blocks), got {max_order}"));
    }
    Ok(BackgroundLoad { fill, prefill, movable, cma_share, max_order })
}

/// A header line; `Ok(false)` when the verb is not a header verb.
fn header_line(verb: &str, a: &Args<'_>, h: &mut Header) -> Result<bool, String> {
    match verb {
        "platform" => {
            a.keys(&[])?;
            let [p] = a.positional(&["NAME"])?[..] else { unreachable!() };
            set_once(&mut h.platform, p.to_owned(), "platform")?;
        }
        "seed" => {
            a.keys(&[])?;
            let [s] = a.positional(&["N"])?[..] else { unreachable!() };
            set_once(&mut h.seed, number("seed", s)?, "seed")?;
        }
        "background" => set_once(&mut h.background, background(a)?, "background")?,
        "meta" => {
            a.positional(&[])?;
            for t in &a.keyed {
                h.meta.push((t.key.clone().unwrap_or_default(), t.value.clone()));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("`{what}` is given twice"));
    }
    *slot = Some(value);
    Ok(())
}

pub(super) fn parse(file: &str, text: &str) -> Result<Trace, TraceError> {
    let err = |line: usize, message: String| TraceError { file: file.to_owned(), line, message };
    let mut trace = Trace::default();
    let mut life = Lifecycle::new();
    let mut seen_magic = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let tokens = tokenize(raw).map_err(|m| err(line, m))?;
        let Some(first) = tokens.first() else { continue };
        if first.key.is_some() {
            return Err(err(line, format!("a line starts with a verb, not `{}=`", first.key.as_deref().unwrap_or(""))));
        }
        let verb = first.value.as_str();
        let a = Args::new(verb, &tokens[1..]);
        if !seen_magic {
            let version = a.positional.first().map(|t| t.value.as_str());
            if verb != MAGIC || a.positional.len() != 1 || !a.keyed.is_empty() {
                return Err(err(line, format!("a trace starts with `{MAGIC} {VERSION}`, got `{}`", raw.trim())));
            }
            if version != Some(&VERSION.to_string()) {
                return Err(err(
                    line,
                    format!(
                        "trace format version {} is not supported; this build reads version {VERSION}",
                        version.unwrap_or("?")
                    ),
                ));
            }
            seen_magic = true;
            continue;
        }
        if trace.ops.is_empty() && header_line(verb, &a, &mut trace.header).map_err(|m| err(line, m))? {
            continue;
        }
        match event(verb, &a).map_err(|m| err(line, m))? {
            Some(op) => {
                life.apply(&op, line).map_err(|m| err(line, format!("{}: {m}", op.verb())))?;
                trace.ops.push(op);
            }
            None if matches!(verb, "platform" | "seed" | "background" | "meta") => {
                return Err(err(line, format!("`{verb}` belongs in the header, before the first event")));
            }
            None => {
                return Err(err(
                    line,
                    format!(
                        "unknown verb `{verb}`; events: create, attach, map, fence, signal, cpu-begin, cpu-end, unmap, detach, release, advance, other"
                    ),
                ));
            }
        }
    }
    if !seen_magic {
        return Err(err(1, format!("empty trace: a trace starts with `{MAGIC} {VERSION}`")));
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keys_quotes_and_comments() {
        let t = tokenize(r#"create b1 name="a \"b\" c" size=8MiB # trailing"#).unwrap();
        let view: Vec<(Option<&str>, &str, usize)> =
            t.iter().map(|t| (t.key.as_deref(), t.value.as_str(), t.col)).collect();
        assert_eq!(
            view,
            [(None, "create", 1), (None, "b1", 8), (Some("name"), "a \"b\" c", 11), (Some("size"), "8MiB", 28)]
        );
        assert_eq!(tokenize("map m1 a1@").unwrap_err(), "unexpected character '@' at column 10");
        assert_eq!(tokenize(r#"x name="open"#).unwrap_err(), "the string opened at column 8 is not closed");
    }

    #[test]
    fn durations() {
        assert_eq!(duration("16ms"), Ok(16_000_000));
        assert_eq!(duration("2h"), Ok(7_200_000_000_000));
        assert!(duration("16").unwrap_err().contains("unit"));
        assert!(duration("99999999999999h").unwrap_err().contains("over"));
    }
}
