//! The node file parser: every error must be located, none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = dynia_control::config::parse_node_file(text, "fuzz.toml") {
        assert!(!errors.errors().is_empty());
        let _ = errors.to_string();
    }
});
