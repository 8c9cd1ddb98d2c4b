//! Where a buffer really is in physical memory, observed from userspace (as root).
//!
//! Three methods, because 6.12 hides dma-heap and udmabuf pages from the obvious one:
//! - **pagemap**: `/proc/self/pagemap` gives the frame of every page of a mapping. The
//!   system and CMA heaps and udmabuf map their buffers `VM_PFNMAP`, which pagemap skips,
//!   so this works for a memfd (and so for a udmabuf, through the memfd it pins).
//! - **CMA bitmap**: `/sys/kernel/debug/cma/<area>/bitmap` before and after the
//!   allocation; the new bits are the buffer (allocations are serialised in-process).
//! - **kcore**: a tag (a random nonce and the page's index) is written at the start of
//!   every page through the CPU mapping; `/proc/kcore` is read for every physical page
//!   and the pages that carry a tag are the buffer's. Stale copies of a tag (freed pages,
//!   kcore's bounce buffer, our own read buffer) are told apart by retagging with a second
//!   nonce and re-reading only the candidates. The first 16 bytes of each page are put
//!   back afterwards. It reads all of RAM, so it takes seconds under emulation.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use dmaplace_core::backend::CpuAccess;
use dmaplace_core::{PhysAddr, PhysRange, Size};

use crate::buffer::Buffer;
use crate::inventory::CmaDebugfs;
use crate::parse::{self, PagemapEntry};
use crate::sys::map::RawMap;

/// Page size (x86-64 and the common arm64 configuration).
pub const PAGE: u64 = 4096;
const PAGE_USIZE: usize = 4096;

/// How a placement was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `/proc/self/pagemap` over a mapping of the buffer or its memfd.
    Pagemap,
    /// The CMA area's debugfs bitmap around the allocation.
    CmaBitmap,
    /// Tagged pages found through `/proc/kcore`.
    Kcore,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Pagemap => "/proc/self/pagemap",
            Method::CmaBitmap => "CMA debugfs bitmap",
            Method::Kcore => "/proc/kcore page tags",
        })
    }
}

/// Merges page frame numbers, in buffer order, into physical runs.
pub fn runs(pfns: &[u64]) -> Vec<PhysRange> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &pfn in pfns {
        match out.last_mut() {
            Some((start, n)) if *start + *n == pfn => *n += 1,
            _ => out.push((pfn, 1)),
        }
    }
    out.into_iter()
        .filter_map(|(pfn, n)| PhysRange::from_start_size(PhysAddr::new(pfn * PAGE), Size::new(n * PAGE)).ok())
        .collect()
}

