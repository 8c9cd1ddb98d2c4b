//! Typed units: byte sizes, physical and device (DMA/IOVA) addresses, page
//! sizes, `pgsize_bitmap`s, DMA masks and address ranges.
//!
//! Sizes and addresses are distinct types so that a physical address can never
//! be passed where an IOVA is expected. All arithmetic is checked; an overflow
//! is a [`UnitError::Overflow`] that names both operands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An error from unit construction or arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A checked operation overflowed; both operands are named.
    #[error("arithmetic overflow: {lhs_name} ({lhs:#x}) {op} {rhs_name} ({rhs:#x})")]
    Overflow {
        /// What the left operand is, e.g. `"size"`.
        lhs_name: &'static str,
        /// The left operand's value.
        lhs: u64,
        /// The operator, e.g. `"+"`.
        op: &'static str,
        /// What the right operand is.
        rhs_name: &'static str,
        /// The right operand's value.
        rhs: u64,
    },
    /// A value that must be a power of two is not.
    #[error("{what} must be a non-zero power of two, got {value:#x}")]
    NotPowerOfTwo {
        /// What the value is, e.g. `"page size"`.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A DMA mask width outside 1..=64.
    #[error("DMA mask width must be 1..=64 bits, got {0}")]
    MaskBits(u32),
    /// A segment boundary mask that is not of the form `2^n - 1`.
    #[error("segment_boundary_mask must be of the form 2^n-1, got {0:#x}")]
    BoundaryMask(u64),
    /// An empty or reversed address range.
    #[error("empty address range {start:#x}..{end:#x}")]
    EmptyRange {
        /// Start of the range.
        start: u64,
        /// Exclusive end of the range.
        end: u64,
    },
    /// A size string that does not parse.
    #[error("cannot parse size {input:?}: {reason}")]
    ParseSize {
        /// The text given.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// Checked addition that names its operands on overflow.
pub fn add(lhs_name: &'static str, lhs: u64, rhs_name: &'static str, rhs: u64) -> Result<u64, UnitError> {
    lhs.checked_add(rhs).ok_or(UnitError::Overflow { lhs_name, lhs, op: "+", rhs_name, rhs })
}

/// Checked multiplication that names its operands on overflow.
pub fn mul(lhs_name: &'static str, lhs: u64, rhs_name: &'static str, rhs: u64) -> Result<u64, UnitError> {
    lhs.checked_mul(rhs).ok_or(UnitError::Overflow { lhs_name, lhs, op: "*", rhs_name, rhs })
}

/// Rounds `value` up to a multiple of `align` (any non-zero value), naming the operands on overflow.
pub fn align_up(name: &'static str, value: u64, align_name: &'static str, align: u64) -> Result<u64, UnitError> {
    if align <= 1 {
        return Ok(value);
    }
    let rem = value % align;
    if rem == 0 {
        return Ok(value);
    }
    value.checked_add(align - rem).ok_or(UnitError::Overflow {
        lhs_name: name,
        lhs: value,
        op: "align_up",
        rhs_name: align_name,
        rhs: align,
    })
}

/// Writes `v` as hex with `_` every four digits, the way addresses read in the kernel's
/// documentation: `0x1_2000_0000`.
pub(crate) fn fmt_hex(v: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let digits = format!("{v:x}");
    let mut out = String::with_capacity(digits.len() + digits.len() / 4 + 2);
    out.push_str("0x");
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 4 == 0 {
            out.push('_');
        }
        out.push(c);
    }
    f.pad(&out)
}

/// A byte count.
///
/// Serialises as an integer; deserialises from an integer or a string such as `"8MiB"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Size(u64);

/// Accepts an integer or a size string (`"64KiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(u64),
    Text(String),
}

