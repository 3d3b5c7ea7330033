//! Admin API (SPEC §6).
