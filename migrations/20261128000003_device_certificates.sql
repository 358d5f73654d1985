-- Devices authenticate with client certificates from the controller CA,
-- obtained with single-use enrollment tokens. Device tokens are no longer
-- issued (expand: the column becomes optional; a later migration drops it).

ALTER TABLE devices ALTER COLUMN token_hash DROP NOT NULL;
ALTER TABLE devices
    ADD COLUMN cert_serial text,
    ADD COLUMN cert_not_after timestamptz;

CREATE TABLE enrollment_tokens (
    id          uuid PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    -- Bound to a pre-registered device, or NULL: enrolling creates a device.
    device_id   uuid REFERENCES devices (id) ON DELETE CASCADE,
    -- For tokens without a device: the new device's labels and name prefix.
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    name_prefix text NOT NULL DEFAULT 'router',
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     uuid,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
