//! Pure parsers for what the kernel prints: `/proc/iomem`, the boot log's CMA lines, the
//! CMA debugfs bitmap, `/sys/kernel/debug/dma_buf/bufinfo`, `/proc/self/pagemap` entries
//! and the ELF program headers of `/proc/kcore`. No I/O: the tests feed them fixture
//! text copied from real kernels.

use dmaplace_core::{PhysAddr, PhysRange, Size};

/// One line of `/proc/iomem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IomemEntry {
    /// Nesting depth (two spaces per level).
    pub depth: usize,
    /// The range (end exclusive).
    pub range: PhysRange,
    /// What the kernel calls it: `System RAM`, `Reserved`, `Kernel code`, ...
    pub name: String,
}

/// `/proc/iomem`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iomem {
    /// Every line that parsed.
    pub entries: Vec<IomemEntry>,
    /// Whether every address read as zero: the kernel hides addresses from non-root
    /// readers (`kptr_restrict`-style), so the ranges mean nothing.
    pub hidden: bool,
}

impl Iomem {
    /// The top-level `System RAM` ranges.
    pub fn system_ram(&self) -> Vec<PhysRange> {
        self.entries.iter().filter(|e| e.depth == 0 && e.name == "System RAM").map(|e| e.range).collect()
    }

    /// Lines naming a CMA area (`linux,cma`, `cma`, ... at any depth), as `(name, range)`.
    pub fn cma(&self) -> Vec<(String, PhysRange)> {
        self.entries
            .iter()
            .filter(|e| e.name.to_ascii_lowercase().contains("cma"))
            .map(|e| (e.name.clone(), e.range))
            .collect()
    }
}

/// Parses `/proc/iomem` (`00100000-3ffdffff : System RAM`, children indented by two
/// spaces). Lines that do not parse are skipped.
pub fn iomem(text: &str) -> Iomem {
    let mut entries = Vec::new();
    let mut all_zero = true;
    for line in text.lines() {
        let trimmed = line.trim_start_matches(' ');
        let depth = (line.len() - trimmed.len()) / 2;
        let Some((span, name)) = trimmed.split_once(" : ") else {
            continue;
        };
        let Some((a, b)) = span.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(last)) = (u64::from_str_radix(a.trim(), 16), u64::from_str_radix(b.trim(), 16)) else {
            continue;
        };
        if start != 0 || last != 0 {
            all_zero = false;
        }
        let Some(end) = last.checked_add(1) else {
            continue;
        };
        let Ok(range) = PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)) else {
            continue;
        };
        entries.push(IomemEntry { depth, range, name: name.trim().to_owned() });
    }
    Iomem { hidden: all_zero && !text.trim().is_empty(), entries }
}

/// A CMA reservation found in the boot log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCma {
    /// Where.
    pub range: PhysRange,
    /// The log line it came from.
    pub line: String,
}

/// Finds CMA reservations in the kernel log (`dmesg`, `/dev/kmsg`):
/// - `cma: Reserved 64 MiB at 0x000000003c000000 on node -1` (the default area, from
///   `cma=` or `CONFIG_CMA_SIZE_MBYTES`; older kernels omit "on node");
/// - `Reserved memory: created CMA memory pool at 0x0000000038000000, size 128 MiB`
///   (a device-tree `shared-dma-pool`).
pub fn log_cma(text: &str) -> Vec<LogCma> {
    let mut out = Vec::new();
    for line in text.lines() {
        let found = if let Some(rest) = after(line, "cma: Reserved ") {
            // "64 MiB at 0x000000003c000000 on node -1"
            let (size, rest) = size_mib(rest);
            after(rest, " at ").and_then(hex).zip(size)
        } else if let Some(rest) = after(line, "created CMA memory pool at ") {
            // "0x0000000038000000, size 128 MiB"
            let base = hex(rest);
            let size = after(rest, "size ").and_then(|s| size_mib(s).0);
            base.zip(size)
        } else {
            None
        };
        if let Some((base, size)) = found
            && let Ok(range) = PhysRange::from_start_size(PhysAddr::new(base), size)
        {
            out.push(LogCma { range, line: line.trim().to_owned() });
        }
    }
    out
}

fn after<'a>(s: &'a str, needle: &str) -> Option<&'a str> {
    s.find(needle).map(|i| &s[i + needle.len()..])
}

/// `"64 MiB at ..."` -> (64 MiB, " at ...").
fn size_mib(s: &str) -> (Option<Size>, &str) {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..digits].parse::<u64>().ok();
    let rest = &s[digits..];
    match rest.strip_prefix(" MiB") {
        Some(r) => (n.and_then(|n| n.checked_mul(1 << 20)).map(Size::new), r),
        None => (None, rest),
    }
}

