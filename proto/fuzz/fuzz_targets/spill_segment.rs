//! Fuzz target `spill_segment`: see `fanout_gateway::fuzzing::spill_segment_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_gateway::fuzzing::spill_segment_target(data);
});
