//! `fanout-tui`: the live console for Fanout gateways (SPEC §7).
//!
//! Not built yet: see the open issue "fanout-tui: live console". This crate
//! holds its place in the workspace layout so the workspace stays fixed.
