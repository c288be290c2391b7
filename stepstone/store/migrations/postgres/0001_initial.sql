-- stepstone schema, version 1 (PostgreSQL). Times are epoch seconds (double precision).
-- Applied with search_path set to the store's schema: names here are unqualified.
-- JSON columns are text: the store passes JSON text in and out untouched.

CREATE TABLE workflows (
    name          text PRIMARY KEY,
    registered_at double precision NOT NULL,
    seen_at       double precision NOT NULL
);

CREATE TABLE instances (
    pk            bigserial PRIMARY KEY,
    workflow      text NOT NULL,
    id            text NOT NULL,
    status        text NOT NULL,
    params        text NOT NULL,
    output        text,
    error         text,
    created_at    double precision NOT NULL,
    updated_at    double precision NOT NULL,
    started_at    double precision,
    ended_at      double precision,
    wake_at       double precision,
    paused_status text,
    lease_owner   text,
    lease_expires double precision,
    lease_token   bigint NOT NULL DEFAULT 0,
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
    seq           bigserial PRIMARY KEY,
    instance_pk   bigint NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    kind          text NOT NULL,
    name          text NOT NULL,
    count         integer NOT NULL,
    status        text NOT NULL,
    result        text,
    error_type    text,
    error_message text,
    attempts      integer NOT NULL DEFAULT 0,
    due_at        double precision,
    started_at    double precision NOT NULL,
    ended_at      double precision,
    UNIQUE (instance_pk, kind, name, count)
);

CREATE TABLE attempts (
    step_seq      bigint NOT NULL REFERENCES steps (seq) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    started_at    double precision NOT NULL,
    ended_at      double precision NOT NULL,
    outcome       text NOT NULL,
    error_type    text,
    error_message text,
    PRIMARY KEY (step_seq, attempt)
);

CREATE TABLE events (
    seq           bigserial PRIMARY KEY,
    instance_pk   bigint NOT NULL REFERENCES instances (pk) ON DELETE CASCADE,
    type          text NOT NULL,
    payload       text NOT NULL,
    sent_at       double precision NOT NULL,
    consumed_by   bigint REFERENCES steps (seq) ON DELETE CASCADE
);
CREATE INDEX events_pending ON events (instance_pk, type, seq) WHERE consumed_by IS NULL;
CREATE INDEX events_consumed ON events (consumed_by) WHERE consumed_by IS NOT NULL;

CREATE TABLE workers (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at double precision NOT NULL,
    seen_at    double precision NOT NULL
);
