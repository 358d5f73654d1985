-- Pay-per-site: households (customers) owning routers, a catalog of sites
-- sold as timed passes, and the passes bought. Expand-only: one new column
-- on devices (nullable), three new tables.

CREATE TABLE customers (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    -- The billing system's id of the customer, for its webhooks.
    external_ref text UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A router belongs to at most one household; a household owns any number.
ALTER TABLE devices
    ADD COLUMN customer_id uuid REFERENCES customers (id) ON DELETE SET NULL;
CREATE INDEX devices_customer_idx ON devices (customer_id) WHERE customer_id IS NOT NULL;

CREATE TABLE sites (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- A named catalog (e.g. `main`); domains never overlap within one.
    catalog     text NOT NULL,
    name        text NOT NULL,
    -- isdf_api::DomainPattern, as written.
    domains     text[] NOT NULL CHECK (cardinality(domains) BETWEEN 1 AND 100),
    -- ISO 4217 code; prices are in its minor units.
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- [{"duration_secs": 3600, "price": 199}, ...]
    passes      jsonb NOT NULL CHECK (jsonb_typeof(passes) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (catalog, name)
);

-- Passes bought. A household's passes for one site are contiguous: a new one
-- starts when the last one ends, and cancelling one moves the later ones
-- forward. Deleting a customer or a site (refused while passes are in
-- force) removes its history here; the audit log keeps the calls.
CREATE TABLE purchases (
    id           uuid PRIMARY KEY,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    site_id      bigint NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    -- What was paid, in minor units of `currency`.
    price        bigint NOT NULL CHECK (price > 0),
    currency     text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    source       text NOT NULL CHECK (source IN ('operator', 'webhook', 'portal')),
    -- The payment's id at the billing system or payment provider: a payment
    -- is recorded once, whoever reports it and however often.
    payment_id   text UNIQUE,
    -- Set when the pass was cancelled (refunded): it ends then.
    cancelled_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
-- Active purchases of these customers (and the end of a household's passes for a site).
CREATE INDEX purchases_active_idx ON purchases (customer_id, site_id, ends_at)
    WHERE cancelled_at IS NULL;
CREATE INDEX purchases_site_idx ON purchases (site_id);
CREATE INDEX purchases_created_idx ON purchases (created_at DESC, id DESC);
