// SPDX-License-Identifier: GPL-2.0

//! Pools of pre-zeroed pages, shared by `/dev/dmaplace` and the heap.
//!
//! Free lists per (order, address class, cache mode): orders [`POOL_ORDERS`]
//! (the chunk sizes the allocator asks for), address class [`Class::Dma32`]
//! (the whole block below 4 GiB) or [`Class::High`], cache mode write-back or
//! write-combined. A list holds only zeroed blocks. CMA is not pooled: it is
//! memory the page allocator lends to movable allocations, and a pool would
//! keep it from them.
//!
//! - **Taking** ([`Pool::take`]) pops the most recently zeroed block of the
//!   first list that fits the request's window (for a window ending at or above
//!   the end of RAM: `High`, then `Dma32`; below 4 GiB: `Dma32` blocks below the
//!   window). A miss falls back to the page allocator (and zeroing) in the caller.
//! - **Giving back** ([`Pool::give_back`]): a freed block goes to the *dirty*
//!   list, never straight to a free list: the worker zeroes it first. A page
//!   that held one owner's data therefore never reaches another owner unzeroed.
//! - **The worker** (a work item on `system_unbound_wq`, run at nice 19 so that
//!   it uses spare cycles and never preempts an allocating task) zeroes dirty blocks,
//!   refills every list below its low watermark up to its high watermark
//!   (recycled blocks stay as long as the pool has room), and frees whatever
//!   would pass `pool_max_mib`, oldest first. Watermarks are
//!   shares of `pool_max_mib` (see [`share`]); write-combined lists are only
//!   filled by recycling (converting a page's caching costs a TLB flush on every
//!   CPU, so it is done on demand and counted).
//! - **The shrinker** gives blocks back to the page allocator under memory
//!   pressure, oldest first (`/sys/kernel/debug/shrinker/dmaplace-pool-*`).
//!
//! Locking: the pool's mutex is taken in reclaim (the shrinker), so nothing
//! under it may allocate with reclaim: list growth uses `GFP_NOWAIT` (a block
//! that cannot be tracked is freed instead), and pages are allocated, zeroed
//! and converted outside it. Order: a buffer's `inner` → the pool's mutex.

use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::bindings;
use kernel::ffi::c_ulong;
use kernel::prelude::*;
use kernel::sync::Mutex;
use kernel::types::Opaque;

use crate::sys::{self, PAGE_SHIFT, Raw, UintParam};

/// The orders the pool keeps (4 KiB .. 4 MiB): the chunk orders the allocator
/// asks for (no IOMMU: 10, 9, 8, 4; VT-d: 9, 0).
pub const POOL_ORDERS: [u32; 5] = [0, 4, 8, 9, 10];

/// The default of `pool_max_mib`.
pub const DEFAULT_POOL_MAX_MIB: u32 = 128;

/// `pool_max_mib`: bytes (MiB) the pool may hold, free and dirty; 0 disables it.
pub static POOL_MAX_MIB: UintParam = UintParam(core::sync::atomic::AtomicU32::new(DEFAULT_POOL_MAX_MIB));
crate::module_param!(__PARAM_POOL_MAX_MIB, "pool_max_mib", ops = &POOL_MAX_OPS, POOL_MAX_MIB, 0o644);

/// `param_ops_uint`, plus a kick of the worker, so that a new maximum takes
/// effect at once (a lower one trims the pool, a higher one refills it).
static POOL_MAX_OPS: bindings::kernel_param_ops =
    bindings::kernel_param_ops { flags: 0, set: Some(pool_max_set), get: Some(bindings::param_get_uint), free: None };

unsafe extern "C" fn pool_max_set(val: *const kernel::ffi::c_char, kp: *const bindings::kernel_param) -> i32 {
    // SAFETY: the module loader or sysfs passes a NUL-terminated value and our kernel_param.
    let r = unsafe { bindings::param_set_uint(val, kp) };
    if r == 0 {
        // At load the pool does not exist yet; it reads the value when it starts.
        if let Some(g) = crate::global_if_loaded() {
            g.pool.kick();
        }
    }
    r
}

