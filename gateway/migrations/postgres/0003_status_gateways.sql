-- Level 3: when each gateway last reported its export status. A gateway
-- writes a status row only when it changed (at most a bounded number per
-- report); its unchanged rows stay current for as long as this heartbeat
-- is, and a row counts as reported at the later of its own time and its
-- gateway's heartbeat. Gateways of level 2 write no heartbeat: their rows
-- count by their own time, as before (schema_compat stays 1).
CREATE TABLE IF NOT EXISTS fanout_status_gateways (
    gateway TEXT PRIMARY KEY,
    reported_ms BIGINT NOT NULL
);
