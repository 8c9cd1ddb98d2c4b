//! Finding platforms: by path, from `./platforms/`, or built in.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use crate::out::{out, outln};
use anyhow::{Context, Result, anyhow, bail};
use dmaplace_core::{Platform, builtin};
use serde::Serialize;

/// Loads a platform named `arg`: a path when it contains `/` or ends in `.toml`; otherwise
/// `platforms/<arg>.toml` under the current directory if present, else the built-in one.
pub fn platform(arg: &str) -> Result<Platform> {
    if arg.contains('/') || arg.ends_with(".toml") {
        return from_file(Path::new(arg));
    }
    let local = Path::new("platforms").join(format!("{arg}.toml"));
    if local.is_file() {
        return from_file(&local);
    }
    match builtin::load(arg) {
        Some(parsed) => Ok(parsed?),
        None => {
            let known: Vec<&str> = builtin::names().collect();
            bail!("unknown platform `{arg}`; built-in platforms: {} (or give a path to a .toml file)", known.join(", "))
        }
    }
}

/// The largest platform file read; the built-in ones are under 10 KiB.
pub const MAX_PLATFORM_FILE: u64 = 1 << 20;

/// Reads a platform file: a regular file (opened without blocking, so a FIFO or a device
/// fails at once), at most [`MAX_PLATFORM_FILE`] bytes, UTF-8, whose platform `name` is
/// its file name.
fn from_file(path: &Path) -> Result<Platform> {
    let shown = path.display();
    let bytes = read_regular(path).with_context(|| format!("cannot read platform file {shown}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let (line, column) = line_col(&bytes[..e.valid_up_to()]);
        let byte = bytes[e.valid_up_to()];
        anyhow!(
            "{shown}:{line}:{column}: not UTF-8: byte {byte:#04x} at offset {} (platform files are UTF-8 TOML)",
            e.valid_up_to()
        )
    })?;
    Ok(Platform::from_file(&shown.to_string(), text)?)
}

fn read_regular(path: &Path) -> Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it has no effect on files.
    let nonblock = i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).expect("O_NONBLOCK fits an int");
    let file = std::fs::OpenOptions::new().read(true).custom_flags(nonblock).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file but {}", file_kind(&meta.file_type()));
    }
    if meta.len() > MAX_PLATFORM_FILE {
        bail!("{} bytes is over the {MAX_PLATFORM_FILE}-byte limit for a platform file", meta.len());
    }
    let mut bytes = Vec::new();
    file.take(MAX_PLATFORM_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PLATFORM_FILE {
        bail!("it grew past the {MAX_PLATFORM_FILE}-byte limit for a platform file while being read");
    }
    Ok(bytes)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// 1-based line and column just after `prefix` (valid UTF-8).
fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = prefix.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&prefix[line_start..]).chars().count() + 1;
    (line, column)
}

#[derive(Serialize)]
struct PlatformSummary {
    name: String,
    description: String,
    devices: Vec<String>,
}

/// `dmaplace platforms`.
pub fn list_platforms(json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for name in builtin::names() {
        let p = platform(name)?;
        rows.push(PlatformSummary {
            name: p.name,
            description: p.description,
            devices: p.devices.iter().map(|d| d.name.clone()).collect(),
        });
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in rows {
        let default = if r.name == builtin::DEFAULT_PLATFORM { " (default)" } else { "" };
        outln!("{:width$}  {}{default}", r.name, r.description);
        outln!("{:width$}  devices: {}", "", r.devices.join(", "));
    }
    Ok(())
}

/// `dmaplace devices --platform X`.
pub fn list_devices(arg: &str, json: bool) -> Result<()> {
    let p = platform(arg)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&p.devices)?);
        return Ok(());
    }
    outln!("{}: {}", p.name, p.description);
    for d in &p.devices {
        outln!();
        out!("{}", crate::report::device(&p, d));
    }
    Ok(())
}
