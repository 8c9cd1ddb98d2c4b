//! The daemon's message decoder never panics: any datagram decodes or is refused with a
//! named error, and whatever decodes encodes back to a message that decodes to itself.
#![no_main]

use dmaplace_proto::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(m) = Message::decode(bytes) {
        let again = m.encode().expect("a decoded message is within every limit");
        assert_eq!(Message::decode(&again).expect("re-decodes"), m);
    }
});
