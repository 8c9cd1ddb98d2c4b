// SPDX-License-Identifier: GPL-2.0

//! The backing: the physical pages behind a buffer, allocated once for a merged
//! [`Plan`] and freed on drop.
//!
//! - Contiguous, up to the page allocator's largest block (4 MiB): one compound
//!   high-order block (a pool block, or `alloc_pages` with `__GFP_COMP`), from
//!   ZONE_DMA32/ZONE_DMA when the window demands it.
//! - Contiguous and larger: `dma_alloc_pages` on the module's own misc device,
//!   with its coherent mask set to the window; above `MAX_ORDER` the direct
//!   allocator can only take it from CMA.
//! - Otherwise chunks, largest order first: the orders the attached IOMMUs map
//!   (2 MiB then 4 KiB for VT-d), never below what the segment limit allows,
//!   falling back to the next order when a high-order block is not available.
//!
//! Blocks of the pool's orders come from the pool of pre-zeroed pages
//! (`pool.rs`) when it has one in the window; everything else is zeroed here,
//! explicitly, whatever its source ([`zero_chunk`]): no path relies on
//! `__GFP_ZERO` or on the DMA allocator's own memset. A freed block of a pool
//! order goes back to the pool's dirty list, to be zeroed before any reuse.
//!
//! Every chunk is charged to the buffer creator's memory cgroup while the
//! buffer holds it ([`Memcg::charge_page`]; pool hits and misses alike), and
//! set to the buffer's cache mode (write-combined buffers' pages are converted
//! with `set_pages_array_wc`, and converted back before the page allocator
//! gets them).
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
use crate::pool::{self, CacheMode, Pool};
use crate::sys::{self, Memcg, PAGE_SHIFT, Raw};

/// Where a chunk came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A (compound) block from the page allocator.
    Buddy,
    /// A zeroed block from the pool.
    Pool,
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
            Source::Pool => "pool",
            Source::Cma => "cma",
            Source::DmaBuddy => "dma",
        }
    }

    fn from_dma_alloc(page: *mut bindings::page) -> Source {
        if sys::page_is_cma(page) { Source::Cma } else { Source::DmaBuddy }
    }

    /// Whether the chunk is a compound block of `order` (pool or buddy).
    fn is_block(self) -> bool {
        matches!(self, Source::Buddy | Source::Pool)
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
    /// Zeroed already (a pool block).
    zeroed: bool,
    /// Its pages' caching now.
    mode: CacheMode,
    /// Charged to the memcg (undone before freeing).
    charged: bool,
}

impl Chunk {
    /// Bytes allocated (a block's whole size, a DMA allocation's size).
    fn bytes(&self) -> u64 {
        if self.source.is_block() { block_bytes(self.order) } else { self.alloc_bytes }
    }

    fn pages(&self) -> u64 {
        self.bytes() >> PAGE_SHIFT
    }
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

/// What an allocation needs besides the plan: the device `dma_alloc_pages`
/// allocates for (the misc device) and the lock that serialises changes of its
/// coherent mask; the pool; whom to charge; the cache mode.
pub struct Allocator<'a> {
    /// The misc device's `this_device`.
    pub dev: &'a AtomicPtr<bindings::device>,
    /// Held while the mask is set and the allocation made.
    pub lock: &'a Mutex<()>,
    /// Pre-zeroed blocks.
    pub pool: &'a Pool,
    /// The memcg the pages are charged to.
    pub memcg: &'a Memcg,
    /// The buffer's cache mode.
    pub mode: CacheMode,
}

/// The pages of one buffer.
pub struct Backing {
    /// The chunks, in buffer order.
    pub chunks: KVec<Chunk>,
    /// The buffer's size.
    pub size: u64,
    allocdev: Raw<bindings::device>,
    pool: Raw<Pool>,
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
    sys::zero_pages(c.page.0, c.pages());
}

