//! Trace files (docs/TRACE.md): any text parses or is refused with a line number, and
//! whatever parses writes back to text that parses to the same trace.
#![no_main]

use dmaplace_eval::trace::Trace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Trace::parse("fuzz.trace", text) {
        Ok(trace) => {
            let again = Trace::parse("written.trace", &trace.to_text());
            assert_eq!(again.as_ref(), Ok(&trace), "{}", trace.to_text());
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1), "{e}"),
    }
});
