-- Concord server store, PostgreSQL schema 2: users' identities (the embedded store's
-- format 6). Each user's display name and email as last learned from a token, and when
-- (milliseconds since the epoch): a server loads the newest of a domain within its limits.

CREATE TABLE identities (
    domain text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    display_name text,
    email text,
    seen bigint NOT NULL,
    PRIMARY KEY (domain, user_id)
);
CREATE INDEX identities_by_seen ON identities (domain, seen, user_id);
