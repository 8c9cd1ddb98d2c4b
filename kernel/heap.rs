// SPDX-License-Identifier: GPL-2.0

//! `/dev/dma_heap/dmaplace`: the exporter as a dma-buf heap, so that programs
//! written for heaps (libcamera, gralloc, GStreamer, the kernel's selftests) get
//! deferred, constraint-aware buffers unchanged.
//!
//! `DMA_HEAP_IOCTL_ALLOC` is validated by the dma-heap core (`dma-heap.c`: fd
//! flags, heap flags, length) and lands in [`heap_allocate`], which returns a
//! dma-buf with no pages behind it — the same [`crate::exporter::Buffer`] CREATE
//! makes: its pages are placed at the first map or the first CPU access, for
//! every device attached by then. Lengths above 1 GiB are refused (`EINVAL`), as
//! CREATE does. Heap buffers are charged to the allocating *process* (the core
//! does not pass the opener's file to a heap) against `owner_limit_mib`.
//!
//! 6.12 does not export `dma_heap_add` to modules; `kernel/dma-heap-export.patch`
//! exports it (as later kernels do, in the `DMA_BUF_HEAP` namespace). 6.12 has no
//! `dma_heap_remove` either: once the heap is registered the module takes a
//! reference on itself and cannot be unloaded. The `heap` parameter (default 1)
//! leaves the heap out, for tests that unload the module.

use core::sync::atomic::{AtomicBool, Ordering};

use kernel::bindings;
use kernel::error::{Result, code};
use kernel::ffi::c_ulong;
use kernel::prelude::*;

use crate::pool::CacheMode;
use crate::sys::{self, BoolParam, Name};

/// `heap`: register `/dev/dma_heap/dmaplace` at load (read-only after).
pub static HEAP: BoolParam = BoolParam(AtomicBool::new(true));
crate::module_param!(__PARAM_HEAP, "heap", param_ops_bool, HEAP, 0o444);

static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Whether the heap was registered.
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Relaxed)
}

static HEAP_OPS: bindings::dma_heap_ops = bindings::dma_heap_ops { allocate: Some(heap_allocate) };

/// Registers the heap when the `heap` parameter asks for it; from then on the
/// module holds a reference on itself. Returns whether it registered.
pub fn register(module: &'static ThisModule) -> Result<bool> {
    if !HEAP.get() {
        return Ok(false);
    }
    let info = bindings::dma_heap_export_info {
        // The core keeps the pointer: a static string.
        name: c"dmaplace".as_ptr().cast(),
        ops: &HEAP_OPS,
        priv_: core::ptr::null_mut(),
    };
    // SAFETY: `info` is complete; the name and ops are statics that live as long as the
    // module, which cannot be unloaded once the heap exists (the reference taken below).
    sys::check_ptr(unsafe { bindings::dma_heap_add(&info) })?;
    // SAFETY: our own module, live (we are in its init); 6.12 cannot remove a heap.
    unsafe { bindings::__module_get(module.as_ptr()) };
    REGISTERED.store(true, Ordering::Relaxed);
    Ok(true)
}

unsafe extern "C" fn heap_allocate(
    _heap: *mut bindings::dma_heap,
    len: c_ulong,
    fd_flags: u32,
    _heap_flags: u64,
) -> *mut bindings::dma_buf {
    // CAST: unsigned long is 64 bits here.
    let size = len as u64;
    // dma-heap.c checked fd_flags, heap_flags (none defined) and that len is a non-zero
    // multiple of the page size.
    let r = (|| -> Result<*mut bindings::dma_buf> {
        if size > crate::abi::MAX_SIZE {
            return Err(code::EINVAL);
        }
        let owner = crate::heap_owner()?;
        let name = Name::from_field(b"heap\0")?;
        let (_, dmabuf) = crate::export_buffer(&owner, size, fd_flags, name, CacheMode::WriteBack)?;
        Ok(dmabuf)
    })();
    r.unwrap_or_else(sys::err_ptr)
}