impl SizeRepr {
    fn bytes(self) -> Result<u64, UnitError> {
        match self {
            SizeRepr::Int(v) => Ok(v),
            SizeRepr::Text(t) => t.parse::<Size>().map(Size::bytes),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        SizeRepr::deserialize(d)?.bytes().map(Size).map_err(serde::de::Error::custom)
    }
}

impl Size {
    /// Zero bytes.
    pub const ZERO: Size = Size(0);
    /// 4 KiB, the base page on every platform we describe.
    pub const SZ_4K: Size = Size(4096);

    /// A size of `bytes` bytes.
    pub const fn new(bytes: u64) -> Size {
        Size(bytes)
    }
    /// `n` KiB. Panics at compile time when used in a const and it overflows.
    pub const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> Size {
        Size(n * 1024 * 1024 * 1024)
    }
    /// The byte count.
    pub const fn bytes(self) -> u64 {
        self.0
    }
    /// Whether this is zero bytes.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
    /// `self + rhs`, or an overflow error naming both sizes.
    pub fn checked_add(self, rhs: Size) -> Result<Size, UnitError> {
        add("size", self.0, "size", rhs.0).map(Size)
    }
    /// `self - rhs`, or an overflow error when `rhs > self`.
    pub fn checked_sub(self, rhs: Size) -> Result<Size, UnitError> {
        self.0.checked_sub(rhs.0).map(Size).ok_or(UnitError::Overflow {
            lhs_name: "size",
            lhs: self.0,
            op: "-",
            rhs_name: "size",
            rhs: rhs.0,
        })
    }
    /// `self * n`, or an overflow error naming both.
    pub fn checked_mul(self, n: u64) -> Result<Size, UnitError> {
        mul("size", self.0, "count", n).map(Size)
    }
    /// Rounds up to a multiple of `align`.
    pub fn align_up(self, align: PageSize) -> Result<Size, UnitError> {
        align_up("size", self.0, "alignment", align.get()).map(Size)
    }
    /// Whether this is a multiple of `align`.
    pub const fn is_aligned(self, align: PageSize) -> bool {
        self.0 & (align.get() - 1) == 0
    }
    /// The number of `unit`-sized pieces needed to cover this size.
    pub const fn div_ceil(self, unit: PageSize) -> u64 {
        self.0.div_ceil(unit.get())
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] =
            [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B")];
        let b = self.0;
        if b == 0 {
            return f.pad("0 B");
        }
        for (unit, name) in UNITS {
            if b >= unit && b.is_multiple_of(unit) {
                return f.pad(&format!("{} {name}", b / unit));
            }
        }
        f.pad(&format!("{b} B"))
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Size({self})")
    }
}

impl FromStr for Size {
    type Err = UnitError;

