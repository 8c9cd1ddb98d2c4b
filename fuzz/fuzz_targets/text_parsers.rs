//! Sizes, fourccs, modifiers and hint lists from the command line: parse or explain.
#![no_main]

use dmaplace_core::layout::{fourcc_name, parse_fourcc, parse_modifier};
use dmaplace_core::{Size, Usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(size) = text.parse::<Size>() {
        // Whatever parses prints as something that parses back to the same size.
        assert_eq!(size.to_string().replace(' ', "").parse::<Size>().ok(), Some(size));
    }
    if let Ok(f) = parse_fourcc(text) {
        assert_eq!(parse_fourcc(&fourcc_name(f)), Ok(f));
    }
    let _ = parse_modifier(text, &[]);
    if let Ok(u) = Usage::parse_list(text) {
        assert_eq!(Usage::parse_list(&u.to_string().replace("none", "")), Ok(u));
    }
});
