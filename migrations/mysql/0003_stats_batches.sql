-- Makes the per-second aggregate writes idempotent: each batch of one
-- worker's increments carries a random token, inserted in the same
-- transaction as the increments. A retry of a batch whose commit did
-- happen (its acknowledgement lost, or the client's timeout fired first)
-- finds its token and adds nothing. Tokens older than a day are pruned.
CREATE TABLE IF NOT EXISTS stats_batches (
    token      CHAR(32) NOT NULL PRIMARY KEY,
    applied_at BIGINT   NOT NULL,
    KEY ix_stats_batches_applied (applied_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
