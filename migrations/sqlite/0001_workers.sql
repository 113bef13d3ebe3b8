-- Worker registry (embedded SQLite). Same columns and values as the MySQL
-- schema; only the DDL dialect differs. IF NOT EXISTS because several local
-- instances may race to migrate the same file (the loser retries).
CREATE TABLE IF NOT EXISTS worker_nodes (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    name                TEXT    NOT NULL,
    host                TEXT    NOT NULL,
    port                INTEGER NOT NULL,
    service_type        TEXT    NOT NULL,
    status              TEXT    NOT NULL DEFAULT 'online',
    weight              INTEGER NOT NULL DEFAULT 1,
    max_connections     INTEGER NOT NULL DEFAULT 100,
    current_connections INTEGER NOT NULL DEFAULT 0,
    cpu_usage           REAL,
    memory_usage        REAL,
    total_requests      INTEGER NOT NULL DEFAULT 0,
    total_failures      INTEGER NOT NULL DEFAULT 0,
    avg_response_ms     REAL    NOT NULL DEFAULT 0,
    last_heartbeat      INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    UNIQUE (host, port)
);
CREATE INDEX IF NOT EXISTS ix_worker_nodes_service ON worker_nodes (service_type, status);
CREATE INDEX IF NOT EXISTS ix_worker_nodes_heartbeat ON worker_nodes (status, last_heartbeat);

CREATE TABLE IF NOT EXISTS worker_stats (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_id       INTEGER NOT NULL REFERENCES worker_nodes (id) ON DELETE CASCADE,
    interval_start  INTEGER NOT NULL,
    requests        INTEGER NOT NULL DEFAULT 0,
    successes       INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    avg_response_ms REAL    NOT NULL DEFAULT 0,
    UNIQUE (worker_id, interval_start)
);
