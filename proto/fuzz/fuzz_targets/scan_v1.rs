//! Fuzz target `scan_v1`: see `fanout_proto::fuzzing::scan_v1_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_proto::fuzzing::scan_v1_target(data);
});
