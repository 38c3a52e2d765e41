//! The cluster document parser: it reads documents fetched from peers
//! (catch-up) and sent to the control API, so it must never panic, and
//! whatever it accepts must survive a round trip through `to_toml`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(doc) = dynia_control::config::parse_cluster_doc(text, "fuzz.toml") {
        let again = dynia_control::config::parse_cluster_doc(&doc.to_toml(), "again.toml")
            .expect("a document that parsed must parse again after to_toml");
        assert_eq!(doc.hash(), again.hash());
    }
});
