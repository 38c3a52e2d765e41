//! Host patterns from configuration and `Host` headers from clients.
#![no_main]

use dynia_proxy::route::Router;
use dynia_proxy::HostPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (patterns, host) = text.split_once('\n').unwrap_or((text, text));
    let parsed: Vec<HostPattern> = patterns.split(',').filter_map(HostPattern::parse).collect();
    let router = Router::new([(&parsed[..], 0usize)]);
    if let Some(i) = router.route(host) {
        assert_eq!(i, 0);
    }
});
