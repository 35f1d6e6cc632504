//! Client messages: any text frame a client can send goes through `protocol::decode`. It must
//! never panic, and whatever it returns must be a stable wire error or a well-formed command.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server only ever decodes valid UTF-8 (tungstenite checks text frames first).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, result) = giftd::protocol::decode(text);
    match result {
        Ok(command) => {
            // A decoded command always carries the id it was sent with.
            assert!(id.is_some(), "command without id from {text:?}");
            let _ = command.name();
            let _ = command.rate_class();
        }
        Err(e) => {
            // Every decode failure is a protocol error (11xxx) with a stable reason.
            assert!((11000..12000).contains(&e.code()), "{e:?} from {text:?}");
            assert!(!e.reason().is_empty());
            let _ = e.client_message();
        }
    }
});
