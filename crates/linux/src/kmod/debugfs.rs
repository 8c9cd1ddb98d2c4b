//! `/sys/kernel/debug/dmaplace/buffers`, parsed.

use super::DEBUGFS;

/// One attachment as debugfs lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachInfo {
    /// Index in the buffer's attachment list (bit `idx` of a cause set).
    pub idx: usize,
    /// The importing device's name.
    pub dev: String,
    /// A dynamic importer.
    pub dynamic: bool,
    /// Pins held (nested).
    pub pins: u32,
    /// Live mappings.
    pub maps: u32,
    /// Whether the current backing serves it (`None`: no backing).
    pub served: Option<bool>,
    /// `dma_get_mask`.
    pub dma_mask: u64,
    /// `bus_dma_limit`.
    pub bus_dma_limit: u64,
    /// `dma_get_max_seg_size`.
    pub max_segment_size: u64,
    /// `dma_get_seg_boundary`.
    pub segment_boundary_mask: u64,
    /// Behind an IOMMU (DMA domain).
    pub iommu: bool,
    /// The domain's `pgsize_bitmap`.
    pub pgsize_bitmap: u64,
    /// The domain's aperture end.
    pub aperture_end: u64,
    /// DECLAREd max segments (0: none).
    pub declared_max_segments: u32,
    /// DECLAREd alignment (0: default).
    pub declared_alignment: u64,
}

/// The merged plan as the module reports it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PlanInfo {
    /// Attachments merged.
    pub devices: usize,
    /// Bytes.
    pub size: u64,
    /// `none`, `no_devices` or `segment_limit`.
    pub conflict: String,
    /// One segment.
    pub contiguous: bool,
    /// The window's end and causes.
    pub window_end: (u64, Vec<usize>),
    /// Max segments and causes.
    pub max_segments: (Option<u64>, Vec<usize>),
    /// Max segment size and causes.
    pub max_segment_size: (Option<u64>, Vec<usize>),
    /// Segment boundary mask and causes.
    pub segment_boundary: (u64, Vec<usize>),
    /// Alignment and causes.
    pub alignment: (u64, Vec<usize>),
    /// Granule and causes.
    pub granule: (u64, Vec<usize>),
    /// Minimum chunk for the segment limit.
    pub min_chunk: Option<u64>,
    /// `contiguous` or `orders:9,0`.
    pub strategy: String,
    /// Preferred chunk sizes with the devices whose IOMMU maps each in one entry.
    pub chunk_prefs: Vec<(u64, Vec<usize>)>,
}

/// One chunk of the backing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Physical address.
    pub phys: u64,
    /// Bytes of the buffer it holds.
    pub len: u64,
    /// Allocation order.
    pub order: u32,
    /// `buddy` or `cma`.
    pub source: String,
}

/// One buffer as debugfs lists it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BufferInfo {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Whether pages exist.
    pub has_backing: bool,
    /// (Re)allocations.
    pub generation: u32,
    /// Migrations for late attachers.
    pub migrations: u32,
    /// Migrations made while a dynamic importer had the old pages mapped.
    pub moves_while_mapped: u32,
    /// EBUSY refusals.
    pub refused: u32,
    /// Live mappings.
    pub maps: u32,
    /// Pins over all attachments.
    pub pins: u32,
    /// Old backings kept until their importers unmap them.
    pub retired: u32,
    /// Their bytes.
    pub retired_bytes: u64,
    /// Live vmaps.
    pub vmaps: u32,
    /// mmap calls.
    pub mmaps: u32,
    /// Attachments in order.
    pub attachments: Vec<AttachInfo>,
    /// The merged plan.
    pub plan: PlanInfo,
    /// The human-readable reasons (`# ...` lines).
    pub why: Vec<String>,
    /// The backing's chunks in buffer order.
    pub segments: Vec<SegmentInfo>,
}

/// The whole debugfs file.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The first byte above RAM, as the module sees it.
    pub ram_end: u64,
    /// Bytes of backing allocated now over all buffers.
    pub live_bytes: u64,
    /// Chunks allocated since load.
    pub chunks_allocated: u64,
    /// Chunks freed since load.
    pub chunks_freed: u64,
    /// `(device, max_segments, alignment)` declarations.
    pub declarations: Vec<(String, u32, u64)>,
    /// Buffers.
    pub buffers: Vec<BufferInfo>,
}

