-- truc's key-value store (the Store trait) on PostgreSQL: one row per key of a
-- space, ordered byte-wise like sled. Keys and values are opaque bytes (records
-- carry their own version and CRC-32). Attachments never go here.
CREATE TABLE truc_kv (
    space smallint NOT NULL,
    key bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (space, key)
);

-- One row that `flush` updates with a synchronous commit: its WAL flush covers
-- every asynchronous commit before it.
CREATE TABLE truc_flush (
    id integer PRIMARY KEY,
    n bigint NOT NULL
);
INSERT INTO truc_flush (id, n) VALUES (1, 0);
