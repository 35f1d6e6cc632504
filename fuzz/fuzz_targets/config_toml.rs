//! Configuration: `Config::from_toml` parses and validates operator-supplied TOML. A bad file must
//! be reported as a `ConfigError`, never a panic, and a file that passes must pass validation
//! again (the server re-validates at start).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match giftd::config::Config::from_toml(text) {
        Ok(config) => {
            config.validate().expect("a loaded config validates again");
            let _ = config.catalog();
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error with no problem for {text:?}");
            let _ = e.to_string();
        }
    }
});
