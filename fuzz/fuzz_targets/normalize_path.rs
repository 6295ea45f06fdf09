//! Path normalisation: whatever the bytes, it never panics, never leaves a
//! `.`/`..` segment or `//`, never climbs above `/`, and is idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        gantry_gateway::fuzzing::normalize_path(path);
    }
});
