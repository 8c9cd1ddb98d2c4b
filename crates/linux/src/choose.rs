//! Choosing where a plan's buffer comes from on this kernel.
//!
//! Each memory source (a dma-heap, udmabuf over a shmem or hugetlb memfd, a bare memfd)
//! makes a [`Promise`]: contiguous or in chunks of some size, aligned to some size,
//! somewhere in a known range, up to some capacity, mapped cached. [`choose`] checks the
//! plan's hard requirements against each promise, in an order that depends on the plan
//! (contiguous or few segments: CMA first; otherwise the system heap, keeping CMA for
//! those who need it), and takes the first that holds. This is a pure function of the
//! [`Inventory`] and the plan: the tests feed it inventories of machines we do not have.
//!
//! A promise is what the kernel guarantees, not what it usually does: the system heap
//! usually hands out 1 MiB chunks, but under fragmentation it falls back to 4 KiB pages,
//! so it promises 4 KiB chunks.

use std::fmt;

use dmaplace_core::verify::sg_entries;
use dmaplace_core::{Backing, CacheMode, Cause, Field, PageSize, PhysAddr, PhysRange, Plan, Size, Window};

use crate::inventory::{HeapInfo, HeapKind, Inventory};

/// Where a buffer's memory comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `/dev/dma_heap/<name>`.
    Heap(String),
    /// udmabuf over a sealed shmem memfd (4 KiB pages).
    Udmabuf,
    /// udmabuf over a sealed hugetlb memfd (2 MiB pages).
    UdmabufHuge,
    /// A bare memfd: CPU memory, not a dma-buf.
    Memfd,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Heap(n) => write!(f, "dma-heap `{n}`"),
            Source::Udmabuf => f.write_str("udmabuf (shmem memfd)"),
            Source::UdmabufHuge => f.write_str("udmabuf (2 MiB hugetlb memfd)"),
            Source::Memfd => f.write_str("memfd (no dma-buf)"),
        }
    }
}

/// How a source's memory is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One physically contiguous run.
    Contiguous,
    /// Naturally aligned chunks of at least this size, anywhere.
    Chunks(PageSize),
}

/// What a source guarantees for a buffer of a given size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promise {
    /// The source.
    pub source: Source,
    /// Whether the result is a dma-buf that devices can import.
    pub dma_buf: bool,
    /// Contiguous or chunked.
    pub shape: Shape,
    /// Guaranteed alignment of the first byte.
    pub alignment: PageSize,
    /// Where the pages can be, or why that is unknown.
    pub range: Result<Window, String>,
    /// The most bytes it can hand out, with the reason.
    pub capacity: Option<(Size, String)>,
    /// Bytes actually allocated for the plan's size (hugetlb rounds up to 2 MiB).
    pub alloc_size: Size,
    /// The CPU mapping's cache mode.
    pub cache_mode: CacheMode,
    /// Whether the pages stay where they are while the buffer lives (pinned by the
    /// exporter). A bare memfd's pages can be migrated or swapped.
    pub pinned: bool,
}

/// Why a source cannot serve a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The source.
    pub source: Source,
    /// The plan requirement it fails, if it is one.
    pub field: Option<Field>,
    /// In words, with numbers.
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.reason)
    }
}

