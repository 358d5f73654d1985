-- What the fleet overview, the device list and the rollout loop read of
-- every router's last report, as columns: at 100,000 routers reading them
-- out of each (often TOASTed) report was most of the overview's time.
-- Text only: generated from the stored report, so they can never refuse a
-- report the report column itself accepts.
ALTER TABLE device_status
    ADD COLUMN outcome text GENERATED ALWAYS AS (report ->> 'outcome') STORED,
    ADD COLUMN agent_version text GENERATED ALWAYS AS (report ->> 'agent_version') STORED;