/// Where a block sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The whole block below 4 GiB (what a 32-bit device can reach).
    Dma32,
    /// Anywhere else.
    High,
}

impl Class {
    fn of(phys: u64, bytes: u64) -> Class {
        if phys + bytes <= 1 << 32 { Class::Dma32 } else { Class::High }
    }
    fn name(self) -> &'static str {
        match self {
            Class::Dma32 => "dma32",
            Class::High => "high",
        }
    }
}

/// How the CPU maps a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Cached (x86 DMA is coherent: what every buffer uses unless asked otherwise).
    WriteBack,
    /// Write-combined (`set_pages_array_wc`), for buffers whose CPU mappings must
    /// not be cached.
    WriteCombined,
}

impl CacheMode {
    fn name(self) -> &'static str {
        match self {
            CacheMode::WriteBack => "wb",
            CacheMode::WriteCombined => "wc",
        }
    }
}

/// The share of `pool_max_mib` a list's high watermark gets, in 1/256ths: half
/// of the pool for each address class, most of it in the large orders buffers
/// are made of. Write-combined lists get the same share, filled only by recycling.
pub fn share(order: u32) -> u64 {
    match order {
        10 => 64,
        9 => 32,
        8 => 16,
        _ => 8,
    }
}

struct Entry {
    page: Raw<bindings::page>,
    /// When it became free (ktime, ns): the shrinker gives the oldest back first.
    since: i64,
}

struct List {
    order: u32,
    class: Class,
    mode: CacheMode,
    /// Zeroed blocks, oldest first.
    entries: KVec<Entry>,
    hits: u64,
    misses: u64,
}

impl List {
    fn block_bytes(&self) -> u64 {
        sys::PAGE_BYTES << self.order
    }
    /// `(low, high)` watermarks in blocks for a pool of `max` bytes.
    fn watermarks(&self, max: u64) -> (usize, usize) {
        let high = max * share(self.order) / 256 / self.block_bytes();
        // CAST: at most pool_max / 4 KiB blocks.
        let high = high as usize;
        match self.mode {
            CacheMode::WriteBack => (high / 4, high),
            CacheMode::WriteCombined => (0, high),
        }
    }
}

struct Dirty {
    page: Raw<bindings::page>,
    order: u32,
    mode: CacheMode,
}

struct State {
    lists: KVec<List>,
    dirty: KVec<Dirty>,
    /// Bytes held, free and dirty.
    bytes: u64,
    /// Set at module exit: nothing enters the pool any more.
    stopping: bool,
}

/// Counters debugfs shows.
#[derive(Default)]
pub struct Stats {
    /// Bytes the worker zeroed.
    pub zeroed_bytes: AtomicU64,
    /// Nanoseconds it spent zeroing them.
    pub zeroing_ns: AtomicU64,
    /// Bytes allocated to refill lists.
    pub refilled_bytes: AtomicU64,
    /// Bytes the shrinker gave back.
    pub shrunk_bytes: AtomicU64,
    /// Bytes freed because the pool was full (or shrinking to a lower `pool_max_mib`).
    pub trimmed_bytes: AtomicU64,
    /// Blocks converted to write-combined, and back.
    pub to_wc: AtomicU64,
    /// See [`Stats::to_wc`].
    pub to_wb: AtomicU64,
    /// Worker runs started.
    pub runs: AtomicU64,
    /// Times the worker was queued (a kick while it is already pending does not count).
    pub queued: AtomicU64,
    /// Worker runs finished. The worker is idle, with nothing pending, exactly
    /// when `finished == queued` (read `finished` first): what a test waits for
    /// before it reads the lists.
    pub finished: AtomicU64,
}

