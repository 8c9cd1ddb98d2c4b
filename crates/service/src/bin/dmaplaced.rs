//! `dmaplaced`: serves deferred dma-buf allocation to the processes that share buffers.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use dmaplace_core::exporter::BusyPolicy;
use dmaplace_core::{Platform, Size};
use dmaplace_eval::trace::Header;
use dmaplace_service::kmod::KmodEngine;
use dmaplace_service::{
    Engine, HeapPlacer, Limits, Server, ServerConfig, Service, ServiceConfig, SimPlacer, TraceRecorder,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The kernel module when /dev/dmaplace and /dev/dmaplace_testdev exist, else the
    /// dma-heaps/udmabuf when there are any, else memfd.
    Auto,
    /// The simulated machine (memfds hold the bytes): for tests and benchmarks.
    Sim,
    /// This kernel's dma-heaps, udmabuf (and memfd with --allow-memfd).
    Heaps,
    /// The dmaplace kernel module is the exporter (docs/KERNEL.md): it places and moves
    /// the pages; the daemon brokers tokens, fds, attaches and moves. Needs root, debugfs,
    /// dmaplace.ko and dmaplace_testdev.ko.
    Kmod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BusyArg {
    /// Refuse a late attach that needs a move while DMA is in flight.
    Refuse,
    /// Accept it; the move runs when the last access ends.
    Queue,
}

/// Serves deferred dma-buf allocation over a Unix SOCK_SEQPACKET socket (docs/PROTOCOL.md).
#[derive(Parser, Debug)]
#[command(name = "dmaplaced", version)]
struct Args {
    /// The socket [default: $XDG_RUNTIME_DIR/dmaplace.sock, else /run/dmaplace.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where memory comes from.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// `probe` (this machine, read from sysfs/procfs), a built-in platform name, or a TOML file.
    #[arg(long, default_value = "probe")]
    platform: String,
    /// The simulated machine's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A late attach needing a move while DMA is in flight.
    #[arg(long, value_enum, default_value = "refuse")]
    busy: BusyArg,
    /// The group to give the socket file (mode 0660): members may connect if --allow-gid lets them.
    #[arg(long)]
    socket_group: Option<u32>,
    /// Users allowed to connect (root and the daemon's own user always are).
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Groups (the peer's effective gid) allowed to connect.
    #[arg(long = "allow-gid")]
    allow_gids: Vec<u32>,
    /// Users allowed to `inspect` [default: root and the daemon's own user].
    #[arg(long = "admin-uid")]
    admin_uids: Vec<u32>,
    /// Per-client bytes of buffers created.
    #[arg(long, default_value = "1GiB")]
    max_bytes: String,
    /// Per-client buffers held.
    #[arg(long, default_value_t = 256)]
    max_buffers: u32,
    /// Per-client live mappings (fds handed out).
    #[arg(long, default_value_t = 256)]
    max_fds: u32,
    /// Per-client attachments.
    #[arg(long, default_value_t = 1024)]
    max_attachments: u32,
    /// Seconds a client has to say hello, and to take a queued reply.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Malformed messages before a client is disconnected.
    #[arg(long, default_value_t = 3)]
    max_malformed: u32,
    /// Allow the memfd fallback (CPU memory, no device can import it).
    #[arg(long)]
    allow_memfd: bool,
    /// Record the session as a trace (docs/TRACE.md) for `dmaplace sim --trace FILE`; with
    /// `--platform probe` the probed platform is written next to it (FILE.platform.toml).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

fn load_platform(spec: &str) -> anyhow::Result<Platform> {
    if spec == "probe" {
        let probed = dmaplace_linux::probe::probe(&dmaplace_linux::probe::Root::system());
        tracing::info!(unknowns = probed.unknowns.len(), "platform probed from this machine");
        return Platform::from_toml("probe", &probed.to_toml()).context("the probed platform does not load");
    }
    if spec.contains('/') || spec.ends_with(".toml") {
        let text = std::fs::read_to_string(spec).with_context(|| format!("reading platform file {spec}"))?;
        return Platform::from_toml(spec, &text).map_err(Into::into);
    }
    match dmaplace_core::builtin::load(spec) {
        Some(p) => p.map_err(Into::into),
        None => bail!(
            "no platform `{spec}`: give `probe`, a built-in name ({}) or a .toml path",
            dmaplace_core::builtin::names().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The recorder for `--record FILE`: the trace names a platform `dmaplace sim` can load.
fn recorder(
    args: &Args,
    path: &std::path::Path,
    platform: &Platform,
    backend: &str,
) -> anyhow::Result<TraceRecorder<std::io::BufWriter<std::fs::File>>> {
    let platform_ref = if args.platform == "probe" {
        let file = PathBuf::from(format!("{}.platform.toml", path.display()));
        let probed = dmaplace_linux::probe::probe(&dmaplace_linux::probe::Root::system());
        std::fs::write(&file, probed.to_toml()).with_context(|| format!("writing {}", file.display()))?;
        file.display().to_string()
    } else {
        args.platform.clone()
    };
    let mut header = Header { platform: Some(platform_ref), ..Header::default() };
    if args.backend == BackendArg::Sim {
        header.seed = Some(args.seed);
    }
    header.meta = vec![
        ("recorder".into(), "dmaplaced".into()),
        ("backend".into(), backend.into()),
        ("platform-name".into(), platform.name.clone()),
        ("busy".into(), format!("{:?}", args.busy).to_lowercase()),
    ];
    let r = TraceRecorder::create(path, &header).with_context(|| format!("--record {}", path.display()))?;
    tracing::info!(trace = %path.display(), "recording the session");
    Ok(r)
}

fn serve<E: Engine>(service: Service<E>, config: ServerConfig) -> anyhow::Result<()> {
    let (stop_read, stop_write) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
            .context("pipe for SIGTERM")?;
    let again = stop_write.try_clone().context("dup of the SIGTERM pipe")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, stop_write).context("SIGTERM handler")?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, again).context("SIGINT handler")?;
    let mut server = Server::bind(service, config)?;
    server.run(stop_read.as_fd())?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let own = rustix::process::geteuid().as_raw();
    let limits = Limits {
        bytes: args.max_bytes.parse::<Size>().map_err(|e| anyhow::anyhow!("--max-bytes: {e}"))?.bytes(),
        buffers: args.max_buffers,
        fds: args.max_fds,
        attachments: args.max_attachments,
    };
    let config = ServiceConfig {
        limits,
        admins: if args.admin_uids.is_empty() { vec![0, own] } else { args.admin_uids.clone() },
        busy: match args.busy {
            BusyArg::Refuse => BusyPolicy::Refuse,
            BusyArg::Queue => BusyPolicy::Queue,
        },
    };
    let mut server = ServerConfig::new(args.socket.clone().unwrap_or_else(dmaplace_service::default_socket));
    server.socket_group = args.socket_group;
    server.allow_uids = args.allow_uids.clone();
    server.allow_gids = args.allow_gids.clone();
    server.handshake_timeout = Duration::from_secs_f64(args.timeout);
    server.send_timeout = Duration::from_secs_f64(args.timeout);
    server.max_malformed = args.max_malformed;
    let module = std::path::Path::new(dmaplace_linux::kmod::DEV_DMAPLACE).exists();
    let backend = match args.backend {
        BackendArg::Auto if module && args.record.is_none() => match KmodEngine::open(config.busy) {
            Ok(engine) => return serve(Service::with_engine(engine, config), server),
            Err(e) => {
                tracing::warn!(error = %e, "/dev/dmaplace exists, but the module cannot be used: using the dma-heaps");
                BackendArg::Auto
            }
        },
        other => other,
    };
    match backend {
        BackendArg::Kmod => {
            if args.record.is_some() {
                bail!(
                    "--record needs --backend sim or heaps: with the kernel module the devices are the kernel's, not a platform's a replay could use"
                );
            }
            if args.platform != "probe" {
                tracing::warn!(platform = %args.platform, "--platform is not used with --backend kmod: the devices are the kernel's");
            }
            let engine = KmodEngine::open(config.busy)?;
            serve(Service::with_engine(engine, config), server)
        }
        BackendArg::Sim => {
            let platform = load_platform(&args.platform)?;
            let mut service = Service::new(platform.clone(), SimPlacer::new(&platform, args.seed)?, config);
            if let Some(path) = &args.record {
                service.set_recorder(Box::new(recorder(&args, path, &platform, "sim")?));
            }
            serve(service, server)
        }
        BackendArg::Heaps | BackendArg::Auto => {
            let platform = load_platform(&args.platform)?;
            let placer = HeapPlacer::new(args.allow_memfd || backend == BackendArg::Auto);
            if !placer.inner().inventory().has_dma_buf() && !args.allow_memfd && backend == BackendArg::Heaps {
                bail!("this kernel offers no dma-heap and no udmabuf; pass --allow-memfd or --backend sim");
            }
            let mut service = Service::new(platform.clone(), placer, config);
            if let Some(path) = &args.record {
                service.set_recorder(Box::new(recorder(&args, path, &platform, "heaps")?));
            }
            serve(service, server)
        }
    }
}
