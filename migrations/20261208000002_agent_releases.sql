-- Agent releases (issue 20): one build of the agent for one target. The
-- manifest (version, target, SHA-256, size) is the envelope a release key
-- signed, stored as uploaded; the binary follows in a second call and is
-- stored only once its size and digest match the manifest. Stored out of
-- line and uncompressed (STORAGE EXTERNAL), so a range of it is read
-- without reading the rest: routers resume a cut download.
CREATE TABLE agent_releases (
    id uuid PRIMARY KEY,
    version text NOT NULL,
    target text NOT NULL,
    sha256 text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL CHECK (size > 0),
    manifest jsonb NOT NULL,
    content bytea CHECK (content IS NULL OR octet_length(content) = size),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    uploaded_at timestamptz,
    UNIQUE (version, target)
);
ALTER TABLE agent_releases ALTER COLUMN content SET STORAGE EXTERNAL;
