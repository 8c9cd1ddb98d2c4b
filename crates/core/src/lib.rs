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
pub mod exporter;
mod explain;
pub mod iommu;
pub mod layout;
pub mod model;
pub mod platform;
pub mod requirements;
mod plan_json;
pub mod solver;
pub mod units;
pub mod verify;
pub mod window;

pub use effective::Effective;
pub use model::{Bus, CacheMode, CacheModes, Device, DeviceClass, FormatCaps, Iommu, LayoutCaps, Placement, Usage};
pub use platform::{Platform, PlatformError};
pub use requirements::{DeviceSet, Field, Req, Requirements};
pub use solver::{solve, BufferDesc, Cause, Conflict, ConflictKind, ImageDesc, Plan, Request, SolveError};
pub use units::{BoundaryMask, DmaAddr, DmaMask, PageSize, PageSizes, PhysAddr, PhysRange, Size, UnitError};
pub use verify::{verify, Backing, Violation};
pub use window::Window;
