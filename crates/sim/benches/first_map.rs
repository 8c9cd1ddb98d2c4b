//! The cost of the first map against the number of attachments: the exporter solves over
//! every attachment, allocates once, verifies the backing against every device, and maps
//! for the first device.
//!
//! `cargo bench -p dmaplace-sim --bench first_map`

use divan::Bencher;
use dmaplace_core::exporter::{AttachmentId, BufferId, Exporter, ExporterConfig};
use dmaplace_core::units::Size;
use dmaplace_core::{BufferDesc, Usage};
use dmaplace_sim::{Machine, SimConfig, SyntheticPlatform};

fn main() {
    divan::main();
}

/// Synthetic devices that can share one 8 MiB buffer, round robin: two behind IOMMUs
/// (4K/2M/1G and 4K only), a 32-bit display that scans out contiguous memory, and the CPU.
const CAST: [(&str, Usage); 4] =
    [("gpu", Usage::RENDERING), ("v3d", Usage::RENDERING), ("display", Usage::SCANOUT), ("cpu", Usage::CPU_READ_OFTEN)];

fn setup(n: usize) -> (Exporter<Machine>, BufferId, Vec<AttachmentId>) {
    let p = SyntheticPlatform::new(Size::gib(1)).with_cma(Size::mib(64)).build();
    let m = Machine::new(&p, SimConfig::seeded(1)).unwrap();
    let mut e = Exporter::new(p, m, ExporterConfig::default());
    let b = e.export(BufferDesc::Size(Size::mib(8)), "frame").unwrap();
    let atts = (0..n).map(|i| e.attach(b, CAST[i % CAST.len()].0, CAST[i % CAST.len()].1).unwrap()).collect();
    (e, b, atts)
}

#[divan::bench(args = [1, 2, 4, 8, 16, 32])]
fn first_map(bencher: Bencher, n: usize) {
    bencher.with_inputs(|| setup(n)).bench_local_values(|(mut e, b, atts)| {
        let (m, _) = e.map(atts[0]).unwrap();
        // Returned with the inputs so that teardown is not timed.
        (e, b, atts, m)
    });
}
