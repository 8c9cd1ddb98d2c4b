//! Finding platforms: by path, from `./platforms/`, or built in.

use std::path::Path;

use anyhow::{Context, Result, bail};
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

fn from_file(path: &Path) -> Result<Platform> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read platform file {}", path.display()))?;
    Ok(Platform::from_toml(&path.display().to_string(), &text)?)
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
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in rows {
        let default = if r.name == builtin::DEFAULT_PLATFORM { " (default)" } else { "" };
        println!("{:width$}  {}{default}", r.name, r.description);
        println!("{:width$}  devices: {}", "", r.devices.join(", "));
    }
    Ok(())
}

/// `dmaplace devices --platform X`.
pub fn list_devices(arg: &str, json: bool) -> Result<()> {
    let p = platform(arg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p.devices)?);
        return Ok(());
    }
    println!("{}: {}", p.name, p.description);
    for d in &p.devices {
        println!();
        print!("{}", crate::report::device(&p, d));
    }
    Ok(())
}
