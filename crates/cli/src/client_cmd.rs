//! `dmaplace client ...`: talk to dmaplaced through libdmaplace.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use libdmaplace::{Client, Desc, hints};

use crate::Outcome;

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The daemon's socket [default: $DMAPLACE_SOCKET, else $XDG_RUNTIME_DIR/dmaplace.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Commands from stdin, one JSON answer per line (see `dmaplace::agent`).
    Shell,
    /// What this connection holds (nothing, on a fresh one) and its limits.
    Status,
    /// The daemon's JSON view of every buffer (administrators).
    Inspect,
    /// Create a buffer, attach the devices, map once (the allocation), print the layout, release.
    Alloc {
        /// `device[:HINT,HINT]`, repeatable.
        #[arg(long = "device", short = 'd', required = true)]
        devices: Vec<String>,
        /// Bytes (`4MiB`).
        #[arg(long, conflicts_with = "image")]
        size: Option<dmaplace_core::Size>,
        /// `WIDTHxHEIGHT`, with --format.
        #[arg(long, requires = "format")]
        image: Option<String>,
        /// A DRM fourcc (`XR24`, `NV12`).
        #[arg(long)]
        format: Option<String>,
    },
}

fn connect(args: &ClientArgs) -> Result<Client> {
    let socket = args.socket.clone().unwrap_or_else(libdmaplace::default_socket);
    Client::connect(&socket, "dmaplace-cli").with_context(|| format!("connecting to dmaplaced at {}", socket.display()))
}

fn desc(size: Option<dmaplace_core::Size>, image: Option<&str>, format: Option<&str>) -> Result<Desc> {
    if let Some(s) = size {
        return Ok(Desc::Size(s.bytes()));
    }
    let (Some(image), Some(format)) = (image, format) else { bail!("give --size, or --image with --format") };
    let (w, h) = image.split_once('x').with_context(|| format!("--image {image:?} is not WIDTHxHEIGHT"))?;
    let code: [u8; 4] =
        format.as_bytes().try_into().map_err(|_| anyhow::anyhow!("--format {format:?} is not 4 characters"))?;
    Ok(Desc::Image {
        width: w.parse().with_context(|| format!("width {w:?}"))?,
        height: h.parse().with_context(|| format!("height {h:?}"))?,
        fourcc: u32::from_le_bytes(code),
        modifiers: Vec::new(),
    })
}

pub fn run(args: &ClientArgs) -> Result<Outcome> {
    match &args.command {
        ClientCommand::Shell => {
            let mut c = connect(args)?;
            libdmaplace::agent::run(&mut c, std::io::stdin().lock(), std::io::stdout().lock())?;
        }
        ClientCommand::Status => {
            let mut c = connect(args)?;
            let h = c.hello().clone();
            let s = c.status()?;
            println!(
                "backend {} platform {}; limits: {} bytes, {} buffers, {} fds",
                h.backend, h.platform, h.quota.bytes, h.quota.buffers, h.quota.fds
            );
            println!("this connection: {} bytes, {} fds, {} buffers", s.bytes, s.fds, s.buffers.len());
        }
        ClientCommand::Inspect => {
            let mut c = connect(args)?;
            println!("{}", c.inspect()?);
        }
        ClientCommand::Alloc { devices, size, image, format } => {
            let mut c = connect(args)?;
            let d = desc(*size, image.as_deref(), format.as_deref())?;
            let b = c.create(d, "cli")?;
            let mut first = None;
            for spec in devices {
                let (dev, h) = spec.split_once(':').unwrap_or((spec, ""));
                let bits = hints::parse(h).map_err(anyhow::Error::msg)?;
                let a = c.attach(&b.token, dev, bits)?;
                println!("attached `{dev}` ({h}): {:?}", a.how);
                first.get_or_insert(a.attachment);
            }
            let m = c.map(first.expect("at least one device"))?;
            let l = &m.layout;
            println!("allocated at the first map: {} bytes, generation {}", l.size, m.generation);
            if l.fourcc != 0 {
                let f = l.fourcc.to_le_bytes();
                println!("layout {}x{} {} modifier {:#x}", l.width, l.height, String::from_utf8_lossy(&f), l.modifier);
                for (i, p) in l.planes.iter().enumerate() {
                    println!("  plane {i}: offset {} pitch {}", p.offset, p.pitch);
                }
            }
            c.release(b.buffer)?;
        }
    }
    Ok(Outcome::Ok)
}
