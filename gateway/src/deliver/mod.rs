//! Delivery: the hand-off from ingest to per-target queues (SPEC §5).
