-- The fleet's history for the dashboard's charts: one compact row per
-- minute, written by the leader (the overview's counts, agent versions
-- bounded to the 20 most common and `other`), pruned past the retention
-- (`--fleet-history-days`). 30 days are 43,200 rows.
CREATE TABLE fleet_samples (
    sampled_at timestamptz PRIMARY KEY CHECK (sampled_at = date_trunc('minute', sampled_at)),
    devices integer NOT NULL CHECK (devices >= 0),
    online integer NOT NULL CHECK (online >= 0),
    stale integer NOT NULL CHECK (stale >= 0),
    failing integer NOT NULL CHECK (failing >= 0),
    never_reported integer NOT NULL CHECK (never_reported >= 0),
    -- [{"value": "0.4.1", "count": 1200}, ...], most common first.
    by_agent_version jsonb NOT NULL DEFAULT '[]'
);
