-- Level 2: each gateway's report of how every (Deployment, target) pair is
-- going (its export status), so that any gateway of a fleet answers for all
-- of them. One row per gateway and pair, rewritten every few seconds; rows
-- not rewritten for a while are expired by any gateway. Older gateways do
-- not know the table and do not need it (schema_compat stays 1).
CREATE TABLE IF NOT EXISTS fanout_export_status (
    gateway TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    reported_ms BIGINT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (gateway, deployment_id, target_id)
);
CREATE INDEX IF NOT EXISTS fanout_export_status_pair ON fanout_export_status (deployment_id, target_id);
