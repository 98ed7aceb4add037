-- Concord server store, PostgreSQL schema 1. The same data as the embedded store's format 5;
-- values are postcard-encoded records (bytea), keys are columns. Text keys use the "C"
-- collation so that models sort by their bytes, as in the embedded store.

CREATE TABLE models (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (domain, model)
);

-- The latest snapshot of each model.
CREATE TABLE snapshots (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    snapshot bytea NOT NULL,
    PRIMARY KEY (domain, model)
);

-- The operation log. The primary key makes a second operation at one version impossible.
CREATE TABLE operations (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    operation bytea NOT NULL,
    -- The user whose replica submitted it, when known.
    user_id text,
    PRIMARY KEY (domain, model, version)
);

-- Each replica's last decided submission per model: its seq and what was decided.
CREATE TABLE last_decisions (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    replica bigint NOT NULL,
    seq bigint NOT NULL,
    decision bytea NOT NULL,
    PRIMARY KEY (domain, model, replica)
);

-- The model as created, then every snapshot: kept while the model exists.
CREATE TABLE checkpoints (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    snapshot bytea NOT NULL,
    PRIMARY KEY (domain, model, version)
);

CREATE TABLE deleted (
    domain text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    deleted_at bigint NOT NULL,
    PRIMARY KEY (domain, model)
);

CREATE TABLE collections (
    domain text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    config bytea NOT NULL,
    PRIMARY KEY (domain, collection)
);

CREATE TABLE users (
    domain text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (domain, user_id)
);

-- The user each replica id belongs to: written once, never replaced.
CREATE TABLE replica_owners (
    domain text COLLATE "C" NOT NULL,
    replica bigint NOT NULL,
    owner text NOT NULL,
    PRIMARY KEY (domain, replica)
);

-- Every model of each collection.
CREATE TABLE collection_models (
    domain text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    model text COLLATE "C" NOT NULL,
    PRIMARY KEY (domain, collection, model)
);

-- Index entries: `entry` is the model's index key at `path` followed by the model id, so
-- entries sort by value, then by model (bytea compares bytewise).
CREATE TABLE index_entries (
    domain text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    path text COLLATE "C" NOT NULL,
    entry bytea NOT NULL,
    model text COLLATE "C" NOT NULL,
    PRIMARY KEY (domain, collection, path, entry)
);
CREATE INDEX index_entries_by_model ON index_entries (domain, model);

-- The indexes built (declared in the server's configuration).
CREATE TABLE indexes (
    collection text COLLATE "C" NOT NULL,
    path text COLLATE "C" NOT NULL,
    PRIMARY KEY (collection, path)
);