/// A leading `0x...` hexadecimal number.
fn hex(s: &str) -> Option<u64> {
    let s = s.trim_start().strip_prefix("0x")?;
    let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
    u64::from_str_radix(&s[..end], 16).ok()
}

/// Parses a CMA debugfs bitmap (`/sys/kernel/debug/cma/<area>/bitmap`): u32 words in
/// decimal, separated by whitespace; bit `b` of word `w` is bitmap bit `32 * w + b`.
pub fn cma_bitmap(text: &str) -> Option<Vec<u32>> {
    text.split_whitespace().map(|w| w.parse::<u32>().ok()).collect()
}

/// Runs of bits set in `after` but not in `before`, as `(first pfn, pages)`, given the
/// area's `base_pfn` and `order_per_bit` (each bit stands for `2^order_per_bit` pages).
pub fn cma_new_runs(before: &[u32], after: &[u32], base_pfn: u64, order_per_bit: u32) -> Vec<(u64, u64)> {
    let per_bit = 1u64 << order_per_bit.min(20);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (w, &a) in after.iter().enumerate() {
        let b = before.get(w).copied().unwrap_or(0);
        let new = a & !b;
        for bit in 0..32u64 {
            if new & (1 << bit) == 0 {
                continue;
            }
            // CAST: a word index is far below 2^58.
            let pfn = base_pfn + (w as u64 * 32 + bit) * per_bit;
            match runs.last_mut() {
                Some((start, n)) if *start + *n == pfn => *n += per_bit,
                _ => runs.push((pfn, per_bit)),
            }
        }
    }
    runs
}

/// One buffer of `/sys/kernel/debug/dma_buf/bufinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufInfo {
    /// Size in bytes.
    pub size: u64,
    /// The exporter: `system`, `reserved`, `udmabuf`, ...
    pub exp_name: String,
    /// The dma-buf's inode number (`fstat(fd).st_ino`).
    pub ino: u64,
    /// The name set with `DMA_BUF_SET_NAME`, or `None` (`<none>`).
    pub name: Option<String>,
    /// Devices attached (`vgem`, `0000:00:02.0`, ...).
    pub attached: Vec<String>,
}

/// Parses `/sys/kernel/debug/dma_buf/bufinfo` (format of `dma_buf_debug_show`, 6.x).
pub fn bufinfo(text: &str) -> Vec<BufInfo> {
    let mut out: Vec<BufInfo> = Vec::new();
    let mut in_attached = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() >= 7
            && !line.starts_with('\t')
            && fields[0].trim().chars().all(|c| c.is_ascii_digit())
            && !fields[0].trim().is_empty()
        {
            let name = fields[6..].join("\t");
            out.push(BufInfo {
                size: fields[0].trim().parse().unwrap_or(0),
                exp_name: fields[4].trim().to_owned(),
                ino: fields[5].trim().parse().unwrap_or(0),
                name: (name != "<none>").then(|| name.trim_end().to_owned()),
                attached: Vec::new(),
            });
            in_attached = false;
        } else if line.trim() == "Attached Devices:" {
            in_attached = true;
        } else if line.starts_with("Total ") {
            in_attached = false;
        } else if in_attached
            && let Some(dev) = line.strip_prefix('\t')
            && let Some(last) = out.last_mut()
        {
            last.attached.push(dev.trim().to_owned());
        }
    }
    out
}

/// One 64-bit entry of `/proc/<pid>/pagemap` (`Documentation/admin-guide/mm/pagemap.rst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// Bit 63: the page is present in RAM.
    pub const fn present(self) -> bool {
        self.0 >> 63 == 1
    }
    /// Bits 0-54: the page frame number; zero unless the reader has CAP_SYS_ADMIN.
    pub const fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
}

/// A loadable segment of `/proc/kcore`: `size` bytes of physical memory from `paddr`,
/// readable at file offset `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KcoreSegment {
    /// File offset.
    pub offset: u64,
    /// Kernel virtual address.
    pub vaddr: u64,
    /// Physical address.
    pub paddr: u64,
    /// Bytes.
    pub size: u64,
}

/// Why the `/proc/kcore` header did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("/proc/kcore header: {0}")]
pub struct KcoreError(pub &'static str);

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
}

