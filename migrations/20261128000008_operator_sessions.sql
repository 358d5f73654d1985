-- Dashboard sessions: a browser that logged in with an operator token holds
-- a random session id in an HttpOnly cookie. Only its SHA-256 is stored, so
-- this table leaks no usable session. A session dies with its token
-- (revoking the token ends it: authentication joins on revoked_at, and
-- deleting the token deletes its sessions) and after `expires_at`.
CREATE TABLE operator_sessions (
    id_hash     bytea PRIMARY KEY,
    token_id    uuid NOT NULL REFERENCES operator_tokens (id) ON DELETE CASCADE,
    -- Sent by the page in `X-CSRF-Token` on every cookie-authenticated
    -- change; not a credential on its own.
    csrf        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX operator_sessions_token_idx ON operator_sessions (token_id);
CREATE INDEX operator_sessions_expiry_idx ON operator_sessions (expires_at);

-- The dashboard's device states join each device to its latest report by
-- primary key; the fleet overview and the device filters read
-- `received_at` for the online window.
CREATE INDEX device_status_received_idx ON device_status (received_at);
