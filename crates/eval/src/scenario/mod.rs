//! Built-in scenarios: parameterised generators of traces for realistic pipelines.
//!
//! Each scenario casts platform devices in roles (decoder, GPU, display, ...), has
//! parameters with stated defaults, and writes every parameter, role and the background
//! load into the trace's header, so a trace file says exactly how it was made. The same
//! name, platform, parameters and seed give the same trace.

pub(crate) mod builder;
mod camera;
mod churn;
mod desktop;
mod soak;
mod video;

use std::collections::BTreeMap;

use dmaplace_core::Platform;
use dmaplace_sim::BackgroundLoad;

use crate::trace::{Header, Trace};
use builder::Gen;

/// One parameter: its name, default and meaning.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    /// Name (`clips`).
    pub name: &'static str,
    /// Default, as text (`6`, `60s`, `1920x1080`).
    pub default: &'static str,
    /// What it means.
    pub help: &'static str,
}

/// A role's device on one platform.
#[derive(Clone, Copy, Debug)]
pub struct Cast {
    /// The platform.
    pub platform: &'static str,
    /// `(role, device)` pairs.
    pub roles: &'static [(&'static str, &'static str)],
}

/// A built-in scenario.
#[derive(Clone, Copy)]
pub struct ScenarioInfo {
    /// Name (`video-playback`).
    pub name: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The platform it runs on by default.
    pub platform: &'static str,
    /// Its roles and what each does.
    pub roles: &'static [(&'static str, &'static str)],
    /// Default devices for the roles, per platform.
    pub casts: &'static [Cast],
    /// Its own parameters (the background load's are common to all: [`COMMON`]).
    pub params: &'static [ParamSpec],
    generate: fn(&mut Ctx<'_>) -> Result<(), ScenarioError>,
}

impl std::fmt::Debug for ScenarioInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScenarioInfo").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Parameters every scenario has: the other users of memory.
pub const COMMON: &[ParamSpec] = &[
    ParamSpec {
        name: "fill",
        default: "0.5",
        help: "share of memory the other users (page cache, anonymous, slab) hold",
    },
    ParamSpec {
        name: "prefill",
        default: "0.9",
        help: "how full memory gets before they free down to `fill` (higher: more fragmented)",
    },
    ParamSpec { name: "movable", default: "0.7", help: "share of their blocks that are movable" },
    ParamSpec {
        name: "cma-share",
        default: "0.5",
        help: "share of movable blocks placed in CMA areas (CMA borrowers)",
    },
    ParamSpec { name: "max-order", default: "3", help: "their largest block order (3: 32 KiB)" },
    ParamSpec { name: "churn", default: "300", help: "their churn, in block frees/allocations per simulated second" },
];

/// Why a scenario could not be generated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// No such scenario.
    #[error("unknown scenario `{0}`; scenarios: {1}")]
    Unknown(String, String),
    /// No such parameter.
    #[error("scenario `{scenario}` has no parameter `{param}`; parameters: {known}")]
    UnknownParam {
        /// Scenario.
        scenario: String,
        /// The parameter given.
        param: String,
        /// Its parameters and roles.
        known: String,
    },
    /// A parameter's value does not parse or is out of range.
    #[error("scenario `{scenario}`: parameter `{param}` = `{value}`: {reason}")]
    BadParam {
        /// Scenario.
        scenario: String,
        /// Parameter.
        param: String,
        /// Value.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// A role has no device on the platform.
    #[error(
        "scenario `{scenario}` needs a device for role `{role}` on platform `{platform}`; give one with --param {role}=DEVICE (devices: {devices}) or use a platform it knows: {platforms}"
    )]
    NoCast {
        /// Scenario.
        scenario: String,
        /// Role.
        role: String,
        /// Platform.
        platform: String,
        /// The platform's devices.
        devices: String,
        /// Platforms with a default cast.
        platforms: String,
    },
    /// A role names a device the platform does not have.
    #[error("scenario `{scenario}`: role `{role}` = `{device}` is not a device of `{platform}` (devices: {devices})")]
    UnknownDevice {
        /// Scenario.
        scenario: String,
        /// Role.
        role: String,
        /// Device.
        device: String,
        /// Platform.
        platform: String,
        /// Its devices.
        devices: String,
    },
    /// The generator broke a handle's lifecycle: a bug.
    #[error("scenario `{0}` generated an invalid trace: {1}")]
    Internal(String, String),
}

