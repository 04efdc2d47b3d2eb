-- The PostgreSQL schema: the same tables as the SQLite one (migrations/sqlite), so both
-- backends store exactly the same things; times are Unix milliseconds.

-- Credentials: settings (which hold the secrets) are stored encrypted as one blob.
CREATE TABLE credentials (
    tenant          TEXT NOT NULL,
    id              TEXT NOT NULL,
    provider        TEXT NOT NULL,
    settings_sealed BYTEA NOT NULL,
    settings_digest TEXT NOT NULL,
    status          TEXT NOT NULL,
    last_error      TEXT,
    source          TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The current refresh token per credential (rotated ones replace it), encrypted.
CREATE TABLE refresh_tokens (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    sealed        BYTEA NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, credential_id)
);

-- The last access token per cache key, encrypted: replicas reuse each other's tokens.
CREATE TABLE tokens (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    scope_key     TEXT NOT NULL,
    access_sealed BYTEA NOT NULL,
    token_type    TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    issued_at_ms  BIGINT NOT NULL,
    scopes        TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    PRIMARY KEY (tenant, credential_id, scope_key)
);

CREATE TABLE events (
    id             BIGSERIAL PRIMARY KEY,
    tenant         TEXT NOT NULL,
    credential_id  TEXT NOT NULL,
    kind           TEXT NOT NULL,
    occurred_at_ms BIGINT NOT NULL,
    caller         TEXT,
    message        TEXT NOT NULL,
    http           TEXT
);

CREATE INDEX events_by_tenant_time ON events (tenant, occurred_at_ms DESC, id DESC);
CREATE INDEX events_by_credential_time ON events (tenant, credential_id, occurred_at_ms DESC, id DESC);
CREATE INDEX events_by_time ON events (occurred_at_ms);

-- One refresh lease per credential: who may call the provider for it right now, until when
-- (in the database server's clock), and the fencing number of that grant. Rows are never
-- deleted, so fences only grow.
CREATE TABLE refresh_leases (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    holder        TEXT NOT NULL,
    fence         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, credential_id)
);
