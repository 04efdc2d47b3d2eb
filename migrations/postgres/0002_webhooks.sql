-- Webhooks: per tenant, from the config file or the API. The signing secret is sealed like
-- every other secret.
CREATE TABLE webhooks (
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    url           TEXT NOT NULL,
    secret_sealed BYTEA NOT NULL,
    source        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The notification types each webhook subscribes to (`*`: all of them): a notification is
-- fanned out to the subscribers with one INSERT ... SELECT in the change's transaction.
CREATE TABLE webhook_kinds (
    tenant     TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    PRIMARY KEY (tenant, webhook_id, kind)
);

-- The outbox: one row per (notification, webhook), written in the transaction of the change
-- it reports; delivered at least once by the replica that claims it.
CREATE TABLE webhook_outbox (
    id                 BIGSERIAL PRIMARY KEY,
    tenant             TEXT NOT NULL,
    webhook_id         TEXT NOT NULL,
    message_id         TEXT NOT NULL,
    kind               TEXT NOT NULL,
    credential_id      TEXT NOT NULL,
    payload            TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    state              TEXT NOT NULL,
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_by         TEXT,
    claim_until_ms     BIGINT NOT NULL,
    last_error         TEXT,
    finished_at_ms     BIGINT
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at_ms);
CREATE INDEX webhook_outbox_by_webhook ON webhook_outbox (tenant, webhook_id);