/// Nothing on this kernel can satisfy the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoFit {
    /// The requirement that the preferred source fails, in words.
    pub requirement: String,
    /// Its field, if it is a plan requirement.
    pub field: Option<Field>,
    /// The devices that impose it, and why.
    pub causes: Vec<Cause>,
    /// Every source on this kernel and why it fails.
    pub rejected: Vec<Rejection>,
    /// What would help.
    pub hint: Option<String>,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nothing on this kernel can provide {}", self.requirement)?;
        if !self.causes.is_empty() {
            let who: Vec<String> = self.causes.iter().map(|c| format!("`{}` ({})", c.device, c.why)).collect();
            write!(f, ", which {} need{}", who.join(" and "), if who.len() == 1 { "s" } else { "" })?;
        }
        writeln!(f)?;
        if self.rejected.is_empty() {
            writeln!(f, "  (no dma-heap, no udmabuf)")?;
        }
        for r in &self.rejected {
            writeln!(f, "  - {r}")?;
        }
        if let Some(h) = &self.hint {
            writeln!(f, "  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoFit {}

const SZ_2M: PageSize = PageSize::SZ_2M;

/// The most a CMA heap aligns a buffer: `CONFIG_CMA_ALIGNMENT` (default 8) orders of 4 KiB.
pub const CMA_MAX_ALIGNMENT: PageSize = PageSize::SZ_1M;

/// What `source` promises for a buffer of `size` bytes on the machine `inv` describes.
pub fn promise(inv: &Inventory, source: &Source, size: Size) -> Promise {
    let ram = || inv.ram.clone();
    let base = |shape, alignment, range, capacity, alloc_size| Promise {
        source: source.clone(),
        dma_buf: true,
        shape,
        alignment,
        range,
        capacity,
        alloc_size,
        cache_mode: CacheMode::Cached,
        pinned: true,
    };
    let udmabuf_cap = || inv.udmabuf.as_ref().map(|u| (u.size_limit, format!("udmabuf size_limit_mb ({})", u.source)));
    match source {
        Source::Heap(name) => match inv.heap(name).map(|h| &h.kind) {
            Some(HeapKind::Cma(area)) => {
                // cma_heap_allocate: align = min(get_order(size), CONFIG_CMA_ALIGNMENT).
                let align = PageSize::covering(size.bytes())
                    .unwrap_or(CMA_MAX_ALIGNMENT)
                    .clamp(PageSize::SZ_4K, CMA_MAX_ALIGNMENT);
                let range = area.range.map(|r| Window::from_ranges([r])).ok_or_else(|| area.source.clone());
                let cap = area.range.map(|r| (r.len(), format!("CMA area `{}` size", area.name)));
                base(Shape::Contiguous, align, range, cap, size)
            }
            // The system heap (and, were it used, anything else) takes buddy pages.
            _ => base(Shape::Chunks(PageSize::SZ_4K), PageSize::SZ_4K, ram(), None, size),
        },
        Source::Udmabuf => base(Shape::Chunks(PageSize::SZ_4K), PageSize::SZ_4K, ram(), udmabuf_cap(), size),
        Source::UdmabufHuge => {
            let alloc = size.align_up(SZ_2M).unwrap_or(size);
            let huge = inv.huge_2m.map(|h| {
                (
                    Size::new(h.free.saturating_mul(SZ_2M.get())),
                    format!("free 2 MiB huge pages ({} of {})", h.free, h.total),
                )
            });
            let cap = match (udmabuf_cap(), huge) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            base(Shape::Chunks(SZ_2M), SZ_2M, ram(), cap, alloc)
        }
        Source::Memfd => Promise {
            dma_buf: false,
            pinned: false,
            ..base(Shape::Chunks(PageSize::SZ_4K), PageSize::SZ_4K, ram(), None, size)
        },
    }
}

/// The most sg entries `promise`'s memory can need under the plan's segment limits.
pub fn worst_entries(promise: &Promise, plan: &Plan) -> u64 {
    let r = &plan.requirements;
    let cap = r.max_segment_size.value;
    let boundary = r.segment_boundary.value;
    let entries_of = |start: u64, len: u64| {
        let seg = PhysRange::from_start_size(PhysAddr::new(start), Size::new(len));
        seg.map_or(u64::MAX, |s| {
            sg_entries(&Backing { segments: vec![s], cache_mode: CacheMode::Cached, protected: false }, cap, boundary)
        })
    };
    let size = promise.alloc_size.bytes();
    match promise.shape {
        Shape::Contiguous => {
            // The worst aligned start sits just below a boundary.
            let a = promise.alignment.get();
            let start = match boundary.get().checked_add(1) {
                Some(b) if b > a => b - a,
                _ => a,
            };
            entries_of(start, size)
        }
        Shape::Chunks(c) => {
            // Chunks may all be apart: each is its own run.
            let chunks = size.div_ceil(c.get());
            chunks.saturating_mul(entries_of(c.get(), c.get().min(size)))
        }
    }
}

/// Checks the plan's hard requirements against a promise.
pub fn check(plan: &Plan, p: &Promise, allow_memfd: bool) -> Result<(), Rejection> {
    let r = &plan.requirements;
    let reject = |field: Option<Field>, reason: String| Err(Rejection { source: p.source.clone(), field, reason });
    if !p.dma_buf && !allow_memfd {
        return reject(None, "not a dma-buf: no device can import it, and its pages are neither pinned nor placed (allow the memfd fallback for CPU-only use)".into());
    }
    if r.protected.value {
        return reject(Some(Field::Protected), "gives ordinary memory; this kernel exposes no protected heap".into());
    }
    if !r.cache_modes.value.has(p.cache_mode) {
        return reject(Some(Field::CacheModes), format!("maps {} only, not in {}", p.cache_mode, r.cache_modes.value));
    }
    if let Some((cap, why)) = &p.capacity
        && p.alloc_size > *cap
    {
        return reject(None, format!("holds at most {cap} ({why}), under the {} needed", p.alloc_size));
    }
    if let Some(n) = r.max_segments.value {
        let worst = worst_entries(p, plan);
        if worst > u64::from(n.get()) {
            let what = match p.shape {
                Shape::Contiguous => "one contiguous run".to_owned(),
                Shape::Chunks(c) => format!("{c} chunks"),
            };
            return reject(
                Some(Field::MaxSegments),
                format!("gives {what}: up to {worst} segments for {}, over max_segments = {n}", p.alloc_size),
            );
        }
    }
    if r.alignment.value > p.alignment {
        return reject(
            Some(Field::Alignment),
            format!("aligns to {} at best, under the {} required", p.alignment, r.alignment.value),
        );
    }
    let unit = match p.shape {
        Shape::Contiguous => p.alignment,
        Shape::Chunks(c) => c,
    };
    if r.granule.value > unit {
        return reject(
            Some(Field::Granule),
            format!("places {unit} pieces, under the {} granule required", r.granule.value),
        );
    }
    let window = &r.window.value;
    let pool = r.pool.value.as_ref();
    match &p.range {
        Ok(range) => {
            if !range.is_subset_of(window) {
                return reject(
                    Some(Field::Window),
                    format!("places pages anywhere in {range}, not only within {window}"),
                );
            }
            if let Some(pool) = pool
                && !range.is_subset_of(pool)
            {
                return reject(Some(Field::Pool), format!("places pages in {range}, outside the required pool {pool}"));
            }
        }
        Err(why) => {
            let everything = Window::everything();
            if !everything.is_subset_of(window) {
                return reject(
                    Some(Field::Window),
                    format!("cannot show its pages lie within {window}: its range is unknown ({why})"),
                );
            }
            if pool.is_some() {
                return reject(
                    Some(Field::Pool),
                    format!("cannot show its pages lie in the required pool: its range is unknown ({why})"),
                );
            }
        }
    }
    Ok(())
}

/// A kind of source, as [`preference`] orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cma,
    Huge,
    System,
    Udmabuf,
}

/// The kinds of source in the order `plan` prefers them: contiguous or few segments, CMA
/// first (2 MiB huge pages first when they give few enough segments: CMA is scarce);
/// otherwise the system heap, keeping CMA for those who need it.
fn preference(inv: &Inventory, plan: &Plan) -> [Kind; 4] {
    let max_segments = plan.requirements.max_segments.value;
    let huge_fits = || {
        let p = promise(inv, &Source::UdmabufHuge, plan.size);
        max_segments.is_none_or(|n| worst_entries(&p, plan) <= u64::from(n.get()))
    };
    match max_segments {
        Some(n) if n.get() == 1 => [Kind::Cma, Kind::Huge, Kind::System, Kind::Udmabuf],
        Some(_) if huge_fits() => [Kind::Huge, Kind::Cma, Kind::System, Kind::Udmabuf],
        Some(_) => [Kind::Cma, Kind::Huge, Kind::System, Kind::Udmabuf],
        None => [Kind::System, Kind::Udmabuf, Kind::Cma, Kind::Huge],
    }
}

/// The sources of one kind on this kernel.
fn sources_of(inv: &Inventory, kind: Kind) -> impl Iterator<Item = Source> + '_ {
    let heap = move |h: &&HeapInfo| match kind {
        Kind::Cma => matches!(h.kind, HeapKind::Cma(_)),
        Kind::System => h.kind == HeapKind::System,
        Kind::Huge | Kind::Udmabuf => false,
    };
    let udmabuf = inv.udmabuf.is_some();
    let extra = match kind {
        Kind::Udmabuf if udmabuf => Some(Source::Udmabuf),
        Kind::Huge if udmabuf && inv.huge_2m.is_some() => Some(Source::UdmabufHuge),
        _ => None,
    };
    inv.heaps.iter().filter(heap).map(|h| Source::Heap(h.name.clone())).chain(extra)
}

