//! Fuzz target `write_v2`: see `fanout_proto::fuzzing::write_v2_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_proto::fuzzing::write_v2_target(data);
});
