-- The gateway (embedded SQLite): same tables and values as the MySQL file.
-- ALTER TABLE is not idempotent here: a process that loses the race to
-- apply this migration fails, retries (src/store/migrate.rs) and then finds
-- it applied.
ALTER TABLE worker_nodes ADD COLUMN queue_length INTEGER;

CREATE TABLE IF NOT EXISTS api_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    key_hash     TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE IF NOT EXISTS usage_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    row_key        TEXT    NOT NULL UNIQUE,
    request_id     TEXT    NOT NULL,
    key_id         INTEGER NOT NULL,
    service_type   TEXT    NOT NULL,
    worker_id      INTEGER,
    status         INTEGER NOT NULL,
    request_bytes  INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER NOT NULL,
    duration_ms    INTEGER NOT NULL,
    cost           INTEGER NOT NULL,
    instance       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_usage_log_key_time ON usage_log (key_id, started_at);
CREATE INDEX IF NOT EXISTS ix_usage_log_request ON usage_log (request_id);
