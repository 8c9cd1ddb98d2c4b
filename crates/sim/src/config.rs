//! How a [`crate::Machine`] is set up: seed, buddy orders, background load, IOTLB and
//! content model.

use dmaplace_core::units::Size;

/// What the machine keeps of a buffer's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContentMode {
    /// [`ContentMode::Bytes`] when the machine has at most [`AUTO_BYTES_LIMIT`] of RAM,
    /// else [`ContentMode::Checksum`].
    #[default]
    Auto,
    /// Real bytes, kept sparsely (only frames that were written use host memory).
    Bytes,
    /// One u64 digest per frame: writes fold their data into it; reads of bytes fail.
    Checksum,
}

/// RAM up to which [`ContentMode::Auto`] keeps real bytes.
pub const AUTO_BYTES_LIMIT: Size = Size::gib(1);

/// The "other users" of memory: seeded page-sized to small-order allocations, some
/// movable (page cache, anonymous memory: may sit in CMA and be migrated), some not
/// (slab, page tables, driver buffers), allocated and partly freed so that free memory is
/// left in holes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackgroundLoad {
    /// Fraction (0..=1) of buddy-managed memory (zones plus CMA) they hold once settled.
    pub fill: f64,
    /// How full (0..=1) memory gets before random frees bring it down to `fill`: the
    /// higher, the more fragmented the holes.
    pub prefill: f64,
    /// Fraction of their blocks that are movable.
    pub movable: f64,
    /// Fraction of movable blocks placed in CMA areas (CMA borrowers).
    pub cma_share: f64,
    /// Largest block order they allocate (0 = single 4 KiB pages).
    pub max_order: u32,
}

impl BackgroundLoad {
    /// No other users: all memory free.
    pub const NONE: BackgroundLoad =
        BackgroundLoad { fill: 0.0, prefill: 0.0, movable: 0.0, cma_share: 0.0, max_order: 0 };

    /// Memory filled to 100% with 4-32 KiB blocks, then half freed at random: no free
    /// block of 4 MiB survives. 70% movable, half of those in CMA.
    pub const FRAGMENTING: BackgroundLoad =
        BackgroundLoad { fill: 0.5, prefill: 1.0, movable: 0.7, cma_share: 0.5, max_order: 3 };

    /// Whether there is any load.
    pub fn is_none(&self) -> bool {
        self.fill <= 0.0
    }
}

impl Default for BackgroundLoad {
    fn default() -> Self {
        BackgroundLoad::NONE
    }
}

/// Machine configuration. `SimConfig::default()` is seed 0, Linux-like orders, no
/// background load, a 32-entry IOTLB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed for everything random (the background load).
    pub seed: u64,
    /// The buddy allocator's largest order (`MAX_ORDER`, inclusive, in 4 KiB pages);
    /// `None` takes it from the platform's `max_buddy_block` (4 MiB: order 10).
    pub max_order: Option<u32>,
    /// The other users of memory.
    pub background: BackgroundLoad,
    /// IOTLB entries per device, for [`crate::Machine::replay`].
    pub iotlb_entries: usize,
    /// What is kept of buffer content.
    pub content: ContentMode,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            max_order: None,
            background: BackgroundLoad::NONE,
            iotlb_entries: 32,
            content: ContentMode::Auto,
        }
    }
}

impl SimConfig {
    /// The default configuration with `seed`.
    pub fn seeded(seed: u64) -> SimConfig {
        SimConfig { seed, ..SimConfig::default() }
    }

    /// With a background load.
    pub fn with_background(mut self, load: BackgroundLoad) -> SimConfig {
        self.background = load;
        self
    }
}