    /// Parses `4096`, `0x1000`, `64K`, `64KiB`, `8 MiB`, `2G`, `1GiB`, `1T`: every suffix is
    /// a power of 1024. `kB`, `MB`, `GB` and `TB` are refused as ambiguous.
    fn from_str(s: &str) -> Result<Size, UnitError> {
        let err = |reason| UnitError::ParseSize { input: s.to_owned(), reason };
        let t = s.trim();
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            let digits: String = hex.chars().filter(|c| *c != '_').collect();
            return u64::from_str_radix(&digits, 16).map(Size).map_err(|_| err("invalid hexadecimal number"));
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        let num: String = num.chars().filter(|c| *c != '_').collect();
        if num.is_empty() {
            return Err(err("expected a number, optionally followed by K, M, G or T (KiB, MiB, GiB, TiB)"));
        }
        let n: u64 = num.parse().map_err(|_| err("number does not fit in 64 bits"))?;
        let shift = match suffix.trim() {
            "" | "B" | "b" => 0,
            "K" | "k" | "KiB" => 10,
            "M" | "m" | "MiB" => 20,
            "G" | "g" | "GiB" => 30,
            "T" | "t" | "TiB" => 40,
            // SI (10^6) or JEDEC (2^20)? Buffer sizes are too important to guess.
            "KB" | "kB" | "MB" | "GB" | "TB" => {
                return Err(err(
                    "kB, MB, GB and TB are ambiguous (powers of 1000 or of 1024?); write KiB, MiB, GiB or TiB (also K, M, G, T) for powers of 1024, or the number of bytes",
                ));
            }
            _ => return Err(err("unknown suffix; use K, M, G or T (KiB, MiB, GiB, TiB)")),
        };
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(|| err("size does not fit in 64 bits"))
    }
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address `v`.
            pub const fn new(v: u64) -> Self {
                Self(v)
            }
            /// The raw address.
            pub const fn get(self) -> u64 {
                self.0
            }
            /// `self + size`, or an overflow error naming both.
            pub fn checked_add(self, size: Size) -> Result<Self, UnitError> {
                add($what, self.0, "size", size.bytes()).map(Self)
            }
            /// The distance from `base` up to `self`, or an overflow error when `self < base`.
            pub fn offset_from(self, base: Self) -> Result<Size, UnitError> {
                self.0.checked_sub(base.0).map(Size::new).ok_or(UnitError::Overflow {
                    lhs_name: $what,
                    lhs: self.0,
                    op: "-",
                    rhs_name: $what,
                    rhs: base.0,
                })
            }
            /// Whether the address is a multiple of `align`.
            pub const fn is_aligned(self, align: PageSize) -> bool {
                self.0 & (align.get() - 1) == 0
            }
            /// Rounds up to a multiple of `align`.
            pub fn align_up(self, align: PageSize) -> Result<Self, UnitError> {
                align_up($what, self.0, "alignment", align.get()).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_hex(self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

address_type!(
    /// A CPU physical address (what `/proc/self/pagemap` reports, `page_to_phys`).
    PhysAddr,
    "phys_addr"
);
address_type!(
    /// An address as a device sees it: an IOVA behind an IOMMU, else a bus address
    /// (`dma_addr_t`).
    DmaAddr,
    "dma_addr"
);

/// A page or chunk size: a checked, non-zero power of two.
///
/// Deserialises from an integer or a size string (`"2MiB"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u64")]
pub struct PageSize(u64);

impl<'de> Deserialize<'de> for PageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PageSize, D::Error> {
        let bytes = SizeRepr::deserialize(d)?.bytes().map_err(serde::de::Error::custom)?;
        PageSize::new(bytes).map_err(serde::de::Error::custom)
    }
}

impl PageSize {
    /// 4 KiB.
    pub const SZ_4K: PageSize = PageSize(1 << 12);
    /// 16 KiB.
    pub const SZ_16K: PageSize = PageSize(1 << 14);
    /// 64 KiB.
    pub const SZ_64K: PageSize = PageSize(1 << 16);
    /// 1 MiB.
    pub const SZ_1M: PageSize = PageSize(1 << 20);
    /// 2 MiB.
    pub const SZ_2M: PageSize = PageSize(1 << 21);
    /// 4 MiB.
    pub const SZ_4M: PageSize = PageSize(1 << 22);
    /// 16 MiB.
    pub const SZ_16M: PageSize = PageSize(1 << 24);
    /// 1 GiB.
    pub const SZ_1G: PageSize = PageSize(1 << 30);

    /// A page size, or [`UnitError::NotPowerOfTwo`].
    pub const fn new(v: u64) -> Result<PageSize, UnitError> {
        if v.is_power_of_two() {
            Ok(PageSize(v))
        } else {
            Err(UnitError::NotPowerOfTwo { what: "page size", value: v })
        }
    }
    /// `1 << shift`, for `shift` in 0..64.
    pub const fn from_shift(shift: u32) -> Option<PageSize> {
        if shift < 64 { Some(PageSize(1 << shift)) } else { None }
    }
    /// The size in bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
    /// `log2` of the size.
    pub const fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }
    /// The buddy order relative to 4 KiB pages (`None` below 4 KiB).
    pub const fn order(self) -> Option<u32> {
        self.shift().checked_sub(12)
    }
    /// As a [`Size`].
    pub const fn size(self) -> Size {
        Size(self.0)
    }
    /// The largest power of two dividing `v` (its natural alignment), or `None` for 0.
    pub const fn alignment_of(v: u64) -> Option<PageSize> {
        if v == 0 { None } else { Some(PageSize(1 << v.trailing_zeros())) }
    }
    /// The smallest power of two not below `size` (at least 1), or `None` when over 2^63.
    pub const fn covering(size: u64) -> Option<PageSize> {
        match size.checked_next_power_of_two() {
            Some(0) | None => None,
            Some(v) => Some(PageSize(v)),
        }
    }
}

impl TryFrom<u64> for PageSize {
    type Error = UnitError;
    fn try_from(v: u64) -> Result<Self, UnitError> {
        PageSize::new(v)
    }
}

impl From<PageSize> for u64 {
    fn from(p: PageSize) -> u64 {
        p.0
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.size(), f)
    }
}

impl fmt::Debug for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageSize({self})")
    }
}

