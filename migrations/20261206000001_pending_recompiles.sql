-- Routers whose config a change made stale, to be recompiled within a
-- moment rather than in the change's own transaction (the peers of a
-- router joining a VPN): a burst of changes then compiles each once.
-- Written in the change's transaction, taken under the recompile lock, so
-- nothing is lost to a crash (a start recompiles everything anyway).
CREATE TABLE pending_recompiles (
    device_id uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    since timestamptz NOT NULL DEFAULT now()
);
