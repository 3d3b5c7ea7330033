//! Fuzz target `snappy_scan`: see `fanout_proto::fuzzing::snappy_scan_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_proto::fuzzing::snappy_scan_target(data);
});