/// A set of page sizes, as an IOMMU driver's `pgsize_bitmap` (bit n set: 2^n bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PageSizes(u64);

impl PageSizes {
    /// The empty set.
    pub const EMPTY: PageSizes = PageSizes(0);
    /// 4 KiB only (Tegra SMMU, etnaviv MMUv1, V3D).
    pub const SZ_4K_ONLY: PageSizes = PageSizes(1 << 12);

    /// A set from a raw `pgsize_bitmap`.
    pub const fn from_bitmap(bitmap: u64) -> PageSizes {
        PageSizes(bitmap)
    }
    /// The raw `pgsize_bitmap`.
    pub const fn bitmap(self) -> u64 {
        self.0
    }
    /// A set from page sizes.
    pub fn from_sizes(sizes: impl IntoIterator<Item = PageSize>) -> PageSizes {
        PageSizes(sizes.into_iter().fold(0, |acc, p| acc | p.get()))
    }
    /// Whether the set holds `p`.
    pub const fn contains(self, p: PageSize) -> bool {
        self.0 & p.get() != 0
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The union.
    pub const fn union(self, other: PageSizes) -> PageSizes {
        PageSizes(self.0 | other.0)
    }
    /// The smallest page size, the IOMMU's granule.
    pub const fn smallest(self) -> Option<PageSize> {
        PageSize::alignment_of(self.0)
    }
    /// The largest page size.
    pub const fn largest(self) -> Option<PageSize> {
        if self.0 == 0 { None } else { Some(PageSize(1 << (63 - self.0.leading_zeros()))) }
    }
    /// The largest page size in the set that is at most `limit`.
    pub const fn largest_at_most(self, limit: u64) -> Option<PageSize> {
        let mut bits = self.0;
        while bits != 0 {
            let top = 1u64 << (63 - bits.leading_zeros());
            if top <= limit {
                return Some(PageSize(top));
            }
            bits &= !top;
        }
        None
    }
    /// The page sizes, largest first.
    pub fn iter_desc(self) -> impl Iterator<Item = PageSize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            let top = PageSizes(bits).largest()?;
            bits &= !top.0;
            Some(top)
        })
    }
}

impl FromIterator<PageSize> for PageSizes {
    fn from_iter<I: IntoIterator<Item = PageSize>>(iter: I) -> Self {
        PageSizes::from_sizes(iter)
    }
}

impl fmt::Display for PageSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut sizes: Vec<PageSize> = self.iter_desc().collect();
        sizes.reverse();
        let text: Vec<String> = sizes.iter().map(|p| p.to_string()).collect();
        write!(f, "{{{}}}", text.join(", "))
    }
}

impl fmt::Debug for PageSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageSizes({self})")
    }
}

/// A DMA mask of 1..=64 bits, as given to `dma_set_mask()`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct DmaMask(u8);

