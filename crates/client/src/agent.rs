//! A client driven by text commands, one per line, each answered by one JSON line:
//! what `dmaplace client shell` runs, and what the multi-process tests drive in each of
//! their processes.
//!
//! ```text
//! create size BYTES NAME              {"ok":true,"buffer":1,"token":"<32 hex>","size":..}
//! create image WxH FOURCC NAME
//! attach TOKEN DEVICE HINTS           HINTS: SCANOUT,RENDERING or -
//! map ATT                             {"ok":true,"mapping":..,"generation":..,"size":..,"fourcc":..,"planes":[[off,pitch]..]}
//! write MAP SEED                      fills the mapping's bytes with a pattern; {"checksum":..}
//! read MAP                            {"checksum":..} of the mapping's bytes
//! begin MAP | end MAP | unmap MAP | detach ATT | release BUF
//! status | inspect
//! wait-moved MS                       {"ok":true,"moved":{..}} or {"ok":true,"timeout":true}
//! quit
//! ```
//! Failures answer `{"ok":false,"code":"busy","message":"..."}`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use dmaplace_linux::sys::ioctl::{DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, dma_buf_sync};
use dmaplace_linux::sys::map::RawMap;
use serde_json::{Value, json};

use crate::{Client, Desc, Error, Event, Layout, Token, hints};

struct Held {
    fd: OwnedFd,
    layout: Layout,
}

/// Runs commands from `input` until `quit` or its end, answering on `output`.
pub fn run(client: &mut Client, input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    for line in input.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words[0] == "quit" {
            break;
        }
        let answer = match step(client, &mut held, &words) {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => failure(&e),
        };
        writeln!(output, "{answer}")?;
        output.flush()?;
    }
    Ok(())
}

fn failure(e: &Error) -> Value {
    match e {
        Error::Daemon(r) => json!({"ok": false, "code": r.code.name(), "message": r.message}),
        other => json!({"ok": false, "code": "client", "message": other.to_string()}),
    }
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize, what: &str) -> Result<T, Error> {
    words
        .get(i)
        .ok_or_else(|| Error::Protocol(format!("`{}` needs {what}", words[0])))?
        .parse()
        .map_err(|_| Error::Protocol(format!("`{}`: {what} {:?} does not parse", words[0], words[i])))
}

fn bad(msg: String) -> Error {
    Error::Protocol(msg)
}

