//! Synthetic platforms for tests and benchmarks: any amount of RAM, a CMA area and
//! carveouts, and a fixed cast of devices covering the constraint kinds.

use std::fmt::Write as _;

use dmaplace_core::Platform;
use dmaplace_core::units::{PageSize, Size};

/// A synthetic platform description. Devices:
/// - `cpu`: no constraints (a 64-bit DMA engine, coherent, no IOMMU);
/// - `display`: 32-bit DMA, write-combined or uncached, contiguous for `SCANOUT`;
/// - `gpu`: behind an SMMU with 4 KiB/2 MiB/1 GiB pages and 48-bit IOVAs;
/// - `v3d`: behind a 4 KiB-only MMU with 32-bit IOVAs;
/// - `capture`: 32-bit DMA, at most 64 segments of at most 1 MiB, 1 MiB boundaries;
/// - `secure`: needs protected memory (only with a protected carveout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticPlatform {
    /// Name.
    pub name: String,
    /// DRAM size, one bank starting at `base`.
    pub ram: Size,
    /// First DRAM address.
    pub base: u64,
    /// CMA area size (0: none), placed at the top of DRAM below 4 GiB.
    pub cma: Size,
    /// Carveouts below the CMA area: `(name, size, protected)`.
    pub carveouts: Vec<(String, Size, bool)>,
    /// The buddy allocator's largest block.
    pub max_buddy_block: PageSize,
}

impl SyntheticPlatform {
    /// `ram` of DRAM from address 0, 64 MiB of CMA (if RAM allows), no carveouts.
    pub fn new(ram: Size) -> SyntheticPlatform {
        let cma = if ram >= Size::mib(256) { Size::mib(64) } else { Size::ZERO };
        SyntheticPlatform {
            name: format!("synthetic-{ram}").replace(' ', ""),
            ram,
            base: 0,
            cma,
            carveouts: Vec::new(),
            max_buddy_block: PageSize::SZ_4M,
        }
    }

    /// With a CMA area of `size`.
    pub fn with_cma(mut self, size: Size) -> SyntheticPlatform {
        self.cma = size;
        self
    }

    /// With a carveout.
    pub fn with_carveout(mut self, name: &str, size: Size, protected: bool) -> SyntheticPlatform {
        self.carveouts.push((name.to_owned(), size, protected));
        self
    }

    /// With DRAM starting at `base`.
    pub fn at(mut self, base: u64) -> SyntheticPlatform {
        self.base = base;
        self
    }

    /// The platform's TOML text.
    pub fn toml(&self) -> String {
        let mut t = String::new();
        let end = self.base + self.ram.bytes();
        let _ =
            writeln!(t, "[platform]\nname = \"{}\"\ndescription = \"synthetic platform for the simulator\"", self.name);
        let _ = writeln!(t, "[memory]\nmax_buddy_block = {}", self.max_buddy_block.get());
        let _ = writeln!(t, "[[memory.bank]]\nname = \"dram\"\nstart = {}\nsize = {}", self.base, self.ram.bytes());
        let mut top = if self.base < 1 << 32 { end.min(1 << 32) } else { end };
        if !self.cma.is_zero() {
            top -= self.cma.bytes();
            let _ = writeln!(t, "[[memory.cma]]\nname = \"cma\"\nstart = {top}\nsize = {}", self.cma.bytes());
        }
        for (name, size, protected) in &self.carveouts {
            top -= size.bytes();
            let _ = writeln!(
                t,
                "[[memory.carveout]]\nname = \"{name}\"\nstart = {top}\nsize = {}\nprotected = {protected}",
                size.bytes()
            );
        }
        t.push_str(DEVICES);
        if self.carveouts.iter().any(|c| c.2) {
            t.push_str("[[device]]\nname = \"secure\"\nclass = \"video\"\n[device.placement]\nprotected = true\n");
        }
        for (name, _, protected) in &self.carveouts {
            if !protected {
                let _ = writeln!(
                    t,
                    "[[device]]\nname = \"{name}-user\"\nclass = \"other\"\n[device.placement]\nregions = [\"{name}\"]"
                );
            }
        }
        t
    }

    /// Parses [`SyntheticPlatform::toml`]. Panics on a description the core rejects
    /// (sizes that do not fit are the caller's bug).
    pub fn build(&self) -> Platform {
        let text = self.toml();
        Platform::from_toml(&format!("{}.toml", self.name), &text)
            .unwrap_or_else(|e| panic!("synthetic platform: {e}\n{text}"))
    }
}

const DEVICES: &str = r#"
[[device]]
name = "cpu"
class = "dma"
[device.placement]
coherent = true

[[device]]
name = "display"
class = "display"
[device.placement]
dma_mask = 32
cache_modes = ["write-combined", "uncached"]

[[device]]
name = "gpu"
class = "gpu"
[device.placement.iommu]
name = "smmu"
pgsize_bitmap = ["4KiB", "2MiB", "1GiB"]
iova_bits = 48

[[device]]
name = "v3d"
class = "gpu"
[device.placement]
dma_mask = 32
[device.placement.iommu]
name = "v3d-mmu"
pgsize_bitmap = ["4KiB"]
iova_bits = 32

[[device]]
name = "capture"
class = "capture"
[device.placement]
dma_mask = 32
max_segments = 64
max_segment_size = "1MiB"
segment_boundary_mask = 0xfffff

[[rule]]
device = "display"
hints = ["SCANOUT"]
contiguous = true
reason = "synthetic: the display scans out from one physical run"
"#;
