-- Credentials: settings (which hold the secrets) are stored encrypted as one blob.
CREATE TABLE credentials (
    tenant          TEXT NOT NULL,
    id              TEXT NOT NULL,
    provider        TEXT NOT NULL,
    settings_sealed BLOB NOT NULL,
    settings_digest TEXT NOT NULL,
    status          TEXT NOT NULL,
    last_error      TEXT,
    source          TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The current refresh token per credential (rotated ones replace it), encrypted.
CREATE TABLE refresh_tokens (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    sealed        BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, credential_id)
);

-- The last access token per cache key, encrypted, so a restart reuses valid tokens.
CREATE TABLE tokens (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    scope_key     TEXT NOT NULL,
    access_sealed BLOB NOT NULL,
    token_type    TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    issued_at_ms  INTEGER NOT NULL,
    scopes        TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    PRIMARY KEY (tenant, credential_id, scope_key)
);

CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT NOT NULL,
    credential_id  TEXT NOT NULL,
    kind           TEXT NOT NULL,
    occurred_at_ms INTEGER NOT NULL,
    caller         TEXT,
    message        TEXT NOT NULL,
    http           TEXT
);

CREATE INDEX events_by_tenant_time ON events (tenant, occurred_at_ms DESC, id DESC);
CREATE INDEX events_by_credential_time ON events (tenant, credential_id, occurred_at_ms DESC, id DESC);
CREATE INDEX events_by_time ON events (occurred_at_ms);