/// Where the program headers are and how many: `(e_phoff, e_phnum, e_phentsize)` of an
/// ELF64 little-endian header.
pub fn kcore_phdr_table(elf_header: &[u8]) -> Result<(u64, u16, u16), KcoreError> {
    if elf_header.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(KcoreError("not an ELF file"));
    }
    if elf_header.get(4) != Some(&2) || elf_header.get(5) != Some(&1) {
        return Err(KcoreError("not ELF64 little-endian"));
    }
    let phoff = le_u64(elf_header, 32).ok_or(KcoreError("short ELF header"))?;
    let phentsize = le_u16(elf_header, 54).ok_or(KcoreError("short ELF header"))?;
    let phnum = le_u16(elf_header, 56).ok_or(KcoreError("short ELF header"))?;
    if usize::from(phentsize) < 56 {
        return Err(KcoreError("program header entries shorter than Elf64_Phdr"));
    }
    Ok((phoff, phnum, phentsize))
}

/// The `PT_LOAD` segments that map physical memory (`p_paddr` is `-1` for vmalloc,
/// modules and vmemmap), from the program header table `phdrs`.
pub fn kcore_segments(phdrs: &[u8], phnum: u16, phentsize: u16) -> Result<Vec<KcoreSegment>, KcoreError> {
    const PT_LOAD: u32 = 1;
    let mut out = Vec::new();
    for i in 0..usize::from(phnum) {
        let at = i * usize::from(phentsize);
        let short = KcoreError("program header table truncated");
        let p_type = le_u32(phdrs, at).ok_or(short.clone())?;
        let offset = le_u64(phdrs, at + 8).ok_or(short.clone())?;
        let vaddr = le_u64(phdrs, at + 16).ok_or(short.clone())?;
        let paddr = le_u64(phdrs, at + 24).ok_or(short.clone())?;
        let size = le_u64(phdrs, at + 32).ok_or(short)?;
        if p_type == PT_LOAD && paddr != u64::MAX && size > 0 {
            out.push(KcoreSegment { offset, vaddr, paddr, size });
        }
    }
    Ok(out)
}

/// Physical ranges covered by `segments`, each once, with the segment to read it from:
/// `(paddr, len, file offset)`. Kernel text appears twice in kcore (text mapping and
/// direct map); the overlap is read once.
pub fn kcore_physical_cover(segments: &[KcoreSegment]) -> Vec<(u64, u64, u64)> {
    let mut segs = segments.to_vec();
    segs.sort_by_key(|s| (s.paddr, std::cmp::Reverse(s.size)));
    let mut out = Vec::new();
    let mut covered_to = 0u64;
    for s in segs {
        let end = s.paddr.saturating_add(s.size);
        let start = s.paddr.max(covered_to);
        if start >= end {
            continue;
        }
        out.push((start, end - start, s.offset + (start - s.paddr)));
        covered_to = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), PhysAddr::new(end)).unwrap()
    }

    /// `/proc/iomem` of a 1 GiB qemu pc guest, as root (6.12).
    const IOMEM_ROOT: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-3ffdffff : System RAM
  1e000000-1f001fff : Kernel code
  1f200000-1f8a7fff : Kernel rodata
3ffe0000-3fffffff : Reserved
40000000-febfffff : PCI Bus 0000:00
  fc000000-fdffffff : 0000:00:02.0
