-- Staged rollouts: one assignment change (a new revision, or a new
-- assignment) reaches its routers wave by wave. Expand-only: four tables.

CREATE TABLE rollouts (
    id             uuid PRIMARY KEY,
    -- The assignment staged. While the rollout is active the assignment row
    -- already holds `to_revision`; routers not yet released compile
    -- `from_revision` (NULL: the assignment is new, they compile without it).
    -- No foreign key: aborting a new assignment deletes it, the history stays.
    assignment_id  uuid NOT NULL,
    service_id     uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    selector       text NOT NULL,
    from_revision  integer,
    to_revision    integer NOT NULL,
    state          text NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'aborted')),
    pause_reason   text,
    -- Index of the newest released wave.
    current_wave   integer NOT NULL DEFAULT 0 CHECK (current_wave >= 0),
    -- min_applied_share, max_failed_share, soak_secs, offline_timeout_secs.
    policy         jsonb NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    CHECK ((state IN ('completed', 'aborted')) = (finished_at IS NOT NULL)),
    CHECK (from_revision IS DISTINCT FROM to_revision)
);
-- One active rollout per assignment; writers rely on this index to refuse a second.
CREATE UNIQUE INDEX rollouts_one_active_per_assignment
    ON rollouts (assignment_id) WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_newest_first ON rollouts (created_at DESC, id DESC);

CREATE TABLE rollout_waves (
    rollout_id     uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    wave           integer NOT NULL CHECK (wave >= 0),
    label          text NOT NULL,
    released_at    timestamptz,
    -- Since when the wave's pass condition has held (NULL: it does not now).
    healthy_since  timestamptz,
    passed_at      timestamptz,
    -- Failures an operator accepted by resuming after a breach.
    accepted_failures integer NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, wave)
);

-- Every router the change affects, with its wave and progress:
-- waiting (wave not released) -> pending -> applied | failed | offline
-- (offline -> applied | failed when it comes back).
CREATE TABLE rollout_devices (
    rollout_id     uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id      uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    wave           integer NOT NULL,
    state          text NOT NULL DEFAULT 'waiting'
                   CHECK (state IN ('waiting', 'pending', 'applied', 'failed', 'offline')),
    -- The first config version carrying the change for this router (set
    -- once its wave is released and it was recompiled).
    target_version bigint,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_by_wave ON rollout_devices (rollout_id, wave, state);
CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id);

-- History: what happened, who did it (`controller` for automatic steps).
CREATE TABLE rollout_events (
    id          bigserial PRIMARY KEY,
    rollout_id  uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL,
    wave        integer,
    actor       text NOT NULL,
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);

-- Progress over time, one row per released wave whose counts changed.
CREATE TABLE rollout_samples (
    id          bigserial PRIMARY KEY,
    rollout_id  uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    wave        integer NOT NULL,
    pending     integer NOT NULL,
    applied     integer NOT NULL,
    failed      integer NOT NULL,
    offline     integer NOT NULL
);
CREATE INDEX rollout_samples_by_rollout ON rollout_samples (rollout_id, id);
