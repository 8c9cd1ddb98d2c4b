// SPDX-License-Identifier: GPL-2.0

//! The backing: the physical pages behind a buffer, allocated once for a merged
//! [`Plan`] and freed on drop.
//!
//! - Contiguous, up to the page allocator's largest block (4 MiB): one compound
//!   high-order block (`alloc_pages` with `__GFP_COMP`), from ZONE_DMA32/ZONE_DMA
//!   when the window demands it.
//! - Contiguous and larger: `dma_alloc_pages` on the module's own misc device,
//!   with its coherent mask set to the window; above `MAX_ORDER` the direct
//!   allocator can only take it from CMA.
//! - Otherwise chunks, largest order first: the orders the attached IOMMUs map
//!   (2 MiB then 4 KiB for VT-d), never below what the segment limit allows,
//!   falling back to the next order when a high-order block is not available.
//!
//! Every chunk is zeroed here, explicitly, whatever its source ([`Backing::allocate`]
//! calls [`zero_chunk`]): no path relies on `__GFP_ZERO` or on the DMA
//! allocator's own memset.
//!
//! CPU mappings insert frames as special PTEs (`vmf_insert_mixed`), so they take
//! no page references and need nothing of a page but its frame: compound tail
//! pages, CMA pages (each with its own reference count, from `alloc_contig_range`)
//! and a non-compound fallback block of `dma_alloc_pages` all map the same way.

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use kernel::bindings;
use kernel::error::{Result, code};
use kernel::prelude::*;
use kernel::sync::Mutex;

use crate::plan::{self, Plan};
use crate::sys::{self, PAGE_SHIFT, Raw};

/// Where a chunk came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A (compound) block from the page allocator.
    Buddy,
    /// `dma_alloc_pages` on the allocator device, which took it from a CMA area
    /// (`cma_alloc`; the only source above `MAX_ORDER`).
    Cma,
    /// `dma_alloc_pages` on the allocator device, from the page allocator (its
    /// fallback when CMA had nothing in the window).
    DmaBuddy,
}

impl Source {
    /// The word debugfs prints.
    pub fn name(self) -> &'static str {
        match self {
            Source::Buddy => "buddy",
            Source::Cma => "cma",
            Source::DmaBuddy => "dma",
        }
    }

    fn from_dma_alloc(page: *mut bindings::page) -> Source {
        if sys::page_is_cma(page) { Source::Cma } else { Source::DmaBuddy }
    }
}

/// One physically contiguous allocation.
pub struct Chunk {
    page: Raw<bindings::page>,
    /// The allocation order (for `dma_alloc_pages` chunks: the order of the size asked for).
    pub order: u32,
    /// Physical address of the first byte.
    pub phys: u64,
    /// Bytes of the buffer it holds (the tail of the last chunk may be unused).
    pub len: u64,
    /// Where it came from.
    pub source: Source,
    dma_handle: u64,
    alloc_bytes: u64,
}

/// Bytes of backing allocated now, over all buffers (debugfs `live_bytes`: zero
/// once every buffer is released, or something leaked).
pub static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Chunks allocated and freed since load (debugfs).
pub static CHUNKS_ALLOCATED: AtomicU64 = AtomicU64::new(0);
/// See [`CHUNKS_ALLOCATED`].
pub static CHUNKS_FREED: AtomicU64 = AtomicU64::new(0);

fn block_bytes(order: u32) -> u64 {
    sys::PAGE_BYTES << order
}

/// The device `dma_alloc_pages` allocates for (the misc device), and the lock
/// that serialises changes of its coherent mask.
pub struct Allocator<'a> {
    /// The misc device's `this_device`.
    pub dev: &'a AtomicPtr<bindings::device>,
    /// Held while the mask is set and the allocation made.
    pub lock: &'a Mutex<()>,
}

/// The pages of one buffer.
pub struct Backing {
    /// The chunks, in buffer order.
    pub chunks: KVec<Chunk>,
    /// The buffer's size.
    pub size: u64,
    allocdev: Raw<bindings::device>,
}

const fn gfp_zone(window_end: u64) -> bindings::gfp_t {
    if window_end <= 16 << 20 {
        bindings::__GFP_DMA
    } else if window_end <= 1 << 32 {
        bindings::__GFP_DMA32
    } else {
        0
    }
}

fn alloc_block(order: u32, zone: bindings::gfp_t) -> Option<*mut bindings::page> {
    let mut gfp = bindings::GFP_KERNEL | bindings::__GFP_NOWARN | zone;
    if order > 0 {
        gfp |= bindings::__GFP_COMP | bindings::__GFP_NORETRY;
    }
    // SAFETY: alloc_pages may sleep (GFP_KERNEL, process context); a non-null result is ours.
    let page = unsafe { bindings::alloc_pages(gfp, order) };
    if page.is_null() { None } else { Some(page) }
}

