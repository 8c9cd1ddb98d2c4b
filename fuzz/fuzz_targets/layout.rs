//! Layout math never panics: it lays out or names the overflowing operands.
#![no_main]

use arbitrary::Arbitrary;
use dmaplace_core::layout::{BUILTIN_MODIFIERS, FORMATS, LayoutAlign, compute};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    format: u8,
    modifier: u8,
    width: u32,
    height: u32,
    pitch: u32,
    offset: u32,
    rows: u32,
    size: u32,
}

fuzz_target!(|i: Input| {
    let f = FORMATS[usize::from(i.format) % FORMATS.len()].fourcc;
    let m = &BUILTIN_MODIFIERS[usize::from(i.modifier) % BUILTIN_MODIFIERS.len()];
    let align = LayoutAlign { pitch: i.pitch, offset: i.offset, height: i.rows, size: i.size };
    if let Ok(l) = compute(f, m, i.width, i.height, align) {
        for (n, p) in l.planes.iter().enumerate() {
            assert_eq!(p.pitch % i.pitch, 0);
            assert_eq!(p.offset % i.offset, 0);
            if n > 0 {
                assert!(p.offset >= l.planes[n - 1].offset);
            }
        }
        assert_eq!(l.size % u64::from(i.size), 0);
    }
});
