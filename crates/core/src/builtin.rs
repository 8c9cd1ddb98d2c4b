//! Platform descriptions embedded in the library, so the binary runs anywhere.

use crate::platform::{Platform, PlatformError};

/// The platform `dmaplace demo` and `dmaplace solve` use when none is named.
pub const DEFAULT_PLATFORM: &str = "omap3";

/// `(name, TOML text)` of every platform in `platforms/`.
pub const BUILTIN: &[(&str, &str)] = &[("omap3", include_str!("../../../platforms/omap3.toml"))];

/// The names of the embedded platforms.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// Parses the embedded platform `name`, if there is one.
pub fn load(name: &str) -> Option<Result<Platform, PlatformError>> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| Platform::from_toml(&format!("platforms/{n}.toml"), text))
}