impl Snapshot {
    /// Reads and parses the debugfs file.
    pub fn read() -> Result<Snapshot, String> {
        let text = std::fs::read_to_string(DEBUGFS).map_err(|e| format!("cannot read {DEBUGFS}: {e}"))?;
        parse(&text)
    }

    /// The buffer with id `id`.
    pub fn buffer(&self, id: u64) -> Option<&BufferInfo> {
        self.buffers.iter().find(|b| b.id == id)
    }
}

fn num(v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| format!("bad number {v:?}: {e}"))
}

fn opt_num(v: &str) -> Result<Option<u64>, String> {
    if v == "none" { Ok(None) } else { num(v).map(Some) }
}

fn list(v: &str) -> Result<Vec<usize>, String> {
    if v == "-" {
        return Ok(Vec::new());
    }
    v.split(',').map(|x| x.parse::<usize>().map_err(|e| format!("bad index {x:?}: {e}"))).collect()
}

struct Kv<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Kv<'a> {
    fn get(&self, k: &str) -> Result<&'a str, String> {
        self.0.iter().find(|(key, _)| *key == k).map(|(_, v)| *v).ok_or_else(|| format!("missing {k}"))
    }
    fn n(&self, k: &str) -> Result<u64, String> {
        num(self.get(k)?)
    }
    fn n32(&self, k: &str) -> Result<u32, String> {
        u32::try_from(self.n(k)?).map_err(|e| format!("{k}: {e}"))
    }
    fn b(&self, k: &str) -> Result<bool, String> {
        Ok(self.n(k)? != 0)
    }
}

