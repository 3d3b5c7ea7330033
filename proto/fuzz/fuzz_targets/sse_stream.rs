//! Fuzz target `sse_stream`: see `fanout_tui::sse::fuzz_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_tui::sse::fuzz_target(data);
});
