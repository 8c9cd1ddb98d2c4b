// SPDX-License-Identifier: GPL-2.0

//! Rig self-test: an out-of-tree Rust module built against the rig's kernel.
//!
//! It only proves two things: out-of-tree Rust modules build and load, and the
//! `bindings` crate carries the dma-buf headers added by the bindings_helper
//! patch (the `size_of` calls below fail to compile otherwise).

use kernel::prelude::*;

module! {
    type: DmaplaceRigProbe,
    name: "dmaplace_rig_probe",
    author: "dmaplace",
    description: "dmaplace qemu rig self-test module",
    license: "GPL",
}

struct DmaplaceRigProbe;

impl kernel::Module for DmaplaceRigProbe {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!(
            "dmaplace_rig_probe: loaded; sizeof(dma_buf)={} sizeof(dma_resv)={} sizeof(miscdevice)={} sizeof(scatterlist)={}\n",
            core::mem::size_of::<kernel::bindings::dma_buf>(),
            core::mem::size_of::<kernel::bindings::dma_resv>(),
            core::mem::size_of::<kernel::bindings::miscdevice>(),
            core::mem::size_of::<kernel::bindings::scatterlist>(),
        );
        Ok(DmaplaceRigProbe)
    }
}
