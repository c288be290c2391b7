-- stepstone schema, version 2 (SQLite): an instance's steps are stored together.
--
-- A step record is the write on the hot path: one commit per step. Version 1 kept
-- steps in one table numbered across all instances (AUTOINCREMENT), with a unique
-- index on the step key, and touched the instance's updated_at, so that each step
-- record changed four pages: the table, the index, sqlite_sequence and the instance.
-- Now `steps` is clustered by (instance_pk, seq), seq numbering an instance's steps in
-- the order they were first recorded (the run that records a step gives its seq; the
-- step key stays unique because a run gives each key one seq), and a new step record
-- leaves the instance's row alone: the instance's last update is the later of its
-- updated_at and its newest step's recorded_at (a write that changes an older step
-- touches updated_at). So a step record changes one page, as a bare INSERT does.
-- Attempts and events refer to a step by (instance_pk, seq).
--
-- Each old seq is kept as is: it is unique, and in order within each instance. The old
-- tables are renamed (SQLite rewrites the references to them), copied and dropped,
-- children first, so that no ON DELETE CASCADE fires on the copies.

DROP INDEX events_pending;
DROP INDEX events_consumed;
ALTER TABLE events RENAME TO events_v1;
ALTER TABLE attempts RENAME TO attempts_v1;
ALTER TABLE steps RENAME TO steps_v1;

CREATE TABLE steps (
    instance_pk   INTEGER NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
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
    recorded_at   REAL NOT NULL,
    PRIMARY KEY (instance_pk, seq)
) WITHOUT ROWID;

CREATE TABLE attempts (
    instance_pk   INTEGER NOT NULL,
    step_seq      INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    ended_at      REAL NOT NULL,
    outcome       TEXT NOT NULL,
    error_type    TEXT,
    error_message TEXT,
    PRIMARY KEY (instance_pk, step_seq, attempt),
    FOREIGN KEY (instance_pk, step_seq) REFERENCES steps (instance_pk, seq) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_pk   INTEGER NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    type          TEXT NOT NULL,
    payload       TEXT NOT NULL,
    sent_at       REAL NOT NULL,
    consumed_by   INTEGER,
    FOREIGN KEY (instance_pk, consumed_by) REFERENCES steps (instance_pk, seq) ON DELETE CASCADE
);

INSERT INTO steps (instance_pk, seq, kind, name, count, status, result, error_type, error_message, attempts,
    due_at, started_at, ended_at, recorded_at)
SELECT instance_pk, seq, kind, name, count, status, result, error_type, error_message, attempts,
    due_at, started_at, ended_at, coalesce(ended_at, started_at)
FROM steps_v1;

INSERT INTO attempts (instance_pk, step_seq, attempt, started_at, ended_at, outcome, error_type, error_message)
SELECT s.instance_pk, a.step_seq, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message
FROM attempts_v1 a JOIN steps_v1 s ON s.seq = a.step_seq;

INSERT INTO events (seq, instance_pk, type, payload, sent_at, consumed_by)
SELECT seq, instance_pk, type, payload, sent_at, consumed_by FROM events_v1;

DROP TABLE events_v1;
DROP TABLE attempts_v1;
DROP TABLE steps_v1;

CREATE INDEX events_pending ON events (instance_pk, type, seq) WHERE consumed_by IS NULL;
-- (The key of the reference to steps: a step deleted finds the event it took.)
CREATE INDEX events_consumed ON events (instance_pk, consumed_by);
