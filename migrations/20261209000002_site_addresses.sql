-- Pay-per-site gating before any LAN lookup (issue 21): the addresses the
-- controller itself resolved for each catalog site's names, on a schedule.
-- Compiled into the routers' site sets, so a router gates them from boot.
-- An address stays while it was seen within the keep window
-- (`--site-address-keep-secs`): a CDN that rotates through a pool does
-- not make every router's config change at every resolution.
CREATE TABLE site_addresses (
    site_id bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    address inet NOT NULL CHECK (masklen(address) = CASE family(address) WHEN 4 THEN 32 ELSE 128 END),
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (site_id, address)
);