/// Parses the text of the debugfs file.
pub fn parse(text: &str) -> Result<Snapshot, String> {
    let mut s = Snapshot::default();
    for (lineno, line) in text.lines().enumerate() {
        let ctx = |e: String| format!("{DEBUGFS} line {}: {e}: {line}", lineno + 1);
        if let Some(rest) = line.strip_prefix("# buf ") {
            let id = rest.split(':').next().unwrap_or("").trim();
            let id = num(id).map_err(ctx)?;
            if let Some(b) = s.buffers.iter_mut().find(|b| b.id == id) {
                b.why.push(line.to_owned());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(kind) = words.next() else { continue };
        let kv = Kv(words.filter_map(|w| w.split_once('=')).collect());
        let r: Result<(), String> = (|| {
            match kind {
                "dmaplace" => {
                    s.ram_end = kv.n("ram_end")?;
                    s.live_bytes = kv.n("live_bytes")?;
                    s.chunks_allocated = kv.n("chunks_allocated")?;
                    s.chunks_freed = kv.n("chunks_freed")?;
                }
                "declare" => {
                    s.declarations.push((kv.get("dev")?.to_owned(), kv.n32("max_segments")?, kv.n("alignment")?))
                }
                "buffer" => s.buffers.push(BufferInfo {
                    id: kv.n("id")?,
                    name: kv.get("name")?.to_owned(),
                    size: kv.n("size")?,
                    has_backing: kv.b("backing")?,
                    generation: kv.n32("generation")?,
                    migrations: kv.n32("migrations")?,
                    moves_while_mapped: kv.n32("moves_while_mapped")?,
                    refused: kv.n32("refused")?,
                    maps: kv.n32("maps")?,
                    pins: kv.n32("pins")?,
                    retired: kv.n32("retired")?,
                    retired_bytes: kv.n("retired_bytes")?,
                    vmaps: kv.n32("vmaps")?,
                    mmaps: kv.n32("mmaps")?,
                    ..BufferInfo::default()
                }),
                "attach" | "plan" | "chunkpref" | "segment" => {
                    let id = kv.n("buf")?;
                    let b = s.buffers.iter_mut().find(|b| b.id == id).ok_or("a line for an unknown buffer")?;
                    match kind {
                        "attach" => b.attachments.push(AttachInfo {
                            idx: usize::try_from(kv.n("idx")?).map_err(|e| e.to_string())?,
                            dev: kv.get("dev")?.to_owned(),
                            dynamic: kv.b("dynamic")?,
                            pins: kv.n32("pins")?,
                            maps: kv.n32("maps")?,
                            served: match kv.get("served")? {
                                "-" => None,
                                v => Some(num(v)? != 0),
                            },
                            dma_mask: kv.n("dma_mask")?,
                            bus_dma_limit: kv.n("bus_dma_limit")?,
                            max_segment_size: kv.n("max_segment_size")?,
                            segment_boundary_mask: kv.n("segment_boundary_mask")?,
                            iommu: kv.b("iommu")?,
                            pgsize_bitmap: kv.n("pgsize_bitmap")?,
                            aperture_end: kv.n("aperture_end")?,
                            declared_max_segments: kv.n32("declared_max_segments")?,
                            declared_alignment: kv.n("declared_alignment")?,
                        }),
                        "plan" => {
                            b.plan = PlanInfo {
                                devices: usize::try_from(kv.n("devices")?).map_err(|e| e.to_string())?,
                                size: kv.n("size")?,
                                conflict: kv.get("conflict")?.to_owned(),
                                contiguous: kv.b("contiguous")?,
                                window_end: (kv.n("window_end")?, list(kv.get("window_causes")?)?),
                                max_segments: (
                                    opt_num(kv.get("max_segments")?)?,
                                    list(kv.get("max_segments_causes")?)?,
                                ),
                                max_segment_size: (
                                    opt_num(kv.get("max_segment_size")?)?,
                                    list(kv.get("max_segment_size_causes")?)?,
                                ),
                                segment_boundary: (
                                    kv.n("segment_boundary")?,
                                    list(kv.get("segment_boundary_causes")?)?,
                                ),
                                alignment: (kv.n("alignment")?, list(kv.get("alignment_causes")?)?),
                                granule: (kv.n("granule")?, list(kv.get("granule_causes")?)?),
                                min_chunk: opt_num(kv.get("min_chunk")?)?,
                                strategy: kv.get("strategy")?.to_owned(),
                                chunk_prefs: Vec::new(),
                            }
                        }
                        "chunkpref" => b.plan.chunk_prefs.push((kv.n("size")?, list(kv.get("devices")?)?)),
                        _ => b.segments.push(SegmentInfo {
                            phys: kv.n("phys")?,
                            len: kv.n("len")?,
                            order: kv.n32("order")?,
                            source: kv.get("source")?.to_owned(),
                        }),
                    }
                }
                _ => return Err(format!("unknown record {kind:?}")),
            }
            Ok(())
        })();
        r.map_err(ctx)?;
    }
    Ok(s)
}

/// The pool's debugfs file (`/sys/kernel/debug/dmaplace/pool`).
pub const POOL_DEBUGFS: &str = "/sys/kernel/debug/dmaplace/pool";

/// One free list of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolList {
    /// Block order.
    pub order: u32,
    /// `dma32` or `high`.
    pub class: String,
    /// `wb` or `wc`.
    pub mode: String,
    /// Zeroed blocks held.
    pub blocks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Watermarks, in blocks.
    pub low: u64,
    /// See [`PoolList::low`].
    pub high: u64,
    /// Takes served and missed.
    pub hits: u64,
    /// See [`PoolList::hits`].
    pub misses: u64,
    /// When its oldest block became free (ktime ns; 0 when empty).
    pub oldest: u64,
}

/// The pool's counters and lists.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PoolInfo {
    /// `pool_max_mib` in bytes.
    pub max_bytes: u64,
    /// Bytes held, free and dirty.
    pub bytes: u64,
    /// Dirty blocks waiting to be zeroed.
    pub dirty: u64,
    /// Bytes the worker zeroed, and the nanoseconds it took.
    pub zeroed_bytes: u64,
    /// See [`PoolInfo::zeroed_bytes`].
    pub zeroing_ns: u64,
    /// Bytes allocated to refill lists.
    pub refilled_bytes: u64,
    /// Bytes the shrinker gave back.
    pub shrunk_bytes: u64,
    /// Bytes freed because the pool was full.
    pub trimmed_bytes: u64,
    /// Chunks converted to write-combined and back.
    pub to_wc: u64,
    /// See [`PoolInfo::to_wc`].
    pub to_wb: u64,
    /// Worker runs started.
    pub runs: u64,
    /// Times the worker was queued.
    pub queued: u64,
    /// Worker runs finished.
    pub finished: u64,
    /// The free lists.
    pub lists: Vec<PoolList>,
}

impl PoolInfo {
    /// Reads and parses the pool's debugfs file.
    pub fn read() -> Result<PoolInfo, String> {
        let text = std::fs::read_to_string(POOL_DEBUGFS).map_err(|e| format!("cannot read {POOL_DEBUGFS}: {e}"))?;
        Self::parse(&text)
    }