impl Stats {
    /// Counts one conversion of a chunk to `mode`.
    pub fn count_conversion(&self, mode: CacheMode) {
        match mode {
            CacheMode::WriteCombined => self.to_wc.fetch_add(1, Ordering::Relaxed),
            CacheMode::WriteBack => self.to_wb.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The pool.
#[pin_data]
pub struct Pool {
    #[pin]
    state: Mutex<State>,
    /// The worker: a delayed work item, so that a kick from an allocating or
    /// freeing task runs after that task's system call, not inside it.
    #[pin]
    work: Opaque<bindings::delayed_work>,
    /// Counters.
    pub stats: Stats,
    shrinker: core::sync::atomic::AtomicPtr<bindings::shrinker>,
}

// SAFETY: the state is behind a mutex, the counters are atomics, and the work_struct and the
// shrinker are only used through the workqueue and shrinker APIs, which may be called from any
// thread.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

fn now_ns() -> i64 {
    // SAFETY: ktime_get reads the monotonic clock.
    unsafe { bindings::ktime_get() }
}

/// `bytes` per `ns` in MiB/s, 0 for no time. In whole MiB so that the product
/// cannot overflow (`bytes * 1e9` would after 17 GiB: a panic in debugfs).
fn mib_per_s(bytes: u64, ns: u64) -> u64 {
    match ns {
        0 => 0,
        ns => (bytes >> 20).saturating_mul(1_000_000_000) / ns,
    }
}

/// Zeroes a block (one `memset` per MiB, yielding between them).
pub fn zero_block(page: *mut bindings::page, order: u32) {
    sys::zero_pages(page, 1 << order);
}

/// Sets the caching of `count` pages from `page` on (`set_pages_array_wc`/`_wb`):
/// every CPU flushes its TLB.
pub fn set_cache_mode(page: *mut bindings::page, count: u64, mode: CacheMode) -> Result {
    // CAST: a chunk has at most 1 GiB / 4 KiB pages.
    let mut pages = KVVec::<*mut bindings::page>::with_capacity(count as usize, GFP_KERNEL)?;
    let pfn = sys::page_to_pfn(page);
    for i in 0..count {
        pages.push(sys::pfn_to_page(pfn + i), GFP_KERNEL)?;
    }
    let n = i32::try_from(pages.len()).map_err(|_| EINVAL)?;
    // SAFETY: the pages are a block we own; the array lives for the call.
    let r = unsafe {
        match mode {
            CacheMode::WriteCombined => bindings::set_pages_array_wc(pages.as_mut_ptr(), n),
            CacheMode::WriteBack => bindings::set_pages_array_wb(pages.as_mut_ptr(), n),
        }
    };
    sys::check_ret(r).map(drop)
}

fn alloc_block(order: u32, class: Class) -> Option<*mut bindings::page> {
    let mut gfp = bindings::GFP_KERNEL | bindings::__GFP_NORETRY | bindings::__GFP_NOWARN;
    if order > 0 {
        gfp |= bindings::__GFP_COMP;
    }
    if class == Class::Dma32 {
        gfp |= bindings::__GFP_DMA32;
    }
    // SAFETY: alloc_pages may sleep (process context); a non-null block is ours.
    let page = unsafe { bindings::alloc_pages(gfp, order) };
    (!page.is_null()).then_some(page)
}

impl Pool {
    /// A pool with empty lists; [`Pool::start`] registers its shrinker.
    pub fn new() -> impl PinInit<Pool, Error> {
        try_pin_init!(Pool {
            state <- kernel::new_mutex!(State { lists: KVec::new(), dirty: KVec::new(), bytes: 0, stopping: false }, "dmaplace::pool"),
            // SAFETY: INIT_DELAYED_WORK, spelled out: the work_struct and its timer are
            // initialised in place before any use.
            work <- unsafe {
                kernel::init::pin_init_from_closure(|slot: *mut Opaque<bindings::delayed_work>| {
                    let dw = Opaque::raw_get(slot);
                    bindings::init_work_with_key(
                        core::ptr::addr_of_mut!((*dw).work),
                        Some(pool_work),
                        false,
                        c"dmaplace::pool::work".as_ptr().cast(),
                        // LockClassKey is a transparent wrapper of the C key.
                        (kernel::static_lock_class!() as *const kernel::sync::LockClassKey)
                            .cast_mut()
                            .cast::<bindings::lock_class_key>(),
                    );
                    bindings::init_timer_key(
                        core::ptr::addr_of_mut!((*dw).timer),
                        Some(bindings::delayed_work_timer_fn),
                        bindings::TIMER_IRQSAFE,
                        c"dmaplace::pool::timer".as_ptr().cast(),
                        (kernel::static_lock_class!() as *const kernel::sync::LockClassKey)
                            .cast_mut()
                            .cast::<bindings::lock_class_key>(),
                    );
                    Ok::<(), Error>(())
                })
            },
            stats: Stats::default(),
            shrinker: core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
        }? Error)
    }

    /// Creates the lists and registers the shrinker.
    pub fn start(&self) -> Result {
        {
            let mut st = self.state.lock();
            for mode in [CacheMode::WriteBack, CacheMode::WriteCombined] {
                for class in [Class::High, Class::Dma32] {
                    for order in POOL_ORDERS {
                        st.lists
                            .push(List { order, class, mode, entries: KVec::new(), hits: 0, misses: 0 }, GFP_KERNEL)?;
                    }
                }
            }
        }
        // SAFETY: shrinker_alloc copies the name; the result is ours until shrinker_free.
        let s = unsafe { bindings::shrinker_alloc(0, c"dmaplace-pool".as_ptr().cast()) };
        if s.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: a fresh shrinker, not registered yet; the pool outlives it (freed in stop()).
        unsafe {
            (*s).count_objects = Some(pool_count);
            (*s).scan_objects = Some(pool_scan);
            (*s).seeks = 2; // DEFAULT_SEEKS
            (*s).private_data = (self as *const Pool).cast_mut().cast::<c_void>();
            bindings::shrinker_register(s);
        }
        self.shrinker.store(s, Ordering::Release);
        self.kick();
        Ok(())
    }

    /// Stops the worker and the shrinker and frees every block (module exit).
    pub fn stop(&self) {
        self.state.lock().stopping = true;
        let s = self.shrinker.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !s.is_null() {
            // SAFETY: registered in start(); shrinker_free waits for running scans.
            unsafe { bindings::shrinker_free(s) };
        }
        // SAFETY: the work was initialised in new(); cancel stops its timer and waits for a
        // running instance.
        unsafe { bindings::cancel_delayed_work_sync(Opaque::raw_get(&self.work)) };
        self.drain(u64::MAX, |_| true);
    }

    /// Queues the worker (a no-op when it is already queued, or once the pool is
    /// stopping: stop() sets that under the lock before it cancels the work, so no
    /// kick can queue it again after).
    pub fn kick(&self) {
        let st = self.state.lock();
        self.queue(&st);
    }

    /// [`Pool::kick`] with the lock held (the caller's guard proves it).
    fn queue(&self, st: &State) {
        if st.stopping {
            return;
        }
        // At least 4 ms (a timer of n jiffies fires after n - 1 to n of them): after
        // the kicking task's system call, and a burst of frees is zeroed in one run.
        // CAST: a few jiffies.
        let delay = ((bindings::CONFIG_HZ * 4).div_ceil(1000) + 1) as c_ulong;
        // SAFETY: the work was initialised in new(); the pool lives until stop() cancels it.
        let queued = unsafe {
            bindings::queue_delayed_work_on(
                // CAST: WORK_CPU_UNBOUND is NR_CPUS, a small positive int.
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as i32,
                bindings::system_unbound_wq,
                Opaque::raw_get(&self.work),
                delay,
            )
        };
        if queued {
            self.stats.queued.fetch_add(1, Ordering::Release);
        }
    }

    fn max_bytes() -> u64 {
        u64::from(POOL_MAX_MIB.get()) << 20
    }

    /// A zeroed block of `order` in `mode` that ends at or below `window_end`,
    /// if the pool has one.
    pub fn take(&self, order: u32, window_end: u64, mode: CacheMode) -> Option<*mut bindings::page> {
        if !POOL_ORDERS.contains(&order) || Self::max_bytes() == 0 {
            return None;
        }
        let bytes = sys::PAGE_BYTES << order;
        let classes: &[Class] =
            if window_end >= crate::global().ram_end { &[Class::High, Class::Dma32] } else { &[Class::Dma32] };
        let mut st = self.state.lock();
        let mut found = None;
        for class in classes {
            let Some(l) = st.lists.iter_mut().find(|l| l.order == order && l.class == *class && l.mode == mode) else {
                continue;
            };
            // The most recently zeroed fitting block (a bounded look back for tight windows).
            let n = l.entries.len();
            let pos =
                (n.saturating_sub(64)..n).rev().find(|&i| sys::page_to_phys(l.entries[i].page.0) + bytes <= window_end);
            if let Some(i) = pos {
                found = Some(sys::vec_remove(&mut l.entries, i).page.0);
                l.hits += 1;
                break;
            }
        }
        let max = Self::max_bytes();
        let first = st.lists.iter_mut().find(|l| l.order == order && l.class == classes[0] && l.mode == mode);
        // Refill only what fell below its low watermark (or missed).
        let refill = match (found.is_some(), first) {
            (false, Some(l)) => {
                l.misses += 1;
                true
            }
            (true, Some(l)) => l.entries.len() < l.watermarks(max).0,
            (_, None) => false,
        };
        if found.is_some() {
            st.bytes -= bytes;
        }
        if refill {
            self.queue(&st);
        }
        found
    }

    /// Takes back a block a buffer no longer uses (uncharged, in `mode`): it goes
    /// to the dirty list, or, when the pool is full or stopping, back to the page
    /// allocator (converted back to write-back first).
    ///
    /// The worker is queued only when the dirty list was empty: it zeroes until it
    /// finds the list empty (under the lock), so a block added to a non-empty list
    /// is seen by the run already queued or running.
    pub fn give_back(&self, page: *mut bindings::page, order: u32, mode: CacheMode) {
        let bytes = sys::PAGE_BYTES << order;
        if POOL_ORDERS.contains(&order) {
            let mut st = self.state.lock();
            // No reclaim under the pool's lock (the shrinker takes it): GFP_NOWAIT.
            if !st.stopping && st.bytes + bytes <= Self::max_bytes() && st.dirty.reserve(1, GFP_NOWAIT).is_ok() {
                let was_empty = st.dirty.is_empty();
                if st.dirty.push(Dirty { page: Raw(page), order, mode }, GFP_NOWAIT).is_ok() {
                    st.bytes += bytes;
                    if was_empty {
                        self.queue(&st);
                    }
                    return;
                }
            }
        }
        self.free_block(page, order, mode);
    }

    fn free_block(&self, page: *mut bindings::page, order: u32, mode: CacheMode) {
        if mode == CacheMode::WriteCombined {
            if set_cache_mode(page, 1 << order, CacheMode::WriteBack).is_err() {
                // A page the kernel still tracks as write-combined must not be reused.
                pr_warn!("pool: cannot set a block back to write-back; leaking it\n");
                return;
            }
            self.stats.count_conversion(CacheMode::WriteBack);
        }
        // SAFETY: a block of `order` from alloc_pages that nothing uses any more.
        unsafe { bindings::__free_pages(page, order) };
    }

    /// Frees free-list blocks, oldest first, until `want` bytes are freed or no
    /// block `pick` accepts is left; returns the bytes freed.
    fn drain(&self, want: u64, pick: impl Fn(&List) -> bool) -> u64 {
        let mut freed = 0;
        while freed < want {
            let mut st = self.state.lock();
            let oldest = st
                .lists
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.entries.is_empty() && pick(l))
                .min_by_key(|(_, l)| l.entries[0].since)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                // Dirty blocks too, at exit (the worker no longer runs).
                if st.stopping {
                    if let Some(d) = sys::vec_pop(&mut st.dirty) {
                        st.bytes -= sys::PAGE_BYTES << d.order;
                        drop(st);
                        self.free_block(d.page.0, d.order, d.mode);
                        continue;
                    }
                }
                break;
            };
            let l = &mut st.lists[i];
            let (order, mode) = (l.order, l.mode);
            let e = sys::vec_remove(&mut l.entries, 0);
            let bytes = sys::PAGE_BYTES << order;
            st.bytes -= bytes;
            drop(st);
            self.free_block(e.page.0, order, mode);
            freed += bytes;
        }
        freed
    }

    /// Puts a zeroed block on its free list if the pool has room; else frees it.
    /// (The high watermark bounds refills; a recycled block is kept whenever the
    /// pool has room, since freeing it now only means allocating again later.)
    fn insert(&self, page: *mut bindings::page, order: u32, mode: CacheMode, counted: bool) {
        let bytes = sys::PAGE_BYTES << order;
        let class = Class::of(sys::page_to_phys(page), bytes);
        let max = Self::max_bytes();
        let mut st = self.state.lock();
        let room = st.bytes + if counted { 0 } else { bytes } <= max && !st.stopping;
        let Some(l) = st.lists.iter_mut().find(|l| l.order == order && l.class == class && l.mode == mode) else {
            return;
        };
        if room && l.entries.reserve(1, GFP_NOWAIT).is_ok() {
            if l.entries.push(Entry { page: Raw(page), since: now_ns() }, GFP_NOWAIT).is_ok() {
                if !counted {
                    st.bytes += bytes;
                }
                return;
            }
        }
        if counted {
            st.bytes -= bytes;
        }
        drop(st);
        self.stats.trimmed_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.free_block(page, order, mode);
    }

    fn zero_timed(&self, page: *mut bindings::page, order: u32) {
        let t = now_ns();
        zero_block(page, order);
        // CAST: a non-negative duration.
        self.stats.zeroing_ns.fetch_add((now_ns() - t).max(0) as u64, Ordering::Relaxed);
        self.stats.zeroed_bytes.fetch_add(sys::PAGE_BYTES << order, Ordering::Relaxed);
    }

    /// One worker run: zero the dirty blocks, refill lists below their low
    /// watermark, trim to `pool_max_mib`.
    fn run(&self) {
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        loop {
            let d = {
                let mut st = self.state.lock();
                if st.stopping {
                    return;
                }
                sys::vec_pop(&mut st.dirty)
            };
            let Some(d) = d else { break };
            self.zero_timed(d.page.0, d.order);
            self.insert(d.page.0, d.order, d.mode, true);
        }
        let max = Self::max_bytes();
        for k in 0.. {
            // The k-th list's deficit, read under the lock, filled outside it.
            let want = {
                let st = self.state.lock();
                if st.stopping || k >= st.lists.len() {
                    break;
                }
                let l = &st.lists[k];
                let (low, high) = l.watermarks(max);
                let n = l.entries.len();
                (l.mode == CacheMode::WriteBack && n < low).then(|| (l.order, l.class, high - n))
            };
            let Some((order, class, blocks)) = want else { continue };
            for _ in 0..blocks {
                let Some(page) = alloc_block(order, class) else { break };
                self.stats.refilled_bytes.fetch_add(sys::PAGE_BYTES << order, Ordering::Relaxed);
                self.zero_timed(page, order);
                self.insert(page, order, CacheMode::WriteBack, false);
            }
        }
        let over = self.state.lock().bytes.saturating_sub(max);
        if over > 0 {
            let n = self.drain(over, |_| true);
            self.stats.trimmed_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Writes the pool's debugfs file.
    pub fn show(&self, w: &mut sys::SeqWriter) -> core::fmt::Result {
        use core::fmt::Write;
        let max = Self::max_bytes();
        let s = &self.stats;
        let (zb, zns) = (s.zeroed_bytes.load(Ordering::Relaxed), s.zeroing_ns.load(Ordering::Relaxed));
        // `finished` before `queued`: equal then means no run was pending or running when
        // `queued` was read (queue() counts under the lock this holds).
        let finished = s.finished.load(Ordering::Acquire);
        let st = self.state.lock();
        let queued = s.queued.load(Ordering::Acquire);
        writeln!(
            w,
            "pool max_bytes={} bytes={} dirty={} zeroed_bytes={} zeroing_ns={} zero_mib_per_s={} refilled_bytes={} shrunk_bytes={} trimmed_bytes={} to_wc={} to_wb={} runs={} queued={} finished={}",
            sys::Hex(max),
            sys::Hex(st.bytes),
            st.dirty.len(),
            sys::Hex(zb),
            zns,
            mib_per_s(zb, zns),
            sys::Hex(s.refilled_bytes.load(Ordering::Relaxed)),
            sys::Hex(s.shrunk_bytes.load(Ordering::Relaxed)),
            sys::Hex(s.trimmed_bytes.load(Ordering::Relaxed)),
            s.to_wc.load(Ordering::Relaxed),
            s.to_wb.load(Ordering::Relaxed),
            s.runs.load(Ordering::Relaxed),
            queued,
            finished,
        )?;
        for l in st.lists.iter() {
            let (low, high) = l.watermarks(max);
            writeln!(
                w,
                "list order={} class={} mode={} blocks={} bytes={} low={} high={} hits={} misses={} oldest={}",
                l.order,
                l.class.name(),
                l.mode.name(),
                l.entries.len(),
                // CAST: usize is 64 bits here.
                sys::Hex(l.entries.len() as u64 * l.block_bytes()),
                low,
                high,
                l.hits,
                l.misses,
                l.entries.first().map_or(0, |e| e.since)
            )?;
        }
        Ok(())
    }

    /// Blocks of free lists, in 4 KiB pages (the shrinker's objects).
    fn free_pages(&self) -> u64 {
        let st = self.state.lock();
        // CAST: usize is 64 bits here.
        st.lists.iter().map(|l| (l.entries.len() as u64) << l.order).sum()
    }
}

unsafe extern "C" fn pool_work(work: *mut bindings::work_struct) {
    // SAFETY: the work_struct is the first member of the `work` delayed_work of the pinned
    // Pool (container_of), which lives until stop() has cancelled the work.
    let pool = unsafe { &*work.cast::<u8>().sub(core::mem::offset_of!(Pool, work)).cast::<Pool>() };
    // Spare cycles: the worker yields the CPU to any task of normal priority.
    sys::at_low_priority(|| pool.run());
    pool.stats.finished.fetch_add(1, Ordering::Release);
}

unsafe extern "C" fn pool_count(s: *mut bindings::shrinker, _sc: *mut bindings::shrink_control) -> c_ulong {
    // SAFETY: private_data is the pool, which outlives the shrinker (shrinker_free in stop()).
    let pool = unsafe { &*((*s).private_data as *const Pool) };
    match pool.free_pages() {
        // SHRINK_EMPTY: nothing to give back.
        0 => c_ulong::MAX - 1,
        // CAST: pages fit c_ulong.
        n => n as c_ulong,
    }
}

unsafe extern "C" fn pool_scan(s: *mut bindings::shrinker, sc: *mut bindings::shrink_control) -> c_ulong {
    // SAFETY: as in pool_count; sc is the reclaim's control block.
    let (pool, want) = unsafe { (&*((*s).private_data as *const Pool), (*sc).nr_to_scan) };
    // CAST: pages to bytes.
    let freed = pool.drain((want as u64) << PAGE_SHIFT, |_| true);
    pool.stats.shrunk_bytes.fetch_add(freed, Ordering::Relaxed);
    // SAFETY: as above; report what was freed (in pages).
    unsafe { (*sc).nr_scanned = want };
    // CAST: pages fit c_ulong.
    (freed >> PAGE_SHIFT) as c_ulong
}
