//! `dmaplace probe`: this machine's platform file, from sysfs and procfs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dmaplace_core::{BufferDesc, Platform, Request, Size, Usage, solve};
use dmaplace_linux::probe::{Root, probe};

use crate::Outcome;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Write the platform file here instead of stdout.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Read a tree laid out like `/` under this directory (fixtures, other machines' dumps).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Also load the file and solve a 4 MiB buffer for each device; report on stderr.
    #[arg(long)]
    check: bool,
}

pub fn run(args: &ProbeArgs) -> Result<Outcome> {
    let probed = probe(&Root::at(&args.root));
    let text = probed.to_toml();
    match &args.out {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "probe: {} RAM bank(s), {} CMA area(s), {} IOMMU unit(s), {} device(s), {} unknown(s)",
        probed.banks.len(),
        probed.cma.len(),
        probed.iommus.len(),
        probed.devices.len(),
        probed.unknowns.len()
    );
    if args.check {
        let platform = Platform::from_toml("probe", &text).context("the probed platform does not load")?;
        for d in &platform.devices {
            let plan =
                solve(&platform, &BufferDesc::Size(Size::mib(4)), &[Request { device: d, hints: Usage::empty() }])
                    .map_err(|e| anyhow::anyhow!("solving 4 MiB for `{}`: {e}", d.name))?;
            eprintln!("probe: `{}`: 4 MiB solves within {}", d.name, plan.placement);
        }
    }
    Ok(Outcome::Ok)
}