impl DmaMask {
    /// `DMA_BIT_MASK(32)`.
    pub const BITS_32: DmaMask = DmaMask(32);
    /// `DMA_BIT_MASK(64)`.
    pub const BITS_64: DmaMask = DmaMask(64);

    /// `DMA_BIT_MASK(bits)`; fails to compile in a const context for bits outside 1..=64.
    pub const fn of<const BITS: u32>() -> DmaMask {
        assert!(BITS >= 1 && BITS <= 64, "DMA mask width must be 1..=64");
        DmaMask(BITS as u8)
    }
    /// `DMA_BIT_MASK(bits)`, or [`UnitError::MaskBits`] outside 1..=64.
    pub const fn new(bits: u32) -> Result<DmaMask, UnitError> {
        if bits >= 1 && bits <= 64 {
            // CAST: bits <= 64 fits in u8.
            Ok(DmaMask(bits as u8))
        } else {
            Err(UnitError::MaskBits(bits))
        }
    }
    /// The mask width in bits.
    pub const fn bits(self) -> u32 {
        self.0 as u32
    }
    /// The mask value, `DMA_BIT_MASK(n)`.
    pub const fn mask(self) -> u64 {
        if self.0 >= 64 { u64::MAX } else { (1u64 << self.0) - 1 }
    }
    /// The exclusive end of the reachable addresses, saturated at `u64::MAX` for a 64-bit
    /// mask (the last byte of the 64-bit space is not representable; no memory lives there).
    pub const fn end(self) -> u64 {
        if self.0 >= 64 { u64::MAX } else { 1u64 << self.0 }
    }
}

impl TryFrom<u32> for DmaMask {
    type Error = UnitError;
    fn try_from(v: u32) -> Result<Self, UnitError> {
        DmaMask::new(v)
    }
}

impl From<DmaMask> for u32 {
    fn from(m: DmaMask) -> u32 {
        m.bits()
    }
}

impl fmt::Display for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit", self.0)
    }
}

impl fmt::Debug for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaMask({})", self.0)
    }
}

/// A `segment_boundary_mask`: a segment may not cross a multiple of `mask + 1`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BoundaryMask(u64);

impl BoundaryMask {
    /// No boundary (`ULONG_MAX`, the kernel default).
    pub const NONE: BoundaryMask = BoundaryMask(u64::MAX);

    /// A mask of the form `2^n - 1`, or [`UnitError::BoundaryMask`].
    pub const fn new(mask: u64) -> Result<BoundaryMask, UnitError> {
        if mask == u64::MAX || (mask.wrapping_add(1)).is_power_of_two() {
            Ok(BoundaryMask(mask))
        } else {
            Err(UnitError::BoundaryMask(mask))
        }
    }
    /// The raw mask.
    pub const fn get(self) -> u64 {
        self.0
    }
    /// Whether `[start, start + len)` stays inside one boundary window.
    pub const fn fits(self, start: u64, len: u64) -> bool {
        len == 0 || (start & !self.0) == ((start + (len - 1)) & !self.0)
    }
}

impl TryFrom<u64> for BoundaryMask {
    type Error = UnitError;
    fn try_from(v: u64) -> Result<Self, UnitError> {
        BoundaryMask::new(v)
    }
}

impl From<BoundaryMask> for u64 {
    fn from(m: BoundaryMask) -> u64 {
        m.0
    }
}

impl fmt::Debug for BoundaryMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoundaryMask({:#x})", self.0)
    }
}

impl fmt::Display for BoundaryMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_hex(self.0, f)
    }
}

/// A non-empty, half-open range of physical addresses `start..end`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRange", into = "RawRange")]
pub struct PhysRange {
    start: PhysAddr,
    end: PhysAddr,
}

#[derive(Serialize, Deserialize)]
struct RawRange {
    start: u64,
    end: u64,
}

