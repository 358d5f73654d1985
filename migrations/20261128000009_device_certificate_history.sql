-- Every client certificate the CA issues to a device, so that the device
-- API admits only the device's current certificate, and, after a renewal,
-- the certificate that renewed until the new one is first used (the answer
-- may have been lost on the way). Enrolling with a new token revokes every
-- earlier certificate of the device at once: a replaced router is refused
-- from its next request, not when its certificate expires.
--
-- Devices enrolled before this table have no rows here: any certificate of
-- the controller CA naming such a device is still accepted, until the
-- device's next certificate (its renewal, at two thirds of the lifetime, or
-- an enrollment with a new token) pins it. Certificates live 30 days by
-- default, so that window closes by itself.
CREATE TABLE device_certificates (
    id              bigserial PRIMARY KEY,
    device_id       uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- SHA-256 of the certificate's DER: what the TLS handshake presents.
    fingerprint     bytea NOT NULL UNIQUE CHECK (octet_length(fingerprint) = 32),
    -- `enrollment` and `renewal`: issued by this controller, with their
    -- serial and expiry. `unrecorded`: a certificate of an older controller
    -- found renewing, kept so it stays usable until its successor is used.
    issued_by       text NOT NULL CHECK (issued_by IN ('enrollment', 'renewal', 'unrecorded')),
    serial          text,
    not_after       timestamptz,
    issued_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    -- `re-enrolled`: the device enrolled again with a new token;
    -- `renewed-over`: another renewal was issued before this certificate
    -- was ever used; `superseded`: its successor was used.
    revoked_reason  text CHECK (revoked_reason IN ('re-enrolled', 'renewed-over', 'superseded')),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL)),
    CHECK (issued_by = 'unrecorded' OR (serial IS NOT NULL AND not_after IS NOT NULL))
);
CREATE INDEX device_certificates_device_idx ON device_certificates (device_id, id);

-- Bumped in every transaction that changes which certificates a device may
-- use (the update also locks the device's row, serialising those changes):
-- a replica's in-memory copy is replaced only by a newer generation.
ALTER TABLE devices ADD COLUMN cert_generation bigint NOT NULL DEFAULT 0;