/// The sources to try for `plan`, most preferred first, then the unknown heaps (which are
/// only ever rejected) and the memfd. Lazy: a source is built only when it is tried.
fn ordered<'a>(inv: &'a Inventory, plan: &Plan) -> impl Iterator<Item = Source> + 'a {
    let unknown = inv.heaps.iter().filter(|h| h.kind == HeapKind::Unknown).map(|h| Source::Heap(h.name.clone()));
    preference(inv, plan)
        .into_iter()
        .flat_map(move |kind| sources_of(inv, kind))
        .chain(unknown)
        .chain(std::iter::once(Source::Memfd))
}

/// The sources to try for `plan`, most preferred first, plus the unknown heaps (which
/// are only ever rejected).
pub fn candidates(inv: &Inventory, plan: &Plan) -> Vec<Source> {
    ordered(inv, plan).collect()
}

/// Picks the first source whose promise meets the plan, or explains why none does.
/// Sources after the first that holds are never looked at.
pub fn choose(inv: &Inventory, plan: &Plan, allow_memfd: bool) -> Result<Promise, NoFit> {
    let mut rejected = Vec::new();
    for source in ordered(inv, plan) {
        if let Source::Heap(name) = &source
            && inv.heap(name).is_some_and(|h| h.kind == HeapKind::Unknown)
        {
            rejected.push(Rejection {
                source,
                field: None,
                reason: "a heap dmaplace does not know: what it promises is unknown, so it is never used".into(),
            });
            continue;
        }
        let p = promise(inv, &source, plan.size);
        match check(plan, &p, allow_memfd) {
            Ok(()) => return Ok(p),
            Err(r) => rejected.push(r),
        }
    }
    Err(no_fit(inv, plan, rejected))
}

