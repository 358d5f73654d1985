-- Agent releases delivered in configs (issue 20). Each stored config says
-- which agent version it asks its router to run, or which version it
-- wanted but could not deliver (no build for the router's target), so the
-- API and the dashboard show both without opening envelopes. A rollout's
-- router that was given a release counts as applied only once it reports
-- running that version.
ALTER TABLE device_configs
    ADD COLUMN agent_release_version text,
    ADD COLUMN agent_release_missing text;
ALTER TABLE rollout_devices ADD COLUMN target_agent_version text;
-- The fleet overview counts the routers missing a wanted build: few rows.
CREATE INDEX device_configs_release_missing_idx ON device_configs (agent_release_missing)
    WHERE agent_release_missing IS NOT NULL;
