//! dmaplace-sim: a deterministic simulated machine that places dma-buf memory.
//!
//! [`Machine`] builds physical memory from a [`dmaplace_core::Platform`]'s memory map:
//! buddy allocators per zone (DMA32 below 4 GiB, Normal above), CMA regions lent to
//! movable background blocks and reclaimed by migration, and carveouts used only when a
//! plan names them. A seeded background load fragments memory. It implements
//! [`dmaplace_core::backend::Backend`]: every backing it returns passes
//! [`dmaplace_core::verify`]. Per-device IOMMU domains map backings with the largest
//! pages their alignment allows, and an LRU IOTLB replays access patterns. Content is
//! kept (bytes, or per-frame digests) so migration can be proven to preserve it, and
//! [`Machine::check`] verifies that no frame is owned twice and none is lost.
//!
//! Same platform, configuration and seed, same calls: same placements and counters.
//!
//! ```
//! use dmaplace_core::backend::Backend;
//! use dmaplace_core::{solve, BufferDesc, Request, Usage};
//! use dmaplace_core::units::Size;
//! use dmaplace_sim::{Machine, SimConfig, SyntheticPlatform};
//!
//! let platform = SyntheticPlatform::new(Size::gib(1)).build();
//! let gpu = platform.device("gpu").unwrap();
//! let plan = solve(&platform, &BufferDesc::Size(Size::mib(8)), &[Request { device: gpu, hints: Usage::RENDERING }]).unwrap();
//! let mut m = Machine::new(&platform, SimConfig::seeded(7)).unwrap();
//! let b = m.allocate(&plan, "frame").unwrap();
//! let (map, sg) = m.map(&plan.devices[0], &b).unwrap();
//! assert_eq!(sg.entries.len(), 1);
//! assert_eq!(map.ptes().total(), 4); // four 2 MiB pages
//! m.unmap(&plan.devices[0], map);
//! m.free(b);
//! m.check().unwrap();
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod background;
mod buddy;
mod check;
mod config;
mod content;
mod device;
mod error;
mod hbitmap;
mod iommu;
mod machine;
mod phys;
mod ranges;
mod synthetic;

pub use check::{FreeReport, Holder, InvariantViolation, PoolFree, PoolKind, Violations};
pub use config::{AUTO_BYTES_LIMIT, BackgroundLoad, ContentMode, SimConfig};
pub use device::{IommuMapping, SimMapping};
pub use error::SimError;
pub use iommu::{AccessPattern, Iotlb, IotlbStats, PteRun};
pub use machine::{Counters, Machine, SimBacking};
pub use phys::Zone;
pub use synthetic::SyntheticPlatform;
