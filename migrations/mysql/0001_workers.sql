-- Worker registry (MySQL / MariaDB). Times are Unix epoch milliseconds
-- written by the API instances, so both dialects store the same values.
-- IF NOT EXISTS keeps a re-run harmless; the migrator also holds GET_LOCK.
CREATE TABLE IF NOT EXISTS worker_nodes (
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name                VARCHAR(128) NOT NULL,
    host                VARCHAR(255) NOT NULL,
    port                BIGINT       NOT NULL,
    service_type        VARCHAR(64)  NOT NULL,
    status              VARCHAR(16)  NOT NULL DEFAULT 'online',
    weight              BIGINT       NOT NULL DEFAULT 1,
    max_connections     BIGINT       NOT NULL DEFAULT 100,
    current_connections BIGINT       NOT NULL DEFAULT 0,
    cpu_usage           DOUBLE       NULL,
    memory_usage        DOUBLE       NULL,
    total_requests      BIGINT       NOT NULL DEFAULT 0,
    total_failures      BIGINT       NOT NULL DEFAULT 0,
    avg_response_ms     DOUBLE       NOT NULL DEFAULT 0,
    last_heartbeat      BIGINT       NOT NULL,
    created_at          BIGINT       NOT NULL,
    updated_at          BIGINT       NOT NULL,
    UNIQUE KEY uq_worker_nodes_endpoint (host, port),
    KEY ix_worker_nodes_service (service_type, status),
    KEY ix_worker_nodes_heartbeat (status, last_heartbeat)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Per-interval counters, filled by the dispatch path.
CREATE TABLE IF NOT EXISTS worker_stats (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    worker_id       BIGINT NOT NULL,
    interval_start  BIGINT NOT NULL,
    requests        BIGINT NOT NULL DEFAULT 0,
    successes       BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0,
    avg_response_ms DOUBLE NOT NULL DEFAULT 0,
    UNIQUE KEY uq_worker_stats_interval (worker_id, interval_start),
    CONSTRAINT fk_worker_stats_worker FOREIGN KEY (worker_id)
        REFERENCES worker_nodes (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
