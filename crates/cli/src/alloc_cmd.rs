//! `dmaplace alloc`: solve a plan, then allocate it on this machine's kernel and, as
//! root, show and verify where the kernel put it.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use dmaplace_core::backend::Backend;
use dmaplace_core::layout::{parse_fourcc, parse_modifier};
use dmaplace_core::{BufferDesc, ImageDesc, Platform, Request, Size, SolveError, solve};
use dmaplace_linux::{Inventory, LinuxBackend, LinuxError, Source};

use crate::{Outcome, load, report, solve_cmd};

#[derive(Args, Debug)]
pub struct AllocArgs {
    /// Platform name (built in, or platforms/<name>.toml) or path to a TOML file.
    #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
    platform: String,
    /// A device and its usage hints: `dss:scanout` or `sgx:rendering,texturing`. Repeat.
    #[arg(long = "device", short = 'd', required = true)]
    devices: Vec<String>,
    /// Buffer size for a raw buffer: `8MiB`, `4096`, `0x1000`.
    #[arg(long, conflicts_with_all = ["image", "format", "modifier"], required_unless_present = "image")]
    size: Option<String>,
    /// Image dimensions, `WIDTHxHEIGHT`.
    #[arg(long, requires = "format")]
    image: Option<String>,
    /// DRM fourcc of the image: XR24, NV12, P010, ...
    #[arg(long, requires = "image")]
    format: Option<String>,
    /// Acceptable modifier (name or number); repeat. Default: any.
    #[arg(long, requires = "image")]
    modifier: Vec<String>,
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

fn parse_desc(args: &AllocArgs, p: &Platform) -> Result<BufferDesc> {
    if let Some(size) = &args.size {
        let size: Size = size.parse().context("--size")?;
        return Ok(BufferDesc::Size(size));
    }
    let image = args.image.as_deref().ok_or_else(|| anyhow!("give --size or --image"))?;
    let (w, h) = image
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow!("--image {image:?}: expected WIDTHxHEIGHT, e.g. 1920x1080"))?;
    let dim = |t: &str, what: &str| {
        t.trim().parse::<u32>().map_err(|_| anyhow!("--image {image:?}: {what} {t:?} is not a number"))
    };
    let format = args.format.as_deref().ok_or_else(|| anyhow!("--image needs --format"))?;
    let format = parse_fourcc(format).map_err(|e| anyhow!("--format: {e}"))?;
    let modifiers = args
        .modifier
        .iter()
        .map(|m| parse_modifier(m, &p.modifiers).map_err(|e| anyhow!("--modifier: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(BufferDesc::Image(ImageDesc { width: dim(w, "width")?, height: dim(h, "height")?, format, modifiers }))
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
    let p = load::platform(&args.platform)?;
    let specs = args.devices.iter().map(|d| solve_cmd::parse_device_spec(&p, d)).collect::<Result<Vec<_>>>()?;
    let desc = parse_desc(args, &p)?;
    let source = args.source.as_deref().map(parse_source).transpose()?;
    let requests: Vec<Request<'_>> = specs
        .iter()
        .map(|(name, hints)| Request { device: p.device(name).expect("checked by parse_device_spec"), hints: *hints })
        .collect();
    let plan = match solve(&p, &desc, &requests) {
        Ok(plan) => plan,
        Err(SolveError::Conflict(c)) => {
            print!("{}", report::conflict(&c));
            return Ok(Outcome::Unsatisfiable);
        }
        Err(SolveError::Invalid(e)) => bail!("{e}"),
    };
    print!("{}", report::plan(&p, &plan));
    println!();

    let inv = Inventory::probe();
    println!("This machine:");
    print!("{inv}");
    println!();
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
            println!("Cannot allocate on this kernel:");
            print!("{e}");
            return Ok(Outcome::Unsatisfiable);
        }
        Err(e) => return Err(e.into()),
    };
    println!("Allocated {} from {} as `{}`.", buf.size(), buf.source(), buf.name());
    if !buf.is_dma_buf() {
        println!("  memfd fallback: not a dma-buf (no device can import it); its pages are neither pinned nor placed.");
    }
    if !be.inventory().root {
        println!(
            "Not root: where the kernel put the pages is hidden (pagemap, debugfs and /proc/kcore need root); run as root to see and verify the physical layout."
        );
        be.free(buf);
        return Ok(Outcome::Ok);
    }
    let (runs, method) = be.placement(&buf)?;
    println!("Physical layout ({} run(s), seen through {method}):", runs.len());
    for (i, r) in runs.iter().enumerate().take(32) {
        println!("  [{i}] {r} ({})", r.len());
    }
    if runs.len() > 32 {
        println!("  ... {} more", runs.len() - 32);
    }
    match be.verify(&plan, &buf) {
        Ok(_) => println!(
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