/// Every built-in scenario.
pub fn all() -> &'static [ScenarioInfo] {
    SCENARIOS
}

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static ScenarioInfo, ScenarioError> {
    SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        ScenarioError::Unknown(name.to_owned(), names.join(", "))
    })
}

const SCENARIOS: &[ScenarioInfo] =
    &[video::PLAYBACK, camera::RECORD, video::SCREEN_RECORD, churn::APP_CHURN, desktop::CAPTURE, soak::SOAK];

/// What a generator works with: the platform, the resolved parameters and roles, and the
/// trace builder.
pub(crate) struct Ctx<'a> {
    info: &'static ScenarioInfo,
    pub(crate) platform: &'a Platform,
    values: BTreeMap<&'static str, String>,
    roles: BTreeMap<&'static str, String>,
    pub(crate) builder: Gen,
}

impl Ctx<'_> {
    fn bad(&self, param: &str, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::BadParam {
            scenario: self.info.name.to_owned(),
            param: param.to_owned(),
            value: self.values.get(param).cloned().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn text(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// The device cast in `role`.
    pub(crate) fn role(&self, role: &str) -> String {
        self.roles.get(role).cloned().unwrap_or_default()
    }

    /// A whole number, at least `min`.
    pub(crate) fn count(&self, name: &str, min: u64) -> Result<u64, ScenarioError> {
        match self.text(name).parse::<u64>() {
            Ok(n) if n >= min && n <= 1 << 32 => Ok(n),
            _ => Err(self.bad(name, format!("expected a whole number from {min} to {}", 1u64 << 32))),
        }
    }

    /// A number from 0 to 1.
    pub(crate) fn fraction(&self, name: &str) -> Result<f64, ScenarioError> {
        match self.text(name).parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
            _ => Err(self.bad(name, "expected a number from 0 to 1")),
        }
    }

    /// A duration (`60s`, `500ms`, `2h`) in ns, at least 1 ms.
    pub(crate) fn duration(&self, name: &str) -> Result<u64, ScenarioError> {
        match crate::trace::parse_duration(self.text(name)) {
            Ok(ns) if (builder::MS..=1_000 * 3_600 * builder::S).contains(&ns) => Ok(ns),
            Ok(_) => Err(self.bad(name, "expected a duration from 1ms to 1000h")),
            Err(e) => Err(self.bad(name, e)),
        }
    }

    /// `WIDTHxHEIGHT`.
    pub(crate) fn dims(&self, name: &str) -> Result<(u32, u32), ScenarioError> {
        let list = self.dims_list(name)?;
        match list[..] {
            [one] => Ok(one),
            _ => Err(self.bad(name, "expected one WIDTHxHEIGHT")),
        }
    }

    /// `WxH,WxH,...`, each 16 to 8192.
    pub(crate) fn dims_list(&self, name: &str) -> Result<Vec<(u32, u32)>, ScenarioError> {
        let parse = |s: &str| -> Option<(u32, u32)> {
            let (w, h) = s.split_once('x')?;
            let (w, h) = (w.parse().ok()?, h.parse().ok()?);
            ((16..=8192).contains(&w) && (16..=8192).contains(&h)).then_some((w, h))
        };
        let list: Option<Vec<_>> = self.text(name).split(',').map(parse).collect();
        list.filter(|l| !l.is_empty())
            .ok_or_else(|| self.bad(name, "expected WIDTHxHEIGHT[,WIDTHxHEIGHT...], each 16 to 8192"))
    }

    fn background(&self) -> Result<BackgroundLoad, ScenarioError> {
        let max_order = self.count("max-order", 0)?;
        if max_order > 10 {
            return Err(self.bad("max-order", "expected 0 to 10"));
        }
        Ok(BackgroundLoad {
            fill: self.fraction("fill")?,
            prefill: self.fraction("prefill")?,
            movable: self.fraction("movable")?,
            cma_share: self.fraction("cma-share")?,
            // CAST: checked to be at most 10.
            #[allow(clippy::cast_possible_truncation)]
            max_order: max_order as u32,
        })
    }

    /// Bytes of memory the other users' share is taken of (RAM minus carveouts).
    pub(crate) fn general_bytes(&self) -> u64 {
        self.platform.memory.general().total().bytes()
    }

    /// Churn steps to move the other users from `from` to `to` share of memory at once
    /// (an application loading, memory freed): their average block is the mean of their
    /// orders' sizes.
    pub(crate) fn pressure_steps(&self, from: f64, to: f64) -> Result<u32, ScenarioError> {
        let max_order = self.count("max-order", 0)?;
        let mean_block = ((1u64 << (max_order + 1)) - 1) * 4096 / (max_order + 1);
        // CAST: a share of RAM in bytes, far below 2^52; the step count is capped below.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let steps = ((to - from).abs() * self.general_bytes() as f64 / mean_block as f64) as u64;
        Ok(u32::try_from(steps.min(u64::from(crate::trace::MAX_CHURN))).unwrap_or(crate::trace::MAX_CHURN))
    }
}

/// Generates scenario `name` on `platform` with `params` (`name=value`: parameters or
/// roles) from `seed`.
pub fn generate(
    name: &str,
    platform: &Platform,
    params: &[(String, String)],
    seed: u64,
) -> Result<Trace, ScenarioError> {
    let info = find(name)?;
    let specs = || info.params.iter().chain(COMMON);
    let mut values: BTreeMap<&'static str, String> = specs().map(|p| (p.name, p.default.to_owned())).collect();
    let cast = info.casts.iter().find(|c| c.platform == platform.name);
    let mut roles: BTreeMap<&'static str, String> = BTreeMap::new();
    for (role, _) in info.roles {
        if let Some(d) = cast.and_then(|c| c.roles.iter().find(|(r, _)| r == role)) {
            roles.insert(role, d.1.to_owned());
        }
    }
    for (k, v) in params {
        if let Some(spec) = specs().find(|p| p.name == k) {
            values.insert(spec.name, v.clone());
        } else if let Some((role, _)) = info.roles.iter().find(|(r, _)| r == k) {
            roles.insert(role, v.clone());
        } else {
            let known: Vec<&str> = specs().map(|p| p.name).chain(info.roles.iter().map(|r| r.0)).collect();
            return Err(ScenarioError::UnknownParam {
                scenario: name.to_owned(),
                param: k.clone(),
                known: known.join(", "),
            });
        }
    }
    let devices = || platform.devices.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    for (role, _) in info.roles {
        match roles.get(role) {
            None => {
                return Err(ScenarioError::NoCast {
                    scenario: name.to_owned(),
                    role: (*role).to_owned(),
                    platform: platform.name.clone(),
                    devices: devices(),
                    platforms: info.casts.iter().map(|c| c.platform).collect::<Vec<_>>().join(", "),
                });
            }
            Some(d) if platform.device(d).is_none() => {
                return Err(ScenarioError::UnknownDevice {
                    scenario: name.to_owned(),
                    role: (*role).to_owned(),
                    device: d.clone(),
                    platform: platform.name.clone(),
                    devices: devices(),
                });
            }
            Some(_) => {}
        }
    }
    let mut ctx = Ctx { info, platform, values, roles, builder: Gen::new(seed) };
    let background = ctx.background()?;
    (info.generate)(&mut ctx)?;
    let mut meta = vec![("scenario".to_owned(), name.to_owned())];
    meta.extend(ctx.roles.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    meta.extend(info.params.iter().chain(COMMON).map(|p| (p.name.to_owned(), ctx.values[p.name].clone())));
    let header = Header { platform: Some(platform.name.clone()), seed: Some(seed), background: Some(background), meta };
    let Ctx { builder, .. } = ctx;
    builder.finish(header).map_err(|e| ScenarioError::Internal(name.to_owned(), e))
}
