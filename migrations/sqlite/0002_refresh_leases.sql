-- One refresh lease per credential: who may call the provider for it right now, until when,
-- and the fencing number of that grant. Rows are never deleted, so fences only grow (a
-- credential deleted and created again cannot hand out a fence a stale holder still has).
CREATE TABLE refresh_leases (
    tenant        TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    holder        TEXT NOT NULL,
    fence         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, credential_id)
);
