//! Fuzz the CoAP message parser: parsing never panics, and what parses re-encodes to a
//! message that parses to the same value.
#![no_main]

use cairn_coap::{Message, MessageView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(view) = MessageView::parse(data) {
        let _ = view.options().count();
        let message = Message::decode(data).expect("a valid view decodes");
        let again = Message::decode(&message.to_bytes()).expect("re-encoded message parses");
        assert_eq!(again, message);
    }
});
