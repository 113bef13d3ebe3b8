-- The gateway (MySQL / MariaDB): API keys, the usage log, and the queue
-- length workers report in their heartbeats. Times are Unix epoch
-- milliseconds, costs integer minor units (never floating point).
-- The migrator holds GET_LOCK, so ten instances starting at once apply this
-- exactly once.
ALTER TABLE worker_nodes ADD COLUMN queue_length BIGINT NULL;

-- Only the SHA-256 digest of a key is stored; `prefix` is its first
-- characters, shown to tell keys apart.
CREATE TABLE IF NOT EXISTS api_keys (
    id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name         VARCHAR(64)  NOT NULL,
    prefix       VARCHAR(16)  NOT NULL,
    key_hash     CHAR(64)     NOT NULL,
    created_at   BIGINT       NOT NULL,
    last_used_at BIGINT       NULL,
    revoked_at   BIGINT       NULL,
    UNIQUE KEY uq_api_keys_name (name),
    UNIQUE KEY uq_api_keys_hash (key_hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per dispatched request. `row_key` is random per row and makes a
-- retried batch insert idempotent (INSERT IGNORE); `request_id` is the
-- X-Request-Id the client saw, which a client may choose and reuse.
CREATE TABLE IF NOT EXISTS usage_log (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    row_key        CHAR(32)     NOT NULL,
    request_id     VARCHAR(128) NOT NULL,
    key_id         BIGINT       NOT NULL,
    service_type   VARCHAR(64)  NOT NULL,
    worker_id      BIGINT       NULL,
    status         INT          NOT NULL,
    request_bytes  BIGINT       NOT NULL,
    response_bytes BIGINT       NOT NULL,
    started_at     BIGINT       NOT NULL,
    ended_at       BIGINT       NOT NULL,
    duration_ms    BIGINT       NOT NULL,
    cost           BIGINT       NOT NULL,
    instance       VARCHAR(128) NOT NULL,
    UNIQUE KEY uq_usage_log_row (row_key),
    KEY ix_usage_log_key_time (key_id, started_at),
    KEY ix_usage_log_request (request_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
