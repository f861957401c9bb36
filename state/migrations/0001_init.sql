-- The first schema of the SQLite state store. Released: never edit; add a new migration instead.
-- Records are JSON documents (the same shapes as the S3 state document, see state/README.md).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE resources (
    id     TEXT PRIMARY KEY,   -- kind/name
    record TEXT NOT NULL
) STRICT;

CREATE TABLE intents (
    id     TEXT PRIMARY KEY,
    record TEXT NOT NULL
) STRICT;

CREATE TABLE runs (
    name   TEXT PRIMARY KEY,
    record TEXT NOT NULL
) STRICT;

CREATE TABLE tags (
    name   TEXT PRIMARY KEY,
    record TEXT NOT NULL
) STRICT;

CREATE TABLE manifests (
    key    TEXT PRIMARY KEY,
    record TEXT NOT NULL
) STRICT;

-- Every committed serial: what the step was and its changes (a full snapshot for replacements).
CREATE TABLE history (
    serial       INTEGER PRIMARY KEY,
    committed_at TEXT NOT NULL,
    description  TEXT NOT NULL,
    step         TEXT NOT NULL
) STRICT;

-- At most one row: the holder of the lock.
CREATE TABLE lock (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    info TEXT NOT NULL
) STRICT;
