//! dmaplace-service: `dmaplaced`, the userspace twin of the seed's exporter.
//!
//! In a real system the devices sharing a buffer belong to different processes (a
//! camera service, a compositor, an encoder). The daemon holds each buffer until its
//! participants have attached, allocates once at the first map for all of them
//! ([`dmaplace_core::exporter::Exporter`]), hands every holder an fd and the committed
//! layout, and, when a late participant forces a move while no DMA is in flight,
//! tells the other holders (`moved`) to map again. The protocol is in
//! `docs/PROTOCOL.md` ([`dmaplace_proto`]).
//!
//! - [`placer`]: the backends (the simulated machine with memfd contents; this
//!   kernel's dma-heaps, udmabuf or memfd).
//! - [`service`]: the state machine; every request passes [`service::Service::handle`].
//! - [`server`]: the socket loop (non-blocking, bounded queues, timeouts, policy).
#![warn(missing_docs)]

pub mod engine;
pub mod kmod;
pub mod placer;
pub mod record;
pub mod server;
pub mod service;

pub use engine::{CoreEngine, Engine, Mapped, Notice};
pub use placer::{Accounting, HeapPlacer, PlaceError, Placer, SimPlacer};
pub use record::TraceRecorder;
pub use server::{Server, ServerConfig, ServerError, default_socket};
pub use service::{ClientId, Limits, Outcome, Peer, Recorder, Service, ServiceConfig};
