-- Distributed VPN: site-to-site WireGuard among one customer's routers.
-- Expand-only: four new tables.

CREATE TABLE vpns (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    name         text NOT NULL,
    -- auto: mesh among the sites inbound UDP reaches, the others through a
    -- reachable hub, an ISP relay when none is reachable; mesh; hub.
    topology     text NOT NULL CHECK (topology IN ('auto', 'mesh', 'hub')),
    -- Set exactly when topology = 'hub'; must be a member (checked by the
    -- writer under the VPN's row lock; a member that is the hub cannot leave).
    hub_device_id uuid REFERENCES devices (id) ON DELETE RESTRICT,
    -- Tunnel addresses are handed out from here (IPv4): members get the
    -- lowest free one above the network address; the highest usable one is
    -- kept for a relay.
    address_pool cidr NOT NULL CHECK (family(address_pool) = 4 AND masklen(address_pool) BETWEEN 8 AND 30),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, name),
    CHECK ((topology = 'hub') = (hub_device_id IS NOT NULL))
);

-- A router is in at most one VPN; its tunnel address is unique in its VPN
-- and kept until it leaves (stable across restarts and recompiles).
CREATE TABLE vpn_members (
    vpn_id         uuid NOT NULL REFERENCES vpns (id) ON DELETE CASCADE,
    device_id      uuid NOT NULL UNIQUE REFERENCES devices (id) ON DELETE RESTRICT,
    tunnel_address inet NOT NULL CHECK (family(tunnel_address) = 4 AND masklen(tunnel_address) = 32),
    -- LAN prefixes the site exports; never overlapping another member's.
    prefixes       cidr[] NOT NULL CHECK (cardinality(prefixes) BETWEEN 1 AND 256),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vpn_id, device_id),
    UNIQUE (vpn_id, tunnel_address)
);

-- What each router reports of its WireGuard side (isdf_api::WireguardFacts),
-- and the controller's key decisions for it.
CREATE TABLE wireguard_facts (
    device_id          uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    -- The key its tunnels use now, as reported.
    public_key         text NOT NULL,
    -- A key made for a rotation, reported and not used yet.
    next_public_key    text,
    key_generation     integer NOT NULL,
    listen_port        integer NOT NULL CHECK (listen_port BETWEEN 1 AND 65535),
    wan_addresses      inet[] NOT NULL DEFAULT '{}',
    -- Where a controller probe reached it (inbound UDP works there); NULL:
    -- behind NAT or filtered.
    reachable_address  inet,
    -- The generation the operator asked for (rotation when above key_generation).
    requested_generation integer NOT NULL DEFAULT 1,
    -- The key the router is told to use (what its peers know it by).
    active_public_key  text NOT NULL,
    -- During a rotation: its other key, which peers also accept.
    alternate_public_key text,
    -- Rotation stage: NULL (none), 'announced' (peers learn the next key),
    -- 'switching' (the router is told to use it; peers still accept the old).
    rotation_stage     text CHECK (rotation_stage IN ('announced', 'switching')),
    -- While announced: {device id: config version} the peers must enforce
    -- before the router switches.
    rotation_waits_for jsonb,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- Status reports look up the rotations waiting on the reporting router.
CREATE INDEX wireguard_facts_rotating_idx ON wireguard_facts (device_id)
    WHERE rotation_stage IS NOT NULL;

-- Routers the ISP runs as relays (enrolled like any router), and which VPN
-- each relays on which port.
CREATE TABLE vpn_relays (
    device_id  uuid PRIMARY KEY REFERENCES devices (id) ON DELETE RESTRICT,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vpn_relay_slots (
    vpn_id          uuid PRIMARY KEY REFERENCES vpns (id) ON DELETE CASCADE,
    relay_device_id uuid NOT NULL REFERENCES vpn_relays (device_id) ON DELETE CASCADE,
    -- 1.. : the relay's tunnel for this VPN listens on its listen_port + slot.
    -- Its tunnel address is the pool's highest usable one, which members
    -- are never given.
    slot            integer NOT NULL CHECK (slot BETWEEN 1 AND 1000),
    UNIQUE (relay_device_id, slot)
);
