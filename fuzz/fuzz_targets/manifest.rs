//! Any text given to the manifest loader yields a manifest or diagnostics,
//! and the diagnostics render: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(diagnostics) = gantry_manifest::parse(text, "fuzz.toml".as_ref(), "/".as_ref()) {
            let _ = diagnostics.to_string();
        }
    }
});