/// A run of physically contiguous pages of a backing, from some page on.
pub struct Run {
    /// The first frame.
    pub pfn: u64,
    /// Pages to the end of its chunk.
    pub pages: u64,
}

impl Backing {
    /// Allocates `plan.size` bytes that meet `plan`, zeroed, in the allocator's
    /// cache mode and charged to its memcg (the caller verifies every device's
    /// own constraints afterwards with [`plan::serves`]).
    pub fn allocate(plan: &Plan, alloc: &Allocator<'_>) -> Result<Backing> {
        let mut b = Self::allocate_pages(plan, alloc)?;
        for c in b.chunks.iter_mut() {
            if !c.zeroed {
                zero_chunk(c);
                c.zeroed = true;
            }
            if c.mode != alloc.mode {
                pool::set_cache_mode(c.page.0, c.pages(), alloc.mode)?;
                alloc.pool.stats.count_conversion(alloc.mode);
                c.mode = alloc.mode;
            }
            Self::charge(c, alloc.memcg)?;
        }
        Ok(b)
    }

    fn charge(c: &mut Chunk, memcg: &Memcg) -> Result {
        if c.source.is_block() {
            memcg.charge_page(c.page.0, c.order)?;
        } else {
            // Not a compound page: every page is freed on its own, so charge each.
            let pfn = sys::page_to_pfn(c.page.0);
            for i in 0..c.pages() {
                if let Err(e) = memcg.charge_page(sys::pfn_to_page(pfn + i), 0) {
                    (0..i).for_each(|k| sys::uncharge_page(sys::pfn_to_page(pfn + k), 0));
                    return Err(e);
                }
            }
        }
        c.charged = true;
        Ok(())
    }

    fn uncharge(c: &mut Chunk) {
        if !c.charged {
            return;
        }
        if c.source.is_block() {
            sys::uncharge_page(c.page.0, c.order);
        } else {
            let pfn = sys::page_to_pfn(c.page.0);
            (0..c.pages()).for_each(|i| sys::uncharge_page(sys::pfn_to_page(pfn + i), 0));
        }
        c.charged = false;
    }

    fn allocate_pages(plan: &Plan, alloc: &Allocator<'_>) -> Result<Backing> {
        let strategy = plan::strategy(plan);
        let mut b = Backing {
            chunks: KVec::new(),
            size: plan.size,
            allocdev: Raw(alloc.dev.load(Ordering::Acquire)),
            pool: Raw((alloc.pool as *const Pool).cast_mut()),
        };
        if strategy.contiguous {
            b.contiguous(plan, alloc)?;
        } else if let Err(e) = b.chunked(plan, &strategy, alloc) {
            // Chunks cannot meet the segment limit in this memory: one range always can.
            if plan.max_segments.value.is_none() {
                return Err(e);
            }
            b.free_all();
            b.contiguous(plan, alloc)?;
        }
        Ok(b)
    }

    /// A block of `order` below `window_end`: from the pool if it has one, else
    /// from the page allocator (retried in ZONE_DMA32 when a block landed above a
    /// window that ends between 4 GiB and the end of RAM).
    fn block(order: u32, window_end: u64, alloc: &Allocator<'_>) -> Option<(*mut bindings::page, Source)> {
        if let Some(p) = alloc.pool.take(order, window_end, alloc.mode) {
            return Some((p, Source::Pool));
        }
        let zone = gfp_zone(window_end);
        let fits = |p: *mut bindings::page| sys::page_to_phys(p) + block_bytes(order) <= window_end;
        let p = alloc_block(order, zone)?;
        if fits(p) {
            return Some((p, Source::Buddy));
        }
        free_block(p, order);
        if zone != 0 {
            return None;
        }
        let p = alloc_block(order, bindings::__GFP_DMA32)?;
        if fits(p) {
            return Some((p, Source::Buddy));
        }
        free_block(p, order);
        None
    }

