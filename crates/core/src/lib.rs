//! dmaplace-core: the pure core of dmaplace.
//!
//! It holds the vocabulary (typed units, usage hints, per-device placement and
//! layout constraints, platform descriptions), the solver that merges every
//! attached device's needs into one [`Plan`] or explains the [`Conflict`], the
//! DRM layout math, and [`verify`], which checks a concrete backing against each
//! device's own constraints. It does no I/O and has no `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod builtin;
pub mod effective;
mod explain;
pub mod exporter;
pub mod iommu;
pub mod layout;
pub mod memory;
pub mod model;
mod plan_json;
pub mod platform;
pub mod requirements;
pub mod solver;
pub mod units;
pub mod verify;
pub mod window;

pub use effective::Effective;
pub use model::{Bus, CacheMode, CacheModes, Device, DeviceClass, FormatCaps, Iommu, LayoutCaps, Placement, Usage};
pub use plan_json::PlanOn;
pub use platform::{Platform, PlatformError};
pub use requirements::{DeviceSet, Field, Req, Requirements};
pub use solver::{BufferDesc, Cause, Conflict, ConflictKind, ImageDesc, Plan, Request, SolveError, solve};
pub use units::{BoundaryMask, DmaAddr, DmaMask, PageSize, PageSizes, PhysAddr, PhysRange, Size, UnitError};
pub use verify::{Backing, Violation, verify};
pub use window::Window;
