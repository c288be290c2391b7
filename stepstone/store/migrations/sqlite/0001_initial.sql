-- stepstone schema, version 1 (SQLite). Times are epoch seconds (REAL).

CREATE TABLE workflows (
    name          TEXT PRIMARY KEY,
    registered_at REAL NOT NULL,
    seen_at       REAL NOT NULL
);

CREATE TABLE instances (
    pk            INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow      TEXT NOT NULL,
    id            TEXT NOT NULL,
    status        TEXT NOT NULL,
    params        TEXT NOT NULL,
    output        TEXT,
    error         TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    started_at    REAL,
    ended_at      REAL,
    wake_at       REAL,
    paused_status TEXT,
    lease_owner   TEXT,
    lease_expires REAL,
    lease_token   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (workflow, id)
);
CREATE INDEX instances_by_workflow ON instances (workflow, pk);
CREATE INDEX instances_by_status ON instances (workflow, status, pk);
-- The worker's queues, one range per workflow: due timers and leases (to spot expiry);
-- queued instances are found through instances_by_status.
CREATE INDEX instances_due ON instances (workflow, wake_at) WHERE status = 'waiting';
CREATE INDEX instances_leased ON instances (workflow, lease_expires) WHERE status IN ('running', 'waitingForPause');
CREATE INDEX instances_ended ON instances (workflow, status, ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX instances_owner ON instances (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE steps (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_pk   INTEGER NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    count         INTEGER NOT NULL,
    status        TEXT NOT NULL,
    result        TEXT,
    error_type    TEXT,
    error_message TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        REAL,
    started_at    REAL NOT NULL,
    ended_at      REAL,
    UNIQUE (instance_pk, kind, name, count)
);

CREATE TABLE attempts (
    step_seq      INTEGER NOT NULL REFERENCES steps (seq) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    ended_at      REAL NOT NULL,
    outcome       TEXT NOT NULL,
    error_type    TEXT,
    error_message TEXT,
    PRIMARY KEY (step_seq, attempt)
);

CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_pk   INTEGER NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    type          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    sent_at       REAL NOT NULL,
    consumed_by   INTEGER REFERENCES steps (seq) ON DELETE CASCADE
);
CREATE INDEX events_pending ON events (instance_pk, type, seq) WHERE consumed_by IS NULL;
CREATE INDEX events_consumed ON events (consumed_by) WHERE consumed_by IS NOT NULL;

CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at REAL NOT NULL,
    seen_at    REAL NOT NULL
);
