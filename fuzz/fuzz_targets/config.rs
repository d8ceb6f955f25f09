//! The relay's and the connector's TOML configuration parsers: arbitrary
//! text never panics, and every refusal names a key (and a line within the
//! text when it has one).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ucmrc::config::Config;
use ucmrc::connect::ConnectConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Paths into /proc, /sys or /dev could block (e.g. /proc/kmsg as root):
    // real operators do not point certificates there; the fuzzer must not.
    if text.contains("/proc") || text.contains("/sys") || text.contains("/dev") {
        return;
    }
    let lines = text.lines().count().max(1);
    for result in [
        Config::parse_in("fuzz.toml", text, None).err(),
        ConnectConfig::parse("fuzz.toml", text, None).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!result.key.is_empty());
        if let Some(line) = result.line {
            assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}: {result}");
        }
    }
});
