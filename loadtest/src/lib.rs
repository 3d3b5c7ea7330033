//! `fanout-load`: traffic generator, verifying sink and benchmarks (SPEC §8).
//!
//! Not built yet: see the open issue "fanout-load". This crate holds its place
//! in the workspace layout so the workspace stays fixed.
