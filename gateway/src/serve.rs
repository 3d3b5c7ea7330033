//! `fanout serve`: wires store, registry, ingest, delivery and admin together.
