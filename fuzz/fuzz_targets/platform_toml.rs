//! Any text given as a platform file is either a platform or a located error; never a panic.
#![no_main]

use dmaplace_core::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = Platform::from_toml("fuzz.toml", text) {
        assert_eq!(e.file, "fuzz.toml");
        assert!(!e.message.is_empty());
        let _ = e.to_string();
    }
});