/// The frames behind `len` bytes mapped at `addr`, via `/proc/self/pagemap`. The pages
/// must have been touched. Fails when a page is absent (a `VM_PFNMAP` mapping) or when
/// frames read as zero (not root).
pub fn pagemap(addr: usize, len: usize) -> Result<Vec<u64>, String> {
    let f = File::open("/proc/self/pagemap").map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
    let pages = len.div_ceil(PAGE_USIZE);
    let mut raw = vec![0u8; pages * 8];
    // CAST: usize fits u64 on every Linux target.
    let offset = (addr / PAGE_USIZE) as u64 * 8;
    f.read_exact_at(&mut raw, offset).map_err(|e| format!("reading /proc/self/pagemap: {e}"))?;
    let mut pfns = Vec::with_capacity(pages);
    for (i, chunk) in raw.chunks_exact(8).enumerate() {
        let e = PagemapEntry(u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk")));
        if !e.present() {
            return Err(format!("page {i} is not in pagemap (the exporter maps it VM_PFNMAP, which pagemap skips)"));
        }
        if e.pfn() == 0 {
            return Err("pagemap shows frame numbers only to root (CAP_SYS_ADMIN)".into());
        }
        pfns.push(e.pfn());
    }
    Ok(pfns)
}

/// Touches every page of a mapping (reads one byte per page), so that pagemap sees them.
pub fn touch(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(PAGE_USIZE).map(|b| u64::from(std::hint::black_box(*b))).sum()
}

// ------------------------------------------------------------------ CMA bitmap

/// Serialises CMA allocations in this process, so bitmap differences are one buffer's.
pub(crate) static CMA_LOCK: Mutex<()> = Mutex::new(());

/// Reads a CMA area's allocation bitmap.
pub fn cma_bitmap(area: &CmaDebugfs) -> Result<Vec<u32>, String> {
    let path = area.dir.join("bitmap");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse::cma_bitmap(&text).ok_or_else(|| format!("{} does not parse", path.display()))
}

/// The run that appeared between two bitmaps, which must be exactly `pages` pages.
pub fn cma_allocated(area: &CmaDebugfs, before: &[u32], after: &[u32], pages: u64) -> Result<Vec<PhysRange>, String> {
    let new = parse::cma_new_runs(before, after, area.base_pfn, area.order_per_bit);
    let total: u64 = new.iter().map(|r| r.1).sum();
    let per_bit = 1u64 << area.order_per_bit;
    if new.len() != 1 || total != pages.div_ceil(per_bit) * per_bit {
        return Err(format!(
            "the CMA bitmap changed by {} run(s), {total} page(s), for a {pages}-page buffer (another allocation raced)",
            new.len()
        ));
    }
    let (pfn, _) = new[0];
    PhysRange::from_start_size(PhysAddr::new(pfn * PAGE), Size::new(pages * PAGE))
        .map(|r| vec![r])
        .map_err(|e| e.to_string())
}

// ------------------------------------------------------------------ kcore

const TAG_MAGIC: u64 = 0xd3a9_1ace_0f0f_5eed;

fn nonce() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}

fn write_tags(map: &mut [u8], nonce: u64) {
    for (i, page) in map.chunks_mut(PAGE_USIZE).enumerate() {
        if page.len() >= 16 {
            page[..8].copy_from_slice(&(nonce ^ TAG_MAGIC).to_ne_bytes());
            // CAST: a page index fits u64.
            page[8..16].copy_from_slice(&(i as u64).to_ne_bytes());
        }
    }
}

fn tag_of(page_head: &[u8], nonce: u64) -> Option<u64> {
    let a = u64::from_ne_bytes(page_head.get(..8)?.try_into().ok()?);
    let b = u64::from_ne_bytes(page_head.get(8..16)?.try_into().ok()?);
    (a == nonce ^ TAG_MAGIC).then_some(b)
}

