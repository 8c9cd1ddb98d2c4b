//! Any text given as a platform file is either a platform or a located error in TOML's
//! words (never serde's type or enum names); never a panic.
#![no_main]

use dmaplace_core::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Platform::from_toml("fuzz.toml", text) {
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            assert!(!e.message.is_empty());
            // Serde's own words, unless the message only quotes them back from the input
            // (an unknown key named `untagged enum` is reported by name).
            if !text.contains("untagged") && !text.contains("enum") {
                assert!(!e.message.contains("untagged enum"), "serde internals: {e}");
            }
            let _ = e.to_string();
        }
        // As a file, the platform's name must be the file's.
        Ok(p) => assert_eq!(Platform::from_file("fuzz.toml", text).is_ok(), p.name == "fuzz"),
    }
});
