-- Operator roles and the append-only audit log.

ALTER TABLE operator_tokens
    ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'operator', 'viewer')),
    ADD COLUMN created_by text;

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- Who: an operator token (id and name at the time), or `cli:<user>`.
    actor_id    uuid,
    actor       text NOT NULL,
    -- What: `POST /api/v1/devices`, `token.create`, ...
    action      text NOT NULL,
    -- The object acted on (an id), when there is one.
    target      text,
    -- HTTP status of the call (403 for refused attempts).
    status      integer NOT NULL,
    -- A summary of the change: the request body, truncated, secrets left out.
    summary     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC, id DESC);

-- Append-only: rows are never changed or removed, whoever asks.
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