fffc0000-ffffffff : Reserved
";

    #[test]
    fn iomem_system_ram_is_the_top_level_ram() {
        let m = iomem(IOMEM_ROOT);
        assert!(!m.hidden);
        assert_eq!(m.system_ram(), vec![r(0x1000, 0x9fc00), r(0x10_0000, 0x3ffe_0000)]);
        assert!(m.cma().is_empty());
        assert_eq!(m.entries[5], IomemEntry { depth: 1, range: r(0xf0000, 0x10_0000), name: "System ROM".into() });
    }

    #[test]
    fn iomem_read_by_a_user_is_hidden() {
        let text = IOMEM_ROOT.lines().map(|l| {
            let (span, name) = l.split_once(" : ").unwrap();
            let indent = &span[..span.len() - span.trim_start().len()];
            format!("{indent}00000000-00000000 : {name}\n")
        });
        let m = iomem(&text.collect::<String>());
        assert!(m.hidden);
    }

    #[test]
    fn iomem_names_cma_areas_on_device_tree_machines() {
        let text =
            "40000000-fbffffff : System RAM\n  40210000-41ffffff : Kernel code\n  ec000000-fbffffff : linux,cma\n";
        assert_eq!(iomem(text).cma(), vec![("linux,cma".to_owned(), r(0xec00_0000, 0xfc00_0000))]);
    }

    #[test]
    fn boot_log_cma_lines() {
        let log = "\
[    0.000000] Memory: 2048K/1048056K available
[    0.004321] cma: Reserved 64 MiB at 0x000000003b800000 on node -1
<6>[    0.1] Reserved memory: created CMA memory pool at 0x0000000038000000, size 128 MiB
[    0.5] cma: Reserved 16 MiB at 0x0000000001000000
[    0.6] cma: Reserved lots at nowhere
";
        let found = log_cma(log);
        assert_eq!(
            found.iter().map(|c| c.range).collect::<Vec<_>>(),
            vec![r(0x3b80_0000, 0x3f80_0000), r(0x3800_0000, 0x4000_0000), r(0x100_0000, 0x200_0000)]
        );
        assert!(found[0].line.ends_with("on node -1"));
    }

    #[test]
    fn cma_bitmap_runs() {
        let before = cma_bitmap("0 0 4294967295\n").unwrap();
        let after = cma_bitmap("15 3221225472 4294967295 1\n").unwrap();
        // word 0: bits 0-3 new; word 1: bits 30-31 new; word 3: bit 0 new.
        assert_eq!(cma_new_runs(&before, &after, 0x3b800, 0), vec![(0x3b800, 4), (0x3b800 + 62, 2), (0x3b800 + 96, 1)]);
        assert_eq!(cma_new_runs(&before, &after, 0, 2), vec![(0, 16), (248, 8), (384, 4)]);
        assert_eq!(cma_bitmap("1 x 2"), None);
    }

    /// `bufinfo` from a 6.12 guest with one named system-heap buffer imported by vgem.
    const BUFINFO: &str = "
Dma-buf Objects:
size    \tflags   \tmode    \tcount   \texp_name\tino     \tname
00065536\t00000002\t00080007\t00000003\tsystem\t00000012\tdmaplace-test
\tAttached Devices:
\tvgem
Total 1 devices attached

01048576\t00000002\t00080007\t00000001\tudmabuf\t00000013\t<none>
\tAttached Devices:
Total 0 devices attached


Total 2 objects, 1114112 bytes
";

    #[test]
    fn bufinfo_names_and_attachments() {
        let b = bufinfo(BUFINFO);
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0],
            BufInfo {
                size: 65536,
                exp_name: "system".into(),
                ino: 12,
                name: Some("dmaplace-test".into()),
                attached: vec!["vgem".into()]
            }
        );
        assert_eq!(b[1].name, None);
        assert_eq!(b[1].exp_name, "udmabuf");
        assert!(b[1].attached.is_empty());
    }

    #[test]
    fn pagemap_bits() {
        let e = PagemapEntry((1 << 63) | (1 << 55) | 0x3b800);
        assert!(e.present());
        assert_eq!(e.pfn(), 0x3b800);
        assert!(!PagemapEntry(0x1234).present());
    }

    fn phdr(p_type: u32, offset: u64, vaddr: u64, paddr: u64, size: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(56);
        v.extend_from_slice(&p_type.to_le_bytes());
        v.extend_from_slice(&7u32.to_le_bytes());
        for x in [offset, vaddr, paddr, size, size, 4096] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }

    #[test]
    fn kcore_headers_give_physical_segments() {
        let mut ehdr = vec![0u8; 64];
        ehdr[..6].copy_from_slice(b"\x7fELF\x02\x01");
        ehdr[32..40].copy_from_slice(&64u64.to_le_bytes());
        ehdr[54..56].copy_from_slice(&56u16.to_le_bytes());
        ehdr[56..58].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(kcore_phdr_table(&ehdr), Ok((64, 4, 56)));
        let mut table = phdr(4, 0, 0, 0, 0); // PT_NOTE
        table.extend(phdr(1, 0x1000, 0xffff_ffff_8100_0000, 0x100_0000, 0x20_0000)); // kernel text
        table.extend(phdr(1, 0x8000_0000, 0xffff_8880_0010_0000, 0x10_0000, 0x3fee_0000)); // direct map
        table.extend(phdr(1, 0x9000_0000, 0xffff_c900_0000_0000, u64::MAX, 0x1000)); // vmalloc
        let segs = kcore_segments(&table, 4, 56).unwrap();
        assert_eq!(segs.len(), 2);
        let cover = kcore_physical_cover(&segs);
        // The text's physical pages lie inside the direct map: read once, from the direct map.
        assert_eq!(cover, vec![(0x10_0000, 0x3fee_0000, 0x8000_0000)]);
        assert_eq!(kcore_phdr_table(b"\x7fELF\x01\x01"), Err(KcoreError("not ELF64 little-endian")));
        assert!(kcore_segments(&table[..100], 4, 56).is_err());
    }
}
