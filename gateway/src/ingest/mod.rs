//! Ingest: remote-write listeners (SPEC §2).
