//! Fuzz target `registry_document`: see `fanout_gateway::fuzzing::registry_document_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fanout_gateway::fuzzing::registry_document_target(data);
});
