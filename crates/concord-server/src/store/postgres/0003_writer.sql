-- Concord server store, PostgreSQL schema 3: the writer's epoch. A server raises it when it
-- starts, and every transaction that writes reads it `FOR SHARE` first and writes only if it
-- is still the epoch the server started with. So a transaction of a server that is gone
-- (killed with its COMMIT already sent) either finishes before the next server starts
-- serving, or writes nothing.

CREATE TABLE concord_writer (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL
);
INSERT INTO concord_writer (id, epoch) VALUES (1, 0);