fn free_block(page: *mut bindings::page, order: u32) {
    // SAFETY: `page` is a block of `order` we allocated with alloc_pages and no longer use.
    unsafe { bindings::__free_pages(page, order) };
}

/// Zeroes every page of a chunk (the whole allocation, not only the bytes the
/// buffer uses: the tail of the last chunk is mapped too).
pub fn zero_chunk(c: &Chunk) {
    let pages = Backing::chunk_bytes(c) >> PAGE_SHIFT;
    let pfn = c.phys >> PAGE_SHIFT;
    for i in 0..pages {
        sys::clear_page(sys::pfn_to_page(pfn + i));
        if i % 256 == 255 {
            sys::cond_resched();
        }
    }
}

/// A run of physically contiguous pages of a backing, from some page on.
pub struct Run {
    /// The first frame.
    pub pfn: u64,
    /// Pages to the end of its chunk.
    pub pages: u64,
}

impl Backing {
    /// Allocates `plan.size` bytes that meet `plan`, zeroed (the caller verifies
    /// every device's own constraints afterwards with [`plan::serves`]).
    pub fn allocate(plan: &Plan, alloc: &Allocator<'_>) -> Result<Backing> {
        let b = Self::allocate_pages(plan, alloc)?;
        for c in b.chunks.iter() {
            zero_chunk(c);
        }
        Ok(b)
    }

    fn allocate_pages(plan: &Plan, alloc: &Allocator<'_>) -> Result<Backing> {
        let strategy = plan::strategy(plan);
        let mut b = Backing { chunks: KVec::new(), size: plan.size, allocdev: Raw(alloc.dev.load(Ordering::Acquire)) };
        if strategy.contiguous {
            b.contiguous(plan, alloc)?;
        } else if let Err(e) = b.chunked(plan, &strategy) {
            // Chunks cannot meet the segment limit in this memory: one range always can.
            if plan.max_segments.value.is_none() {
                return Err(e);
            }
            b.free_all();
            b.contiguous(plan, alloc)?;
        }
        Ok(b)
    }

    fn contiguous(&mut self, plan: &Plan, alloc: &Allocator<'_>) -> Result {
        let window_end = plan.window_end.value;
        let size = plan.size;
        let order = plan::order_of(size).max(plan::order_of(plan.alignment.value));
        if order <= plan::MAX_ORDER {
            let zone = gfp_zone(window_end);
            let mut page = alloc_block(order, zone);
            if let Some(p) = page {
                if sys::page_to_phys(p) + block_bytes(order) > window_end {
                    free_block(p, order);
                    page = if zone == 0 { alloc_block(order, bindings::__GFP_DMA32) } else { None };
                }
            }
            if let Some(p) = page {
                let phys = sys::page_to_phys(p);
                if phys + block_bytes(order) <= window_end {
                    return self.push(Chunk {
                        page: Raw(p),
                        order,
                        phys,
                        len: size,
                        source: Source::Buddy,
                        dma_handle: 0,
                        alloc_bytes: 0,
                    });
                }
                free_block(p, order);
            }
        }
        // Larger than the page allocator's blocks (or none was free): CMA through
        // the DMA API, on our own device whose coherent mask is the window.
        let dev = self.allocdev.0;
        if dev.is_null() {
            return Err(code::ENOMEM);
        }
        let _guard = alloc.lock.lock();
        let mut handle: bindings::dma_addr_t = 0;
        // The highest reachable address, as a limit the direct allocator checks.
        let limit = window_end.saturating_sub(1);
        // SAFETY: `dev` is our registered misc device; the alloc lock serialises mask updates.
        unsafe {
            (*dev).coherent_dma_mask = limit;
            (*dev).bus_dma_limit = 0;
        }
        // CAST: size is at most MAX_SIZE (1 GiB), which fits usize.
        let bytes = size as usize;
        // SAFETY: dma_alloc_pages may sleep; the device is valid; a non-null page is ours to free
        // with dma_free_pages(dev, bytes, page, handle, DMA_BIDIRECTIONAL).
        let page = unsafe {
            bindings::dma_alloc_pages(
                dev,
                bytes,
                &mut handle,
                bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                bindings::GFP_KERNEL | bindings::__GFP_NOWARN,
            )
        };
        if page.is_null() {
            return Err(code::ENOMEM);
        }
        let phys = sys::page_to_phys(page);
        let chunk = Chunk {
            page: Raw(page),
            order: plan::order_of(size),
            phys,
            len: size,
            source: Source::from_dma_alloc(page),
            dma_handle: handle,
            alloc_bytes: size,
        };
        if phys + size > window_end || phys % plan.alignment.value != 0 {
            Self::free_chunk(dev, &chunk);
            return Err(code::ENOMEM);
        }
        self.push(chunk)
    }