/// Checks one named source against the plan (to allocate from a chosen heap).
pub fn check_source(inv: &Inventory, plan: &Plan, source: &Source, allow_memfd: bool) -> Result<Promise, NoFit> {
    let exists = match source {
        Source::Heap(n) => inv.heap(n).is_some_and(|h| h.kind != HeapKind::Unknown),
        Source::Udmabuf => inv.udmabuf.is_some(),
        Source::UdmabufHuge => inv.udmabuf.is_some() && inv.huge_2m.is_some(),
        Source::Memfd => true,
    };
    let p = promise(inv, source, plan.size);
    let result = if exists {
        check(plan, &p, allow_memfd)
    } else {
        Err(Rejection { source: source.clone(), field: None, reason: "not on this kernel".into() })
    };
    result.map(|()| p).map_err(|r| no_fit(inv, plan, vec![r]))
}

fn no_fit(inv: &Inventory, plan: &Plan, rejected: Vec<Rejection>) -> NoFit {
    let r = &plan.requirements;
    // Headline: the requirement the most preferred source fails on.
    let field = rejected.iter().find_map(|x| x.field);
    let requirement = match field {
        Some(Field::MaxSegments) => match r.max_segments.value {
            Some(n) if n.get() == 1 => format!("{} of physically contiguous memory (max_segments = 1)", plan.size),
            Some(n) => format!("{} in at most {n} physical segments", plan.size),
            None => "the segment limits".into(),
        },
        Some(Field::Window) => format!("memory within {}", r.window.value),
        Some(Field::Pool) => format!(
            "memory from the pool {}",
            r.pool.value.as_ref().map_or_else(|| "(none)".into(), ToString::to_string)
        ),
        Some(Field::Alignment) => format!("{} alignment", r.alignment.value),
        Some(Field::Granule) => format!("{} pages", r.granule.value),
        Some(Field::CacheModes) => format!("a CPU mapping that is {}", r.cache_modes.value),
        Some(Field::Protected) => "protected memory".into(),
        _ => format!("a dma-buf of {}", plan.size),
    };
    let causes = match field {
        Some(f @ Field::MaxSegments) => plan.causes(r.max_segments.causes, f),
        Some(f @ Field::Window) => plan.causes(r.window.causes, f),
        Some(f @ Field::Pool) => plan.causes(r.pool.causes, f),
        Some(f @ Field::Alignment) => plan.causes(r.alignment.causes, f),
        Some(f @ Field::Granule) => plan.causes(r.granule.causes, f),
        Some(f @ Field::CacheModes) => plan.causes(r.cache_modes.causes, f),
        Some(f @ Field::Protected) => plan.causes(r.protected.causes, f),
        _ => Vec::new(),
    };
    let hint = if !inv.has_dma_buf() {
        Some("this kernel exposes no dma-buf exporter (no /dev/dma_heap, no /dev/udmabuf); run the qemu rig (vm/test-linux.sh) to try real kernels".into())
    } else if field == Some(Field::MaxSegments) && !inv.heaps.iter().any(|h| matches!(h.kind, HeapKind::Cma(_))) {
        Some("this kernel has no CMA heap (CONFIG_DMABUF_HEAPS_CMA and a cma= area); 2 MiB huge pages help only buffers whose segments fit in 2 MiB".into())
    } else {
        None
    };
    NoFit { requirement, field, causes, rejected, hint }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{CmaArea, HeapInfo, HugePages, UdmabufInfo};
    use dmaplace_core::{BufferDesc, Request, Usage, solve};

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::from_start_size(PhysAddr::new(start), Size::new(len)).unwrap()
    }

    /// The custom 6.12 guest: 1 GiB, system + CMA heap `reserved` (64 MiB at 0x3b800000),
    /// udmabuf, 8 free huge pages.
    fn custom_guest() -> Inventory {
        let area = CmaArea {
            name: "reserved".into(),
            range: Some(range(0x3b80_0000, 64 << 20)),
            source: "fixture".into(),
            debugfs: None,
        };
        Inventory {
            release: "6.12.0".into(),
            root: true,
            heaps: vec![
                HeapInfo {
                    name: "reserved".into(),
                    path: "/dev/dma_heap/reserved".into(),
                    kind: HeapKind::Cma(area.clone()),
                },
                HeapInfo { name: "system".into(), path: "/dev/dma_heap/system".into(), kind: HeapKind::System },
            ],
            udmabuf: Some(UdmabufInfo { size_limit: Size::mib(64), list_limit: 1024, source: "fixture".into() }),
            huge_2m: Some(HugePages { total: 8, free: 8 }),
            ram: Ok(Window::from_ranges([range(0x1000, 0x9e000), range(0x10_0000, 0x3fee_0000)])),
            cma_areas: vec![area],
            drm: vec![],
            kcore: true,
        }
    }

    /// Debian's 6.12: system heap and udmabuf, no CMA, no huge pages reserved.
    fn debian_guest() -> Inventory {
        let mut inv = custom_guest();
        inv.heaps.retain(|h| h.name == "system");
        inv.cma_areas.clear();
        inv.huge_2m = Some(HugePages { total: 0, free: 0 });
        inv
    }

    fn plan(platform: &str, devices: &[(&str, Usage)], size: Size) -> Plan {
        let p = dmaplace_core::builtin::load(platform).unwrap().unwrap();
        let reqs: Vec<Request<'_>> =
            devices.iter().map(|(d, h)| Request { device: p.device(d).unwrap(), hints: *h }).collect();
        solve(&p, &BufferDesc::Size(size), &reqs).unwrap()
    }

    #[test]
    fn contiguous_goes_to_cma() {
        let p = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(4));
        let got = choose(&custom_guest(), &p, false).unwrap();
        assert_eq!(got.source, Source::Heap("reserved".into()));
        assert_eq!(got.alignment, PageSize::SZ_1M);
    }

    #[test]
    fn contiguous_without_cma_is_explained() {
        let p = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(4));
        let e = choose(&debian_guest(), &p, false).unwrap_err();
        assert_eq!(e.field, Some(Field::MaxSegments));
        let text = e.to_string();
        assert!(text.starts_with("nothing on this kernel can provide 4 MiB of physically contiguous memory (max_segments = 1), which `unicam` (max_segments = 1) needs"), "{text}");
        assert!(
            text.contains(
                "dma-heap `system`: gives 4 KiB chunks: up to 1024 segments for 4 MiB, over max_segments = 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("udmabuf (2 MiB hugetlb memfd): holds at most 0 B (free 2 MiB huge pages (0 of 0))"),
            "{text}"
        );
        assert!(text.contains("memfd (no dma-buf): not a dma-buf"), "{text}");
        assert!(text.contains("no CMA heap"), "{text}");
    }

    /// The order sources are tried in, for each kind of plan; unknown heaps and the memfd
    /// come last.
    #[test]
    fn candidates_follow_the_plan() {
        let mut inv = custom_guest();
        inv.heaps.push(HeapInfo {
            name: "secure".into(),
            path: "/dev/dma_heap/secure".into(),
            kind: HeapKind::Unknown,
        });
        let heap = |n: &str| Source::Heap(n.into());
        let (cma, system, secure) = (heap("reserved"), heap("system"), heap("secure"));
        let (udmabuf, huge, memfd) = (Source::Udmabuf, Source::UdmabufHuge, Source::Memfd);
        let contiguous = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(8));
        let want = [&cma, &huge, &system, &udmabuf, &secure, &memfd].map(Clone::clone);
        assert_eq!(candidates(&inv, &contiguous), want);
        let any = plan("x86-desktop", &[("dgpu", Usage::RENDERING)], Size::mib(8));
        assert_eq!(candidates(&inv, &any), [&system, &udmabuf, &cma, &huge, &secure, &memfd].map(Clone::clone));
        // A few segments: huge pages first when 2 MiB pieces are few enough (8 MiB in 4),
        // CMA first when they are not (8 MiB in 2).
        let few = |n: u32| {
            let toml = format!(
                "[platform]\nname = \"few\"\ndescription = \"a device with {n} segments\"\n[memory]\n\
                 [[memory.bank]]\nname = \"dram\"\nstart = 0x0\nsize = \"1GiB\"\n\
                 [[device]]\nname = \"dev\"\nclass = \"other\"\n[device.placement]\nmax_segments = {n}\n"
            );
            let p = dmaplace_core::Platform::from_toml("few.toml", &toml).unwrap();
            let req = [Request { device: p.device("dev").unwrap(), hints: Usage::empty() }];
            solve(&p, &BufferDesc::Size(Size::mib(8)), &req).unwrap()
        };
        assert_eq!(candidates(&inv, &few(4)), [&huge, &cma, &system, &udmabuf, &secure, &memfd].map(Clone::clone));
        assert_eq!(candidates(&inv, &few(2)), want);
        // Kinds this kernel lacks are left out.
        assert_eq!(candidates(&debian_guest(), &contiguous), [huge.clone(), system.clone(), udmabuf.clone(), memfd]);
    }

    #[test]
    fn a_contiguous_2m_buffer_fits_one_huge_page() {
        let mut inv = debian_guest();
        inv.huge_2m = Some(HugePages { total: 4, free: 4 });
        let p = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(2));
        assert_eq!(choose(&inv, &p, false).unwrap().source, Source::UdmabufHuge);
        let p = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(3));
        assert_eq!(choose(&inv, &p, false).unwrap_err().field, Some(Field::MaxSegments));
    }

    #[test]
    fn plain_and_iommu_plans_take_the_system_heap() {
        let p = plan("x86-desktop", &[("igpu", Usage::RENDERING), ("dgpu", Usage::TEXTURING)], Size::mib(8));
        assert_eq!(choose(&custom_guest(), &p, false).unwrap().source, Source::Heap("system".into()));
        assert_eq!(choose(&debian_guest(), &p, false).unwrap().source, Source::Heap("system".into()));
    }

    #[test]
    fn address_limits_need_a_range_that_fits() {
        // The capture card reaches the bottom 4 GiB.
        let p = plan("x86-desktop", &[("capture", Usage::CAMERA_WRITE)], Size::mib(4));
        assert_eq!(choose(&custom_guest(), &p, false).unwrap().source, Source::Heap("system".into()));
        // With RAM above 4 GiB, only the CMA heap (below 1 GiB) can promise it.
        let mut big = custom_guest();
        big.ram = Ok(Window::from_ranges([range(0x10_0000, 0xbff0_0000), range(0x1_0000_0000, 0x1_0000_0000)]));
        let got = choose(&big, &p, false).unwrap();
        assert_eq!(got.source, Source::Heap("reserved".into()));
        // Without CMA, nothing can; the error names the capture card's mask.
        let mut big_debian = debian_guest();
        big_debian.ram = big.ram.clone();
        let e = choose(&big_debian, &p, false).unwrap_err();
        assert_eq!(e.field, Some(Field::Window));
        assert_eq!(e.causes.len(), 1);
        assert_eq!(e.causes[0].device, "capture");
        assert!(e.to_string().contains("not only within"), "{e}");
    }

    #[test]
    fn unknown_ram_cannot_promise_an_address_limit() {
        let mut inv = custom_guest();
        inv.ram = Err("not root".into());
        inv.heaps.retain(|h| h.name == "system");
        let p = plan("x86-desktop", &[("capture", Usage::CAMERA_WRITE)], Size::mib(4));
        let e = choose(&inv, &p, false).unwrap_err();
        assert!(e.to_string().contains("its range is unknown (not root)"), "{e}");
    }

    #[test]
    fn write_combined_only_devices_are_refused_with_the_reason() {
        let p = plan("rpi4", &[("hvs", Usage::SCANOUT)], Size::mib(1));
        let e = choose(&custom_guest(), &p, false).unwrap_err();
        assert_eq!(e.field, Some(Field::CacheModes));
        assert_eq!(e.causes[0].device, "hvs");
        assert!(e.to_string().contains("maps cached only"), "{e}");
    }

    #[test]
    fn cma_capacity_and_udmabuf_limits() {
        let p = plan("rpi4", &[("unicam", Usage::CAMERA_WRITE)], Size::mib(128));
        let e = choose(&custom_guest(), &p, false).unwrap_err();
        assert!(
            e.to_string().contains(
                "dma-heap `reserved`: holds at most 64 MiB (CMA area `reserved` size), under the 128 MiB needed"
            ),
            "{e}"
        );
        let p = plan("x86-desktop", &[("dgpu", Usage::RENDERING)], Size::mib(96));
        let promise = promise(&custom_guest(), &Source::Udmabuf, p.size);
        assert!(check(&p, &promise, false).unwrap_err().reason.contains("udmabuf size_limit_mb"));
    }

    #[test]
    fn unknown_heaps_are_reported_never_used() {
        let mut inv = debian_guest();
        inv.heaps.push(HeapInfo {
            name: "secure".into(),
            path: "/dev/dma_heap/secure".into(),
            kind: HeapKind::Unknown,
        });
        inv.heaps.retain(|h| h.name != "system");
        inv.udmabuf = None;
        let p = plan("x86-desktop", &[("dgpu", Usage::RENDERING)], Size::mib(1));
        let e = choose(&inv, &p, false).unwrap_err();
        assert!(e.to_string().contains("dma-heap `secure`: a heap dmaplace does not know"), "{e}");
        // The memfd fallback is there when asked for, and says what it is.
        let got = choose(&inv, &p, true).unwrap();
        assert_eq!(got.source, Source::Memfd);
        assert!(!got.dma_buf && !got.pinned);
    }

    #[test]
    fn a_bare_host_says_so() {
        let mut inv = debian_guest();
        inv.heaps.clear();
        inv.udmabuf = None;
        let p = plan("x86-desktop", &[("dgpu", Usage::RENDERING)], Size::mib(1));
        let e = choose(&inv, &p, false).unwrap_err();
        assert!(e.to_string().contains("vm/test-linux.sh"), "{e}");
    }

    #[test]
    fn worst_case_segments_follow_boundaries() {
        let inv = custom_guest();
        let mut p = plan("x86-desktop", &[("dgpu", Usage::RENDERING)], Size::mib(4));
        p.requirements.segment_boundary.value = dmaplace_core::BoundaryMask::new((1 << 20) - 1).unwrap();
        // 4 MiB contiguous at 1 MiB alignment crosses 1 MiB boundaries: 4 pieces.
        assert_eq!(worst_entries(&promise(&inv, &Source::Heap("reserved".into()), p.size), &p), 4);
        // 2 MiB huge pages, each cut at 1 MiB: 4 pieces.
        assert_eq!(worst_entries(&promise(&inv, &Source::UdmabufHuge, p.size), &p), 4);
        assert_eq!(worst_entries(&promise(&inv, &Source::Heap("system".into()), p.size), &p), 1024);
    }
}
