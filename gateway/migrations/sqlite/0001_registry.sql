-- Level 1: the registry's objects and its metadata (version, schema level,
-- target salt). Idempotent: stores created before migrations were recorded
-- in _sqlx_migrations already have these tables.
CREATE TABLE IF NOT EXISTS fanout_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fanout_objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
INSERT INTO fanout_meta (name, value) VALUES ('version', '0') ON CONFLICT (name) DO NOTHING;
