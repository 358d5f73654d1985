-- Timed flow blocks on one router, and the events routers report on their
-- own (blocks from their local socket and their classifier).

CREATE TABLE flow_blocks (
    id          uuid PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- operator: from the API, compiled into the router's signed config;
    -- local / detection: decided on the router and reported as events.
    origin      text NOT NULL CHECK (origin IN ('operator', 'local', 'detection')),
    -- The router's own id for router-side blocks.
    router_block_id bigint,
    -- One flow pattern as on the wire (isdf_api::FlowPattern).
    flow        jsonb NOT NULL,
    action      text NOT NULL CHECK (action IN ('drop', 'reject')),
    reason      text NOT NULL DEFAULT '',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    removed_at  timestamptz,
    CHECK ((origin = 'operator') = (router_block_id IS NULL))
);
CREATE INDEX flow_blocks_active_idx ON flow_blocks (device_id, expires_at) WHERE removed_at IS NULL;
CREATE UNIQUE INDEX flow_blocks_router_id_idx ON flow_blocks (device_id, router_block_id)
    WHERE router_block_id IS NOT NULL;

CREATE TABLE device_events (
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    -- The router's sequence number: a resent event is stored once.
    sequence    bigint NOT NULL,
    kind        text NOT NULL,
    origin      text NOT NULL,
    at          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    details     jsonb NOT NULL,
    PRIMARY KEY (device_id, sequence)
);
CREATE INDEX device_events_recent_idx ON device_events (device_id, received_at DESC, sequence DESC);

-- Running totals per router, kept when old events are trimmed.
CREATE TABLE device_event_totals (
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    origin      text NOT NULL,
    reason      text NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (device_id, kind, origin, reason)
);
