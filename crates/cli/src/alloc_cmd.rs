//! `dmaplace alloc`: solve a plan, then allocate it on this machine's kernel and, as
//! root, show and verify where the kernel put it.

use anyhow::{Result, anyhow, bail};
use clap::Args;
use dmaplace_core::backend::Backend;
use dmaplace_core::{SolveError, solve};
use dmaplace_linux::{Inventory, LinuxBackend, LinuxError, Source};

use crate::out::{out, outln};
use crate::request::RequestArgs;
use crate::{Outcome, report};

#[derive(Args, Debug)]
pub struct AllocArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Allocate from this source instead of the one dmaplace picks:
    /// `heap:<name>`, `udmabuf`, `udmabuf-huge` or `memfd`.
    #[arg(long)]
    source: Option<String>,
    /// Allow the memfd fallback (CPU memory, not a dma-buf) when there is no dma-buf
    /// exporter.
    #[arg(long)]
    allow_memfd: bool,
    /// Name of the buffer (shown in /sys/kernel/debug/dma_buf/bufinfo; 31 bytes kept).
    #[arg(long, default_value = "dmaplace-alloc")]
    name: String,
}

fn parse_source(s: &str) -> Result<Source> {
    Ok(match s {
        "udmabuf" => Source::Udmabuf,
        "udmabuf-huge" => Source::UdmabufHuge,
        "memfd" => Source::Memfd,
        _ => match s.strip_prefix("heap:") {
            Some(name) if !name.is_empty() => Source::Heap(name.to_owned()),
            _ => bail!("--source {s:?}: expected heap:<name>, udmabuf, udmabuf-huge or memfd"),
        },
    })
}

pub fn run(args: &AllocArgs) -> Result<Outcome> {
    let parsed = args.request.parse()?;
    let source = args.source.as_deref().map(parse_source).transpose()?;
    let p = &parsed.platform;
    let plan = match solve(p, &parsed.desc, &parsed.requests()) {
        Ok(plan) => plan,
        Err(SolveError::Conflict(c)) => {
            out!("{}", report::conflict(&c));
            return Ok(Outcome::Unsatisfiable);
        }
        Err(SolveError::Invalid(e)) => bail!("{e}"),
    };
    out!("{}", report::plan(p, &plan));
    outln!();

    let inv = Inventory::probe();
    outln!("This machine:");
    out!("{inv}");
    outln!();
    if !inv.has_dma_buf() && !args.allow_memfd && source != Some(Source::Memfd) {
        bail!(
            "this machine has no dma-buf exporter: no dma-heap in /dev/dma_heap and no /dev/udmabuf, so nothing can be allocated for devices here \
             (the development host's kernel has neither). Run dmaplace's Linux backends on real kernels with the qemu rig: vm/test-linux.sh \
             (docs/VM.md), or pass --allow-memfd for CPU-only memory"
        );
    }
    // As root, record CMA allocations through the debugfs bitmap: cheaper than /proc/kcore.
    let root = inv.root;
    let mut be = LinuxBackend::with_inventory(inv)
        .allow_memfd(args.allow_memfd || source == Some(Source::Memfd))
        .track_cma(root);
    let allocated = match &source {
        Some(s) => be.allocate_from(s, &plan, &args.name),
        None => be.allocate(&plan, &args.name),
    };
    let buf = match allocated {
        Ok(buf) => buf,
        Err(LinuxError::NoFit(e)) => {
            outln!("Cannot allocate on this kernel:");
            out!("{e}");
            return Ok(Outcome::Unsatisfiable);
        }
        Err(e) => return Err(e.into()),
    };
    outln!("Allocated {} from {} as `{}`.", buf.size(), buf.source(), buf.name());
    if !buf.is_dma_buf() {
        outln!("  memfd fallback: not a dma-buf (no device can import it); its pages are neither pinned nor placed.");
    }
    if !be.inventory().root {
        outln!(
            "Not root: where the kernel put the pages is hidden (pagemap, debugfs and /proc/kcore need root); run as root to see and verify the physical layout."
        );
        be.free(buf);
        return Ok(Outcome::Ok);
    }
    let (runs, method) = be.placement(&buf)?;
    outln!("Physical layout ({} run(s), seen through {method}):", runs.len());
    for (i, r) in runs.iter().enumerate().take(32) {
        outln!("  [{i}] {r} ({})", r.len());
    }
    if runs.len() > 32 {
        outln!("  ... {} more", runs.len() - 32);
    }
    match be.verify(&plan, &buf) {
        Ok(_) => outln!(
            "Verified: the placement meets every device's constraints ({}).",
            plan.devices.iter().map(|d| d.device.as_str()).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => {
            be.free(buf);
            return Err(anyhow!("{e}"));
        }
    }
    be.free(buf);
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(parse_source("heap:system").unwrap(), Source::Heap("system".into()));
        assert_eq!(parse_source("udmabuf-huge").unwrap(), Source::UdmabufHuge);
        assert!(parse_source("heap:").unwrap_err().to_string().contains("expected heap:<name>"));
    }
}