fn step(client: &mut Client, held: &mut BTreeMap<u32, Held>, w: &[&str]) -> Result<Value, Error> {
    Ok(match w[0] {
        "create" => {
            let desc = match w.get(1).copied() {
                Some("size") => Desc::Size(arg(w, 2, "a size in bytes")?),
                Some("image") => {
                    let dims: String = arg(w, 2, "WxH")?;
                    let (wd, ht) = dims.split_once('x').ok_or_else(|| bad(format!("`{dims}` is not WxH")))?;
                    let fourcc: String = arg(w, 3, "a fourcc")?;
                    let code: [u8; 4] = fourcc
                        .as_bytes()
                        .try_into()
                        .map_err(|_| bad(format!("fourcc `{fourcc}` is not 4 characters")))?;
                    Desc::Image {
                        width: wd.parse().map_err(|_| bad(format!("width `{wd}`")))?,
                        height: ht.parse().map_err(|_| bad(format!("height `{ht}`")))?,
                        fourcc: u32::from_le_bytes(code),
                        modifiers: Vec::new(),
                    }
                }
                _ => return Err(bad("create size BYTES NAME | create image WxH FOURCC NAME".into())),
            };
            let name = w.last().copied().unwrap_or("buffer");
            let c = client.create(desc, name)?;
            json!({"buffer": c.buffer, "token": c.token.to_hex(), "size": c.size})
        }
        "attach" => {
            let token = Token::from_hex(&arg::<String>(w, 1, "a token")?).map_err(bad)?;
            let device: String = arg(w, 2, "a device")?;
            let bits = hints::parse(w.get(3).copied().unwrap_or("-")).map_err(bad)?;
            let a = client.attach(&token, &device, bits)?;
            json!({"attachment": a.attachment, "buffer": a.buffer, "how": format!("{:?}", a.how)})
        }
        "map" => {
            let m = client.map(arg(w, 1, "an attachment")?)?;
            let planes: Vec<[u32; 2]> = m.layout.planes.iter().map(|p| [p.offset, p.pitch]).collect();
            let v = json!({"mapping": m.mapping, "generation": m.generation, "size": m.layout.size,
                           "fourcc": m.layout.fourcc, "modifier": m.layout.modifier, "planes": planes});
            held.insert(m.mapping, Held { fd: m.fd, layout: m.layout });
            v
        }
        "write" | "read" => {
            let mapping: u32 = arg(w, 1, "a mapping")?;
            let h = held.get(&mapping).ok_or_else(|| bad(format!("no mapping {mapping} here")))?;
            let seed = if w[0] == "write" { Some(arg::<u64>(w, 2, "a seed")?) } else { None };
            json!({"checksum": cpu(h, seed).map_err(bad)?})
        }
        "begin" => {
            client.begin_access(arg(w, 1, "a mapping")?)?;
            json!({})
        }
        "end" => {
            client.end_access(arg(w, 1, "a mapping")?)?;
            json!({})
        }
        "unmap" => {
            let mapping: u32 = arg(w, 1, "a mapping")?;
            client.unmap(mapping)?;
            held.remove(&mapping);
            json!({})
        }
        "detach" => {
            client.detach(arg(w, 1, "an attachment")?)?;
            json!({})
        }
        "release" => {
            client.release(arg(w, 1, "a buffer")?)?;
            json!({})
        }
        "status" => {
            let s = client.status()?;
            let buffers: Vec<Value> = s
                .buffers
                .iter()
                .map(|b| json!({"buffer": b.buffer, "name": b.name, "size": b.size, "allocated": b.allocated,
                                "generation": b.generation, "creator": b.creator,
                                "attachments": b.attachments.iter().map(|a| json!({"attachment": a.attachment, "device": a.device, "mappings": a.mappings})).collect::<Vec<_>>()}))
                .collect();
            json!({"bytes": s.bytes, "fds": s.fds, "buffers": buffers})
        }
        "inspect" => {
            let text = client.inspect()?;
            json!({"inspect": serde_json::from_str::<Value>(&text).map_err(|e| bad(e.to_string()))?})
        }
        "wait-moved" => {
            let ms: u64 = arg(w, 1, "milliseconds")?;
            match client.next_event(Duration::from_millis(ms))? {
                Some(Event::Moved { buffer, attachment, generation, invalidated }) => {
                    json!({"moved": {"buffer": buffer, "attachment": attachment, "generation": generation, "invalidated": invalidated}})
                }
                None => json!({"timeout": true}),
            }
        }
        "sleep" => {
            std::thread::sleep(Duration::from_millis(arg(w, 1, "milliseconds")?));
            json!({})
        }
        other => return Err(bad(format!("unknown command `{other}`"))),
    })
}

/// Writes the pattern of `seed` over the mapping (or reads it) between
/// `DMA_BUF_IOCTL_SYNC` start and end (not a dma-buf: no sync), and returns the digest.
fn cpu(h: &Held, seed: Option<u64>) -> Result<u64, String> {
    let len = usize::try_from(h.layout.size).map_err(|e| e.to_string())?;
    let mut map = RawMap::shared(h.fd.as_fd(), len, 0, seed.is_some()).map_err(|e| format!("mmap: {e}"))?;
    let dir = if seed.is_some() { DMA_BUF_SYNC_WRITE } else { DMA_BUF_SYNC_READ };
    let synced = dma_buf_sync(h.fd.as_fd(), dir).is_ok();
    if let Some(s) = seed {
        dmaplace_linux::backend::fill_pattern(map.as_mut_slice(), s);
    }
    let digest = dmaplace_linux::backend::digest(map.as_slice());
    if synced {
        dma_buf_sync(h.fd.as_fd(), dir | DMA_BUF_SYNC_END).map_err(|e| format!("DMA_BUF_IOCTL_SYNC end: {e}"))?;
    }
    Ok(digest)
}
