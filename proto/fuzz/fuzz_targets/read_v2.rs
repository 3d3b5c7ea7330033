//! Fuzz target `read_v2`: see `fanout_proto::fuzzing::read_v2_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_proto::fuzzing::read_v2_target(data);
});