    /// Parses the text of the pool's debugfs file.
    pub fn parse(text: &str) -> Result<PoolInfo, String> {
        let mut p = PoolInfo::default();
        for (lineno, line) in text.lines().enumerate() {
            let ctx = |e: String| format!("{POOL_DEBUGFS} line {}: {e}: {line}", lineno + 1);
            let mut words = line.split_whitespace();
            let Some(kind) = words.next() else { continue };
            let kv = Kv(words.filter_map(|w| w.split_once('=')).collect());
            let r: Result<(), String> = (|| {
                match kind {
                    "pool" => {
                        p.max_bytes = kv.n("max_bytes")?;
                        p.bytes = kv.n("bytes")?;
                        p.dirty = kv.n("dirty")?;
                        p.zeroed_bytes = kv.n("zeroed_bytes")?;
                        p.zeroing_ns = kv.n("zeroing_ns")?;
                        p.refilled_bytes = kv.n("refilled_bytes")?;
                        p.shrunk_bytes = kv.n("shrunk_bytes")?;
                        p.trimmed_bytes = kv.n("trimmed_bytes")?;
                        p.to_wc = kv.n("to_wc")?;
                        p.to_wb = kv.n("to_wb")?;
                        p.runs = kv.n("runs")?;
                        p.queued = kv.n("queued")?;
                        p.finished = kv.n("finished")?;
                    }
                    "list" => p.lists.push(PoolList {
                        order: kv.n32("order")?,
                        class: kv.get("class")?.to_owned(),
                        mode: kv.get("mode")?.to_owned(),
                        blocks: kv.n("blocks")?,
                        bytes: kv.n("bytes")?,
                        low: kv.n("low")?,
                        high: kv.n("high")?,
                        hits: kv.n("hits")?,
                        misses: kv.n("misses")?,
                        oldest: kv.n("oldest")?,
                    }),
                    _ => return Err(format!("unknown record {kind:?}")),
                }
                Ok(())
            })();
            r.map_err(ctx)?;
        }
        Ok(p)
    }

    /// Whether the worker had nothing pending or running when the file was read
    /// (the module reads `finished` before `queued`).
    pub fn worker_idle(&self) -> bool {
        self.finished == self.queued
    }

    /// Free bytes over all lists.
    pub fn free_bytes(&self) -> u64 {
        self.lists.iter().map(|l| l.bytes).sum()
    }

    /// Hits over all lists.
    pub fn hits(&self) -> u64 {
        self.lists.iter().map(|l| l.hits).sum()
    }

    /// Zeroing throughput of the worker, in MiB/s.
    pub fn zeroing_mib_per_s(&self) -> f64 {
        if self.zeroing_ns == 0 { 0.0 } else { self.zeroed_bytes as f64 / 1048576.0 / (self.zeroing_ns as f64 / 1e9) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_LINE: &str = "pool max_bytes=0x20000000 bytes=0x1c00000 dirty=2 zeroed_bytes=0x800000 zeroing_ns=4000000 \
         zero_mib_per_s=2000 refilled_bytes=0x1000000 shrunk_bytes=0x0 trimmed_bytes=0x400000 to_wc=1 to_wb=0 \
         runs=7 queued=8 finished=6";

    #[test]
    fn the_pool_file_parses_with_the_workers_counters() {
        let text = format!(
            "{POOL_LINE}\nlist order=10 class=dma32 mode=wb blocks=3 bytes=0xc00000 low=8 high=32 hits=5 misses=1 oldest=99\n"
        );
        let p = PoolInfo::parse(&text).expect("parses");
        assert_eq!((p.max_bytes, p.bytes, p.dirty, p.runs, p.queued, p.finished), (512 << 20, 28 << 20, 2, 7, 8, 6));
        assert!(!p.worker_idle(), "8 queued, 6 finished: a run is pending");
        assert_eq!((p.free_bytes(), p.hits()), (12 << 20, 5));
        assert_eq!(p.zeroing_mib_per_s(), 2000.0);
        let idle = PoolInfo::parse(&POOL_LINE.replace("queued=8", "queued=6")).expect("parses");
        assert!(idle.worker_idle());
    }

    #[test]
    fn a_pool_file_without_the_counters_names_the_missing_key() {
        let old = POOL_LINE.replace(" queued=8 finished=6", "");
        let e = PoolInfo::parse(&old).expect_err("an older module's line");
        assert!(e.contains("line 1: missing queued"), "{e}");
    }
}
