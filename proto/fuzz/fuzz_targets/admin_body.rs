//! Fuzz target `admin_body`: see `fanout_gateway::fuzzing::admin_body_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_gateway::fuzzing::admin_body_target(data);
});
