//! Ingest throughput benchmark (filled in below by the ingest issue).

fn main() {}
