-- Concord server store, PostgreSQL schema 4: several server nodes on one database
-- (docs/cluster.md). Each server process that runs as a cluster node registers once per
-- start; a model is sequenced by the node holding its lease, under a fencing epoch that
-- grows by one at every grant, so that an append checks it is still the model's writer.

CREATE TABLE concord_nodes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What the operator named the node, and where clients reach it.
    name text NOT NULL,
    url text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    -- Renewed with the node's leases; a node silent for longer than its lease time is gone.
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the node shut down gracefully.
    stopped_at timestamptz
);

-- One row per model ever leased: the epoch only grows, also across releases.
CREATE TABLE concord_leases (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    node bigint NOT NULL,
    epoch bigint NOT NULL,
    -- By the database's clock; '-infinity' once released.
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (domain, model)
);
CREATE INDEX concord_leases_by_node ON concord_leases (node);