    /// A chunk for a block; a pool block is zeroed already and in the requested mode.
    fn block_chunk(page: *mut bindings::page, source: Source, order: u32, len: u64, mode: CacheMode) -> Chunk {
        Chunk {
            page: Raw(page),
            order,
            phys: sys::page_to_phys(page),
            len,
            source,
            dma_handle: 0,
            alloc_bytes: 0,
            zeroed: source == Source::Pool,
            mode: if source == Source::Pool { mode } else { CacheMode::WriteBack },
            charged: false,
        }
    }

    fn contiguous(&mut self, plan: &Plan, alloc: &Allocator<'_>) -> Result {
        let window_end = plan.window_end.value;
        let size = plan.size;
        let order = plan::order_of(size).max(plan::order_of(plan.alignment.value));
        if order <= plan::MAX_ORDER {
            if let Some((p, source)) = Self::block(order, window_end, alloc) {
                return self.push(Self::block_chunk(p, source, order, size, alloc.mode));
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
            zeroed: false,
            mode: CacheMode::WriteBack,
            charged: false,
        };
        if phys + size > window_end || phys % plan.alignment.value != 0 {
            self.free_chunk(chunk);
            return Err(code::ENOMEM);
        }
        self.push(chunk)
    }

    fn chunked(&mut self, plan: &Plan, s: &plan::Strategy, alloc: &Allocator<'_>) -> Result {
        let window_end = plan.window_end.value;
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
            let (page, source) = match Self::block(order, window_end, alloc) {
                Some(b) => b,
                None if order > min_order && cursor + 1 < s.n_orders => {
                    cursor += 1;
                    continue;
                }
                None => return Err(code::ENOMEM),
            };
            let len = block_bytes(order).min(left);
            self.push(Self::block_chunk(page, source, order, len, alloc.mode))?;
            left -= len;
        }
        Ok(())
    }

    fn push(&mut self, c: Chunk) -> Result {
        // Reserve first so that a failed push cannot drop (leak) the chunk's pages.
        if self.chunks.reserve(1, GFP_KERNEL).is_err() {
            self.free_chunk(c);
            return Err(code::ENOMEM);
        }
        let bytes = c.bytes();
        self.chunks.push(c, GFP_KERNEL)?;
        LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        CHUNKS_ALLOCATED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives a chunk back: a block to the pool (which zeroes it before any reuse,
    /// or frees it when full), a DMA allocation to the DMA API; uncharged and
    /// write-back first.
    fn free_chunk(&self, mut c: Chunk) {
        Self::uncharge(&mut c);
        if c.source.is_block() {
            // SAFETY: the pool outlives every backing (buffers pin the module).
            let pool = unsafe { &*self.pool.0 };
            pool.give_back(c.page.0, c.order, c.mode);
            return;
        }
        if c.mode != CacheMode::WriteBack {
            if pool::set_cache_mode(c.page.0, c.pages(), CacheMode::WriteBack).is_err() {
                pr_warn!("cannot set a DMA allocation back to write-back; leaking it\n");
                return;
            }
            // SAFETY: as above.
            unsafe { &*self.pool.0 }.stats.count_conversion(CacheMode::WriteBack);
        }
        // CAST: alloc_bytes came from a usize.
        let bytes = c.alloc_bytes as usize;
        // SAFETY: the page came from dma_alloc_pages(dev, bytes, &handle) and is unused now.
        unsafe {
            bindings::dma_free_pages(
                self.allocdev.0,
                bytes,
                c.page.0,
                c.dma_handle,
                bindings::dma_data_direction_DMA_BIDIRECTIONAL,
            )
        };
    }

    fn free_all(&mut self) {
        while let Some(c) = sys::vec_pop(&mut self.chunks) {
            LIVE_BYTES.fetch_sub(c.bytes(), Ordering::Relaxed);
            CHUNKS_FREED.fetch_add(1, Ordering::Relaxed);
            self.free_chunk(c);
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
