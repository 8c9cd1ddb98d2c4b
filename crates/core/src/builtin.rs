//! Platform descriptions embedded in the library, so the binary runs anywhere.

use crate::platform::{Platform, PlatformError};

/// The platform `dmaplace demo` and `dmaplace solve` use when none is named: `refsoc`,
/// an illustrative SoC built to show contiguity, address windows, carveouts and
/// protected memory (see `docs/PLATFORMS.md`).
pub const DEFAULT_PLATFORM: &str = "refsoc";

/// `(name, TOML text)` of every platform in `platforms/`.
///
/// `crates/core/tests/platforms.rs` fails when a file in `platforms/` is missing here.
pub const BUILTIN: &[(&str, &str)] = &[
    ("kayla", include_str!("../../../platforms/kayla.toml")),
    ("omap3", include_str!("../../../platforms/omap3.toml")),
    ("omap4", include_str!("../../../platforms/omap4.toml")),
    ("refsoc", include_str!("../../../platforms/refsoc.toml")),
    ("rk3399", include_str!("../../../platforms/rk3399.toml")),
    ("rpi4", include_str!("../../../platforms/rpi4.toml")),
    ("x86-desktop", include_str!("../../../platforms/x86-desktop.toml")),
];

/// The names of the embedded platforms.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// Parses the embedded platform `name`, if there is one.
pub fn load(name: &str) -> Option<Result<Platform, PlatformError>> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| Platform::from_file(&format!("platforms/{n}.toml"), text))
}