impl TryFrom<RawRange> for PhysRange {
    type Error = UnitError;
    fn try_from(r: RawRange) -> Result<Self, UnitError> {
        PhysRange::new(PhysAddr::new(r.start), PhysAddr::new(r.end))
    }
}

impl From<PhysRange> for RawRange {
    fn from(r: PhysRange) -> RawRange {
        RawRange { start: r.start.get(), end: r.end.get() }
    }
}

impl PhysRange {
    /// `start..end`, or [`UnitError::EmptyRange`] when `end <= start`.
    pub const fn new(start: PhysAddr, end: PhysAddr) -> Result<PhysRange, UnitError> {
        if end.get() > start.get() {
            Ok(PhysRange { start, end })
        } else {
            Err(UnitError::EmptyRange { start: start.get(), end: end.get() })
        }
    }
    /// `start..start + size`.
    pub fn from_start_size(start: PhysAddr, size: Size) -> Result<PhysRange, UnitError> {
        PhysRange::new(start, start.checked_add(size)?)
    }
    /// Addresses below `end` (from 0).
    pub const fn below(end: u64) -> Result<PhysRange, UnitError> {
        PhysRange::new(PhysAddr::new(0), PhysAddr::new(end))
    }
    /// The first address.
    pub const fn start(self) -> PhysAddr {
        self.start
    }
    /// The exclusive end.
    pub const fn end(self) -> PhysAddr {
        self.end
    }
    /// The length.
    pub const fn len(self) -> Size {
        Size::new(self.end.get() - self.start.get())
    }
    /// Always false: ranges are non-empty by construction.
    pub const fn is_empty(self) -> bool {
        false
    }
    /// Whether `other` lies entirely inside `self`.
    pub const fn contains_range(self, other: PhysRange) -> bool {
        other.start.get() >= self.start.get() && other.end.get() <= self.end.get()
    }
    /// Whether `addr` lies inside.
    pub const fn contains(self, addr: PhysAddr) -> bool {
        addr.get() >= self.start.get() && addr.get() < self.end.get()
    }
    /// The overlap of two ranges, if any.
    pub fn intersect(self, other: PhysRange) -> Option<PhysRange> {
        PhysRange::new(self.start.max(other.start), self.end.min(other.end)).ok()
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysRange({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_parses_suffixes() {
        assert_eq!("8MiB".parse::<Size>().unwrap(), Size::mib(8));
        assert_eq!("8 MiB".parse::<Size>().unwrap(), Size::mib(8));
        assert_eq!("64K".parse::<Size>().unwrap(), Size::kib(64));
        assert_eq!("4096".parse::<Size>().unwrap(), Size::new(4096));
        assert_eq!("0x1000".parse::<Size>().unwrap(), Size::new(4096));
        assert_eq!("1G".parse::<Size>().unwrap(), Size::gib(1));
        assert_eq!("2TiB".parse::<Size>().unwrap(), Size::gib(2048));
        assert!(matches!("8XB".parse::<Size>(), Err(UnitError::ParseSize { .. })));
        for si in ["8MB", "8 MB", "4kB", "4KB", "1GB", "1TB"] {
            let e = si.parse::<Size>().unwrap_err().to_string();
            assert!(e.contains("ambiguous"), "{si}: {e}");
        }
        assert!(matches!("".parse::<Size>(), Err(UnitError::ParseSize { .. })));
        assert!(matches!("99999999999T".parse::<Size>(), Err(UnitError::ParseSize { .. })));
    }

    #[test]
    fn size_displays_exact_binary_units() {
        assert_eq!(Size::mib(8).to_string(), "8 MiB");
        assert_eq!(Size::kib(1536).to_string(), "1536 KiB");
        assert_eq!(Size::new(1000).to_string(), "1000 B");
        assert_eq!(Size::ZERO.to_string(), "0 B");
    }

    #[test]
    fn overflow_names_operands() {
        let e = Size::new(u64::MAX).checked_add(Size::new(1)).unwrap_err();
        assert_eq!(e.to_string(), "arithmetic overflow: size (0xffffffffffffffff) + size (0x1)");
        let e = PhysAddr::new(u64::MAX - 1).checked_add(Size::new(4)).unwrap_err();
        assert!(e.to_string().contains("phys_addr"), "{e}");
    }

    #[test]
    fn hex_groups_by_four_digits() {
        assert_eq!(PhysAddr::new(0x1_2000_0000).to_string(), "0x1_2000_0000");
        assert_eq!(PhysAddr::new(0x1000).to_string(), "0x1000");
        assert_eq!(PhysAddr::new(0x12345).to_string(), "0x1_2345");
    }

    #[test]
    fn page_size_is_checked() {
        assert!(PageSize::new(4096).is_ok());
        assert_eq!(PageSize::new(3000), Err(UnitError::NotPowerOfTwo { what: "page size", value: 3000 }));
        assert_eq!(PageSize::new(0).unwrap_err().to_string(), "page size must be a non-zero power of two, got 0x0");
        assert_eq!(PageSize::SZ_2M.order(), Some(9));
        assert_eq!(PageSize::alignment_of(0x60_0000), Some(PageSize::SZ_2M));
    }

    #[test]
    fn pgsize_bitmap_queries() {
        let vtd = PageSizes::from_sizes([PageSize::SZ_4K, PageSize::SZ_2M, PageSize::SZ_1G]);
        assert_eq!(vtd.bitmap(), 0x4020_1000);
        assert_eq!(vtd.largest_at_most(Size::mib(8).bytes()), Some(PageSize::SZ_2M));
        assert_eq!(vtd.largest_at_most(Size::mib(2).bytes()), Some(PageSize::SZ_2M));
        assert_eq!(vtd.largest_at_most(Size::mib(2).bytes() - 1), Some(PageSize::SZ_4K));
        assert_eq!(vtd.largest_at_most(u64::MAX), Some(PageSize::SZ_1G));
        assert_eq!(vtd.largest_at_most(4095), None);
        assert_eq!(vtd.smallest(), Some(PageSize::SZ_4K));
        assert_eq!(vtd.to_string(), "{4 KiB, 2 MiB, 1 GiB}");
        let desc: Vec<_> = vtd.iter_desc().collect();
        assert_eq!(desc, [PageSize::SZ_1G, PageSize::SZ_2M, PageSize::SZ_4K]);
    }

    #[test]
    fn dma_mask_bounds() {
        assert_eq!(DmaMask::new(32).unwrap().mask(), 0xffff_ffff);
        assert_eq!(DmaMask::new(64).unwrap().mask(), u64::MAX);
        assert_eq!(DmaMask::new(0), Err(UnitError::MaskBits(0)));
        assert_eq!(DmaMask::new(65), Err(UnitError::MaskBits(65)));
        assert_eq!(DmaMask::of::<30>().end(), 1 << 30);
    }

    #[test]
    fn boundary_mask_checks_form_and_fit() {
        let b = BoundaryMask::new(0xffff).unwrap();
        assert!(b.fits(0, 0x10000));
        assert!(!b.fits(0x8000, 0x10000));
        assert!(BoundaryMask::new(0xfff0).is_err());
        assert!(BoundaryMask::NONE.fits(1, u64::MAX - 1));
    }

    #[test]
    fn ranges() {
        let r = PhysRange::from_start_size(PhysAddr::new(0x1_2000_0000), Size::mib(128)).unwrap();
        assert_eq!(r.to_string(), "0x1_2000_0000..0x1_2800_0000");
        assert!(PhysRange::new(PhysAddr::new(5), PhysAddr::new(5)).is_err());
        let low = PhysRange::below(1 << 32).unwrap();
        assert_eq!(low.intersect(r), None);
        assert_eq!(PhysRange::below(0x1_2400_0000).unwrap().intersect(r).unwrap().len(), Size::mib(64));
    }
}
