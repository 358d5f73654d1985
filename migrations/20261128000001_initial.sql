-- iSDF initial schema: devices, services with immutable revisions,
-- assignments, compiled signed configs, device status, operator tokens.

CREATE TABLE devices (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- SHA-256 of the per-device token (temporary, until client certificates).
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_labels_idx ON devices USING gin (labels jsonb_path_ops);

CREATE TABLE services (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    kind        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Revisions are immutable: rows are only ever inserted.
CREATE TABLE service_revisions (
    service_id  uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    revision    integer NOT NULL CHECK (revision > 0),
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, revision)
);

CREATE TABLE assignments (
    id          uuid PRIMARY KEY,
    service_id  uuid NOT NULL,
    revision    integer NOT NULL,
    selector    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (service_id, revision) REFERENCES service_revisions (service_id, revision) ON DELETE CASCADE
);
CREATE INDEX assignments_service_idx ON assignments (service_id);

-- The latest compiled and signed config of each device.
CREATE TABLE device_configs (
    device_id   uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    version     bigint NOT NULL CHECK (version > 0),
    digest      text NOT NULL,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- The exact envelope bytes served to the device.
    envelope    bytea NOT NULL
);

CREATE TABLE device_status (
    device_id    uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    sequence     bigint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    report       jsonb NOT NULL
);

-- Bounded history of reports (trimmed to the newest N per device on insert).
CREATE TABLE device_status_history (
    device_id    uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    sequence     bigint NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    report       jsonb NOT NULL,
    PRIMARY KEY (device_id, sequence)
);

CREATE TABLE operator_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