/// Finds the frame of every page of `buf` through `/proc/kcore` (root only). See the
/// module documentation for the method.
pub fn kcore(buf: &Buffer) -> Result<Vec<u64>, String> {
    let kcore = File::open("/proc/kcore")
        .map_err(|e| format!("cannot open /proc/kcore: {e} (needs root and CONFIG_PROC_KCORE)"))?;
    let mut head = vec![0u8; 64];
    kcore.read_exact_at(&mut head, 0).map_err(|e| format!("reading /proc/kcore: {e}"))?;
    let (phoff, phnum, phentsize) = parse::kcore_phdr_table(&head).map_err(|e| e.to_string())?;
    let mut table = vec![0u8; usize::from(phnum) * usize::from(phentsize)];
    kcore.read_exact_at(&mut table, phoff).map_err(|e| format!("reading /proc/kcore program headers: {e}"))?;
    let cover =
        parse::kcore_physical_cover(&parse::kcore_segments(&table, phnum, phentsize).map_err(|e| e.to_string())?);

    let mut map = buf.map().map_err(|e| e.to_string())?;
    let pages = map.len() / PAGE_USIZE;
    let saved: Vec<[u8; 16]> =
        map.chunks(PAGE_USIZE).map(|p| p[..16].try_into().expect("pages hold 16 bytes")).collect();
    let restore = |map: &mut [u8]| {
        for (page, head) in map.chunks_mut(PAGE_USIZE).zip(&saved) {
            page[..16].copy_from_slice(head);
        }
    };
    let sync = |begin| buf.sync(CpuAccess::ReadWrite, begin).map_err(|e| e.to_string());

    // Phase 1: tag with nonce 1 and read all of RAM.
    let first = nonce();
    sync(true)?;
    write_tags(&mut map, first);
    sync(false)?;
    let result = (|| {
        const CHUNK: usize = 1 << 20;
        let mut scratch = RawMap::anonymous_locked(CHUNK).map_err(|e| format!("scratch buffer: {e}"))?;
        let mut candidates: Vec<Vec<u64>> = vec![Vec::new(); pages];
        for &(paddr, len, offset) in &cover {
            let mut done = 0u64;
            while done < len {
                let n = usize::try_from(len - done).map_or(CHUNK, |left| left.min(CHUNK));
                let data = &mut scratch.as_mut_slice()[..n];
                if kcore.read_exact_at(data, offset + done).is_err() {
                    // Holes (offline or hwpoisoned pages) read as errors on some kernels: skip.
                    done += n as u64;
                    continue;
                }
                for (i, page) in data.chunks(PAGE_USIZE).enumerate() {
                    if let Some(idx) = tag_of(page, first)
                        && let Some(c) = usize::try_from(idx).ok().and_then(|i| candidates.get_mut(i))
                    {
                        c.push((paddr + done) / PAGE + i as u64);
                    }
                }
                data.fill(0);
                done += n as u64;
            }
        }
        // Phase 2: retag with nonce 2; only the buffer's own pages change.
        let second = nonce().wrapping_add(first) | 1;
        sync(true)?;
        write_tags(&mut map, second);
        sync(false)?;
        let phys_offset = |pfn: u64| {
            cover.iter().find(|(p, l, _)| pfn * PAGE >= *p && pfn * PAGE < p + l).map(|(p, _, o)| o + (pfn * PAGE - p))
        };
        let mut pfns = Vec::with_capacity(pages);
        for (i, cands) in candidates.iter().enumerate() {
            let mut confirmed = Vec::new();
            for &pfn in cands {
                let mut h = [0u8; 16];
                if let Some(off) = phys_offset(pfn)
                    && kcore.read_exact_at(&mut h, off).is_ok()
                    && tag_of(&h, second) == Some(i as u64)
                {
                    confirmed.push(pfn);
                }
            }
            match confirmed.as_slice() {
                [one] => pfns.push(*one),
                [] => {
                    return Err(format!(
                        "page {i} of {pages} was not found in /proc/kcore ({} stale candidate(s))",
                        cands.len()
                    ));
                }
                many => {
                    return Err(format!(
                        "page {i} was found at {} frames; cannot tell which is the buffer's",
                        many.len()
                    ));
                }
            }
        }
        Ok(pfns)
    })();
    sync(true)?;
    restore(&mut map);
    sync(false)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_frames_merge() {
        let r = runs(&[10, 11, 12, 40, 41, 7]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], PhysRange::from_start_size(PhysAddr::new(10 * PAGE), Size::new(3 * PAGE)).unwrap());
        assert_eq!(r[2].start(), PhysAddr::new(7 * PAGE));
    }

    #[test]
    fn tags_round_trip_and_do_not_match_other_nonces() {
        let mut pages = vec![0u8; 3 * PAGE_USIZE];
        write_tags(&mut pages, 42);
        assert_eq!(tag_of(&pages[2 * PAGE_USIZE..], 42), Some(2));
        assert_eq!(tag_of(&pages[PAGE_USIZE..], 43), None);
    }

    #[test]
    fn pagemap_of_anonymous_memory() {
        let mut m = RawMap::anonymous_locked(2 * PAGE_USIZE).unwrap();
        m.as_mut_slice().fill(1);
        let got = pagemap(m.addr(), m.len());
        if rustix::process::geteuid().is_root() {
            // Root sees frames (unless a container hides them).
            if let Ok(pfns) = got {
                assert_eq!(pfns.len(), 2);
            }
        } else {
            assert!(got.unwrap_err().contains("root"));
        }
    }
}
