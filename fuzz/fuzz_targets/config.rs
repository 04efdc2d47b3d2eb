//! The config loader: any text is accepted or refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = authgate::config::Config::parse(text) {
        match cfg.validate() {
            Ok(_) => {}
            Err(e) => assert!(!e.0.is_empty()),
        }
    }
});
