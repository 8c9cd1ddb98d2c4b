//! The request arguments `solve` and `alloc` share: a platform, devices with hints, and a
//! buffer (a size, or an image with a format and acceptable modifiers).

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use dmaplace_core::layout::{MOD_INVALID, parse_fourcc, parse_modifier};
use dmaplace_core::{BufferDesc, ImageDesc, Platform, Request, Size, Usage};

use crate::load;

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// Platform name (built in, or platforms/<name>.toml) or path to a TOML file.
    #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
    pub platform: String,
    /// A device and its usage hints: `dss:scanout` or `sgx:rendering,texturing`. Repeat
    /// for each device; a device may be given only once (list all its hints there).
    #[arg(long = "device", short = 'd', required = true)]
    pub devices: Vec<String>,
    /// Buffer size for a raw buffer: `8MiB`, `8M`, `4096`, `0x1000` (K, M, G, T are powers
    /// of 1024; `8MB` is refused as ambiguous).
    #[arg(long, conflicts_with_all = ["image", "format", "modifier"], required_unless_present = "image")]
    pub size: Option<String>,
    /// Image dimensions, `WIDTHxHEIGHT`.
    #[arg(long, requires = "format")]
    pub image: Option<String>,
    /// DRM fourcc of the image: XR24, NV12, P010, ...
    #[arg(long, requires = "image")]
    pub format: Option<String>,
    /// Acceptable modifier (name or number); repeat. Default: any.
    #[arg(long, requires = "image")]
    pub modifier: Vec<String>,
}

/// A parsed request: the platform, each device with its hints, and the buffer.
pub struct Parsed {
    pub platform: Platform,
    pub devices: Vec<(String, Usage)>,
    pub desc: BufferDesc,
}

impl Parsed {
    /// The solver's requests, borrowing the platform's devices.
    pub fn requests(&self) -> Vec<Request<'_>> {
        self.devices
            .iter()
            .map(|(name, hints)| Request {
                device: self.platform.device(name).expect("checked when parsed"),
                hints: *hints,
            })
            .collect()
    }
}

impl RequestArgs {
    /// Loads the platform and parses every argument, naming the one that is wrong.
    pub fn parse(&self) -> Result<Parsed> {
        let platform = load::platform(&self.platform)?;
        let devices = self.devices.iter().map(|d| parse_device_spec(&platform, d)).collect::<Result<Vec<_>>>()?;
        refuse_duplicates(&self.devices, &devices)?;
        let desc = self.desc(&platform)?;
        Ok(Parsed { platform, devices, desc })
    }

    fn desc(&self, p: &Platform) -> Result<BufferDesc> {
        if let Some(size) = &self.size {
            let size: Size = size.parse().context("--size")?;
            return Ok(BufferDesc::Size(size));
        }
        let image = self.image.as_deref().ok_or_else(|| anyhow!("give --size or --image"))?;
        let (w, h) = image
            .split_once(['x', 'X'])
            .ok_or_else(|| anyhow!("--image {image:?}: expected WIDTHxHEIGHT, e.g. 1920x1080"))?;
        let dim = |t: &str, what: &str| {
            t.trim().parse::<u32>().map_err(|_| anyhow!("--image {image:?}: {what} {t:?} is not a number"))
        };
        let format = self.format.as_deref().ok_or_else(|| anyhow!("--image needs --format"))?;
        let format = parse_fourcc(format).map_err(|e| anyhow!("--format: {e}"))?;
        let modifiers = self.modifier.iter().map(|m| request_modifier(m, p)).collect::<Result<Vec<_>>>()?;
        Ok(BufferDesc::Image(ImageDesc { width: dim(w, "width")?, height: dim(h, "height")?, format, modifiers }))
    }
}

/// Parses `dev:hint,hint`.
pub fn parse_device_spec(p: &Platform, spec: &str) -> Result<(String, Usage)> {
    let (name, hints) = spec.split_once(':').unwrap_or((spec, ""));
    p.require_device(name)?;
    let hints = Usage::parse_list(hints).map_err(|e| anyhow!("--device {spec}: {e}"))?;
    Ok((name.to_owned(), hints))
}

/// A device given twice is refused: its hints would silently combine or override.
fn refuse_duplicates(specs: &[String], devices: &[(String, Usage)]) -> Result<()> {
    for (i, (name, _)) in devices.iter().enumerate() {
        if let Some(j) = devices[..i].iter().position(|(other, _)| other == name) {
            bail!(
                "--device {name} is given twice (`{}` and `{}`): give each device once, with all its hints (`-d {name}:HINT,HINT`)",
                specs[j],
                specs[i]
            );
        }
    }
    Ok(())
}

/// A `--modifier`: a name or value; `DRM_FORMAT_MOD_INVALID` (by name or value) names no
/// layout and is refused.
fn request_modifier(text: &str, p: &Platform) -> Result<u64> {
    let upper = text.trim().to_ascii_uppercase();
    let value = if upper.trim_start_matches("DRM_FORMAT_MOD_") == "INVALID" {
        MOD_INVALID
    } else {
        parse_modifier(text, &p.modifiers).map_err(|e| anyhow!("--modifier: {e}"))?
    };
    if value == MOD_INVALID {
        bail!(
            "--modifier {text}: DRM_FORMAT_MOD_INVALID (0x00ffffffffffffff) means \"no modifier known\", not a layout; name a real modifier such as LINEAR"
        );
    }
    Ok(value)
}