    fn chunked(&mut self, plan: &Plan, s: &plan::Strategy) -> Result {
        let window_end = plan.window_end.value;
        let mut zone = gfp_zone(window_end);
        let min_order = s.orders[s.n_orders - 1];
        let mut cursor = 0usize;
        let mut left = plan.size;
        while left > 0 {
            // The largest allowed order that fits what is left; the smallest allowed
            // order covers a short tail.
            while cursor + 1 < s.n_orders && block_bytes(s.orders[cursor]) > left {
                cursor += 1;
            }
            let mut order = s.orders[cursor];
            if self.chunks.is_empty() && s.first_order > order {
                order = s.first_order;
            }
            let page = match alloc_block(order, zone) {
                Some(p) => p,
                None if order > min_order && cursor + 1 < s.n_orders => {
                    cursor += 1;
                    continue;
                }
                None => return Err(code::ENOMEM),
            };
            let phys = sys::page_to_phys(page);
            let block = block_bytes(order);
            if phys + block > window_end {
                free_block(page, order);
                if zone == 0 {
                    zone = bindings::__GFP_DMA32;
                    continue;
                }
                return Err(code::ENOMEM);
            }
            let len = block.min(left);
            self.push(Chunk {
                page: Raw(page),
                order,
                phys,
                len,
                source: Source::Buddy,
                dma_handle: 0,
                alloc_bytes: 0,
            })?;
            left -= len;
        }
        Ok(())
    }

    fn push(&mut self, c: Chunk) -> Result {
        // Reserve first so that a failed push cannot drop (leak) the chunk's pages.
        if self.chunks.reserve(1, GFP_KERNEL).is_err() {
            Self::free_chunk(self.allocdev.0, &c);
            return Err(code::ENOMEM);
        }
        let bytes = Self::chunk_bytes(&c);
        self.chunks.push(c, GFP_KERNEL)?;
        LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        CHUNKS_ALLOCATED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn chunk_bytes(c: &Chunk) -> u64 {
        match c.source {
            Source::Buddy => block_bytes(c.order),
            Source::Cma | Source::DmaBuddy => c.alloc_bytes,
        }
    }

    fn free_chunk(dev: *mut bindings::device, c: &Chunk) {
        match c.source {
            Source::Buddy => free_block(c.page.0, c.order),
            Source::Cma | Source::DmaBuddy => {
                // CAST: alloc_bytes came from a usize.
                let bytes = c.alloc_bytes as usize;
                // SAFETY: the page came from dma_alloc_pages(dev, bytes, &handle) and is unused now.
                unsafe {
                    bindings::dma_free_pages(
                        dev,
                        bytes,
                        c.page.0,
                        c.dma_handle,
                        bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                    )
                };
            }
        }
    }

    fn free_all(&mut self) {
        let dev = self.allocdev.0;
        while !self.chunks.is_empty() {
            let last = self.chunks.len() - 1;
            let c = sys::vec_remove(&mut self.chunks, last);
            Self::free_chunk(dev, &c);
            LIVE_BYTES.fetch_sub(Self::chunk_bytes(&c), Ordering::Relaxed);
            CHUNKS_FREED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The physical segments `(start, len)`, in buffer order.
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + Clone + '_ {
        self.chunks.iter().map(|c| (c.phys, c.len))
    }

    /// Every 4 KiB page of the buffer, in order.
    pub fn pages(&self) -> impl Iterator<Item = *mut bindings::page> + '_ {
        self.chunks.iter().flat_map(|c| {
            let pfn = c.phys >> PAGE_SHIFT;
            (0..c.len >> PAGE_SHIFT).map(move |i| sys::pfn_to_page(pfn + i))
        })
    }

    /// The pages from the `index`-th 4 KiB page to the end of its chunk.
    pub fn run_from(&self, index: u64) -> Option<Run> {
        let mut first = 0u64;
        for c in self.chunks.iter() {
            let n = c.len >> PAGE_SHIFT;
            if index < first + n {
                return Some(Run { pfn: (c.phys >> PAGE_SHIFT) + index - first, pages: first + n - index });
            }
            first += n;
        }
        None
    }

    /// Copies the contents of `old` (the same size) into `self`, page by page.
    pub fn copy_from(&self, old: &Backing) {
        for (dst, src) in self.pages().zip(old.pages()) {
            sys::copy_page(dst, src);
        }
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        self.free_all();
    }
}
