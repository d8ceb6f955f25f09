//! The tunnel listeners' ClientHello reader: arbitrary bytes never panic,
//! and a hello that parses whole is "need more" at every shorter prefix (so
//! a hello split across TCP segments routes exactly like one that is not).
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::wire::client_hello::{inspect, DEFAULT_MAX_HELLO};

fuzz_target!(|data: &[u8]| {
    let max = 64 + usize::from(data.first().copied().unwrap_or(0)) * 64;
    let whole = inspect(data, DEFAULT_MAX_HELLO);
    if let Ok(Some(info)) = &whole {
        assert!(info.hello_len <= DEFAULT_MAX_HELLO && info.records >= 1);
        if let Some(name) = &info.server_name {
            assert!(!name.is_empty() && name.len() <= 253 && !name.bytes().any(|b| b.is_ascii_uppercase()));
        }
        for cut in [1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
            if cut < data.len() {
                let prefix = inspect(&data[..cut], DEFAULT_MAX_HELLO);
                assert!(matches!(prefix, Ok(None) | Ok(Some(_))), "prefix {cut}: {prefix:?}");
            }
        }
    }
    let _ = inspect(data, max);
});
