"""The PostgreSQL store's SQL, by name. `{s}` stands for the quoted schema, filled in by the store.

Parameters are psycopg's: `%s` by position, `%(name)s` by name.
"""

import functools

INSTANCE_COLUMNS = (
    "pk, workflow, id, status, params, output, error, created_at, updated_at, wake_at, paused_status, "
    "started_at, ended_at, lease_expires"
)
STEP_COLUMNS = (
    "s.seq, s.kind, s.name, s.count, s.status, s.result, s.error_type, s.error_message, s.attempts, s.due_at, "
    "s.started_at, s.ended_at, s.branch"
)

REGISTER_WORKFLOWS = """
INSERT INTO {s}.workflows (name, registered_at, seen_at)
SELECT name, %(now)s, %(now)s FROM unnest(%(names)s::text[]) AS name
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at
"""

# The first %(leased)s instances are created already leased to %(worker)s (Store.create_instances).
CREATE_INSTANCES = f"""
INSERT INTO {{s}}.instances (workflow, id, status, params, created_at, updated_at, started_at, lease_owner,
    lease_expires, lease_token)
SELECT %(workflow)s, item.id, CASE WHEN leased THEN 'running' ELSE 'queued' END, item.params, %(now)s, %(now)s,
    CASE WHEN leased THEN %(now)s END, CASE WHEN leased THEN %(worker)s END,
    CASE WHEN leased THEN %(lease_until)s::double precision END, CASE WHEN leased THEN %(token)s ELSE 0 END
FROM unnest(%(ids)s::text[], %(params)s::text[]) WITH ORDINALITY AS item (id, params, position),
    LATERAL (SELECT item.position <= %(leased)s AS leased) AS lease
ORDER BY item.position
RETURNING {INSTANCE_COLUMNS}
"""

# One instance, the common case: the same row as CREATE_INSTANCES makes, without the
# arrays to unpack (the server runs it in about 30 µs less).
CREATE_INSTANCE = f"""
INSERT INTO {{s}}.instances (workflow, id, status, params, created_at, updated_at, started_at, lease_owner,
    lease_expires, lease_token)
VALUES (%(workflow)s, %(id)s, %(status)s, %(params)s, %(now)s, %(now)s, %(started_at)s, %(worker)s,
    %(lease_until)s, %(token)s)
RETURNING {INSTANCE_COLUMNS}
"""

# Which of the ids given exist (after CREATE_INSTANCES failed on the unique key).
EXISTING_IDS = "SELECT id FROM {s}.instances WHERE workflow = %s AND id = ANY(%s)"

FIND_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM {{s}}.instances WHERE workflow = %s AND id = %s"

# Claims skip the row while this lock holds it: whoever takes it wakes the workers after
# if the instance was claimable (see PostgresStore._locking).
LOCK_INSTANCE = """
SELECT pk, status, paused_status, wake_at, lease_expires FROM {s}.instances WHERE workflow = %s AND id = %s FOR UPDATE
"""

KEEP_EVENT = """
WITH kept AS (
    INSERT INTO {s}.events (instance_pk, type, payload, sent_at)
    VALUES (%(pk)s, %(type)s, %(payload)s, %(now)s) RETURNING seq
), woken AS (
    -- Wake a waiting instance that waits for this type, so that its run takes the event (a
    -- paused one: on resume). Any other is left alone: the event waits for its wait.
    UPDATE {s}.instances SET wake_at = %(now)s
    WHERE pk = %(pk)s AND (status = 'waiting' OR (status = 'paused' AND paused_status = 'waiting'))
        AND (wait_types IS NULL OR %(type)s = ANY(wait_types))
    RETURNING status
)
SELECT (SELECT seq FROM kept), (SELECT status FROM woken)
"""

# Restart from a step: delete it and the steps recorded after it; events they took go
# too (ON DELETE CASCADE). The step itself is deleted, so no row deleted means no such step.
DISCARD_STEPS_FROM = """
WITH discarded AS (
    DELETE FROM {s}.steps WHERE instance_pk = %(pk)s AND seq >= (
        SELECT seq FROM {s}.steps
        WHERE instance_pk = %(pk)s AND kind = %(kind)s AND name = %(name)s AND count = %(count)s
    )
    RETURNING 1
)
SELECT count(*) FROM discarded
"""
DISCARD_STEPS = "DELETE FROM {s}.steps WHERE instance_pk = %(pk)s"

RESTART = f"""
UPDATE {{s}}.instances SET status = 'queued', output = NULL, error = NULL, wake_at = NULL, paused_status = NULL,
    ended_at = NULL, lease_owner = NULL, lease_expires = NULL, lease_token = lease_token + 1, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {INSTANCE_COLUMNS}
"""

TERMINATE = f"""
UPDATE {{s}}.instances SET status = %(status)s, wake_at = NULL, paused_status = NULL, ended_at = %(now)s,
    lease_owner = NULL, lease_expires = NULL, lease_token = lease_token + 1, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {INSTANCE_COLUMNS}
"""

SET_STATUS = f"""
UPDATE {{s}}.instances SET status = %(status)s, paused_status = %(paused_status)s, updated_at = %(now)s
WHERE pk = %(pk)s RETURNING {INSTANCE_COLUMNS}
"""

DELETE_INSTANCE = """
WITH deleted AS (DELETE FROM {s}.instances WHERE workflow = %s AND id = %s RETURNING 1) SELECT count(*) FROM deleted
"""

# Retention: the oldest ended instances first, workflow by workflow, skipping any that
# another transaction holds (a restart, say).
PRUNE = """
WITH doomed AS (
    SELECT c.pk FROM unnest(%(names)s::text[]) WITH ORDINALITY AS w (name, position), LATERAL (
        SELECT pk, ended_at FROM {s}.instances
        WHERE workflow = w.name AND status = %(status)s AND ended_at < %(ended_before)s
        ORDER BY ended_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY w.position, c.ended_at LIMIT %(limit)s
)
DELETE FROM {s}.instances WHERE pk IN (SELECT pk FROM doomed) RETURNING pk
"""

# A pause asked while a step ran takes effect when that step ends; a dead worker's step has ended.
PAUSE_ABANDONED = """
UPDATE {s}.instances SET status = 'paused', paused_status = 'queued', lease_owner = NULL, lease_expires = NULL,
    updated_at = %(now)s
WHERE pk IN (
    SELECT pk FROM {s}.instances
    WHERE status = 'waitingForPause' AND lease_expires < %(now)s AND workflow = ANY(%(names)s)
    FOR UPDATE SKIP LOCKED
)
"""

# Waking instances go first, then those whose worker died, then new ones. Each tier
# walks one index range per workflow, in order (a lateral subquery per workflow), and
# skips the rows another transaction holds, so that claimers never wait for each other.
# (With several workflows, a tier may lock a few rows it then leaves: they are free
# again at commit.)
CLAIM = """
WITH workflows AS (
    SELECT name FROM unnest(%(names)s::text[]) AS name
), due AS (
    SELECT c.pk, true AS resumed, 1 AS tier, c.wake_at AS rank
    FROM workflows w, LATERAL (
        SELECT pk, wake_at FROM {s}.instances
        WHERE status = 'waiting' AND workflow = w.name AND wake_at <= %(due_by)s
        ORDER BY wake_at, pk LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.wake_at, c.pk LIMIT %(limit)s
), abandoned AS (
    SELECT c.pk, true AS resumed, 2 AS tier, c.lease_expires AS rank
    FROM workflows w, LATERAL (
        SELECT pk, lease_expires FROM {s}.instances
        WHERE status = 'running' AND workflow = w.name AND lease_expires < %(now)s
        ORDER BY lease_expires, pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due), 0)
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.lease_expires, c.pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due), 0)
), queued AS (
    SELECT c.pk, c.started_at IS NOT NULL AS resumed, 3 AS tier, c.pk::double precision AS rank
    FROM workflows w, LATERAL (
        SELECT pk, started_at FROM {s}.instances
        WHERE status = 'queued' AND workflow = w.name
        ORDER BY pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due) - (SELECT count(*) FROM abandoned), 0)
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.pk LIMIT greatest(%(limit)s - (SELECT count(*) FROM due) - (SELECT count(*) FROM abandoned), 0)
), picked AS (
    SELECT * FROM due UNION ALL SELECT * FROM abandoned UNION ALL SELECT * FROM queued
)
UPDATE {s}.instances i SET status = 'running', lease_owner = %(worker)s, lease_expires = %(lease_until)s,
    lease_token = i.lease_token + 1, started_at = coalesce(i.started_at, %(now)s), updated_at = %(now)s
FROM picked WHERE i.pk = picked.pk
RETURNING picked.tier, picked.rank, i.pk, i.workflow, i.id, i.params, i.created_at, i.lease_token, picked.resumed
"""

# The steps of the instances CLAIM just took, read in the same transaction, right after
# it (a new snapshot: it sees whatever a previous owner committed before the claim got
# the row). Found by what CLAIM set; any other match is ignored by the store.
CLAIMED_STEPS = f"""
SELECT s.instance_pk, {STEP_COLUMNS} FROM {{s}}.steps s
WHERE s.instance_pk IN (
    SELECT pk FROM {{s}}.instances
    WHERE lease_owner = %(worker)s AND lease_expires = %(lease_until)s AND updated_at = %(now)s AND status = 'running'
)
ORDER BY s.seq
"""

# When something of the workflows is next claimable: the earliest timer, or lease of
# another worker. Per workflow, so that each minimum is the first entry of one index range.
EARLIEST = """
SELECT least(min(timer.at), min(lease.at)) FROM unnest(%(names)s::text[]) AS w (name),
LATERAL (SELECT min(wake_at) AS at FROM {s}.instances WHERE status = 'waiting' AND workflow = w.name) timer,
LATERAL (
    SELECT min(lease_expires) AS at FROM {s}.instances
    WHERE status IN ('running', 'waitingForPause') AND workflow = w.name AND lease_owner <> %(worker)s
) lease
"""

# The fence of a write: every statement of a run's write checks that its token still
# holds the lease, and fails the transaction when it does not (write_refused, migration
# 0002). So the fence, the step records and the commit can all be sent at once, before
# any answer arrives, and a lost lease changes nothing.
_REFUSE_LOST = "{s}.write_refused(%(pk)s, 'no longer leased with this token')"
_LEASED = "pk = %(pk)s AND lease_token = %(token)s AND lease_owner IS NOT NULL"

LOCK_LEASED = f"""
WITH locked AS (SELECT status FROM {{s}}.instances WHERE {_LEASED} FOR UPDATE)
SELECT coalesce((SELECT status FROM locked), {_REFUSE_LOST})
"""

TOUCH_LEASED = f"""
WITH touched AS (UPDATE {{s}}.instances SET updated_at = %(now)s WHERE {_LEASED} RETURNING status)
SELECT coalesce((SELECT status FROM touched), {_REFUSE_LOST})
"""

# One statement per step: upsert it by key, and when the step has them, append its
# attempts and take its event (failing if that event is gone). `leased` finds the
# instance if the lease holds: for the first step of a write that goes on, with an
# UPDATE that touches its updated_at and locks its row; otherwise the row is locked
# already (by that first step, or by LOCK_LEASED before a run's end) and is only read.
# A step without an attempt log or an event (most steps) leaves those parts out: the
# server then plans and runs less (record_step).
_LEASED_ROW = f"SELECT pk, status FROM {{s}}.instances WHERE {_LEASED}"
_TOUCH_LEASED_ROW = f"UPDATE {{s}}.instances SET updated_at = %(now)s WHERE {_LEASED} RETURNING pk, status"
_UPSERT_STEP = """
WITH leased AS ({leased}), step AS (
    INSERT INTO {s}.steps (instance_pk, kind, name, count, status, result, error_type, error_message, attempts,
        due_at, started_at, ended_at, branch)
    SELECT pk, %(kind)s::text, %(name)s::text, %(count)s::integer, %(status)s::text, %(result)s::text,
        %(error_type)s::text, %(error_message)s::text, %(attempts)s::integer, %(due_at)s::double precision,
        %(started_at)s::double precision, %(ended_at)s::double precision, %(branch)s::text
    FROM leased
    ON CONFLICT (instance_pk, kind, name, count) DO UPDATE SET status = excluded.status, result = excluded.result,
        error_type = excluded.error_type, error_message = excluded.error_message, attempts = excluded.attempts,
        due_at = excluded.due_at, ended_at = excluded.ended_at
    RETURNING seq
)"""
_LOG_ATTEMPTS = """, logged AS (
    INSERT INTO {s}.attempts (step_seq, attempt, started_at, ended_at, outcome, error_type, error_message)
    SELECT step.seq, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message
    FROM step, json_to_recordset(%(attempts_log)s::json) AS a (attempt integer, started_at double precision,
        ended_at double precision, outcome text, error_type text, error_message text)
    ON CONFLICT (step_seq, attempt) DO UPDATE SET started_at = excluded.started_at, ended_at = excluded.ended_at,
        outcome = excluded.outcome, error_type = excluded.error_type, error_message = excluded.error_message
)"""
_TAKE_EVENT = """, taken AS (
    UPDATE {s}.events SET consumed_by = step.seq FROM step
    WHERE events.seq = %(consume_event)s::bigint AND events.consumed_by IS NULL
    RETURNING events.seq
)"""
_STEP_ANSWER = f"""
SELECT coalesce((SELECT status FROM leased), {_REFUSE_LOST})"""
_EVENT_CHECK = """,
    CASE WHEN (SELECT count(*) FROM taken) <> 1
        THEN {s}.write_refused(%(pk)s, 'the event its step takes was taken or removed meanwhile') END"""
# (A data-modifying WITH part runs to completion even when nothing reads its rows:
# postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING.)


@functools.cache
def record_step(*, touch: bool, log: bool, take: bool) -> str:
    """The statement recording one step (parameters: postgres._step_params): `touch` the
    instance's updated_at, `log` the step's new attempts, `take` the event it consumes."""
    return (
        _UPSERT_STEP.replace("{leased}", _TOUCH_LEASED_ROW if touch else _LEASED_ROW)
        + (_LOG_ATTEMPTS if log else "")
        + (_TAKE_EVENT if take else "")
        + _STEP_ANSWER
        + (_EVENT_CHECK if take else "")
        + "\n"
    )


# A run stops: the instance leaves `running` and its lease is released. The status it
# takes follows lifecycle.end_status (the SQLite store calls that; here it is in SQL,
# so that the write needs no answer before its commit): a pause asked meanwhile
# (`waitingForPause`) takes effect now; a run that stopped to pause finds the pause
# withdrawn if the instance was resumed meanwhile. A run that stops to wait for events
# of which one is already kept is due at once. Locked by LOCK_LEASED before.
END_RUN = f"""
WITH current AS (
    SELECT pk, status, CASE WHEN %(end)s IN ('waiting', 'paused') AND EXISTS (
        SELECT 1 FROM {{s}}.events
        WHERE instance_pk = %(pk)s AND consumed_by IS NULL AND type = ANY(%(wait_types)s::text[])
    ) THEN %(now)s ELSE %(wake_at)s::double precision END AS wake_at
    FROM {{s}}.instances WHERE {_LEASED}
    FOR UPDATE  -- (alone, this statement is its own fence; it then reads the row as last committed)
), next AS (
    SELECT pk, wake_at, CASE
        WHEN status = 'waitingForPause' AND %(end)s IN ('waiting', 'queued', 'paused') THEN 'paused'
        WHEN %(end)s = 'paused' THEN CASE WHEN wake_at IS NULL THEN 'queued' ELSE 'waiting' END
        ELSE %(end)s
    END AS status, CASE
        WHEN status = 'waitingForPause' AND %(end)s IN ('waiting', 'queued', 'paused')
        THEN CASE WHEN wake_at IS NULL THEN 'queued' ELSE 'waiting' END
    END AS paused_status
    FROM current
), ended AS (
    UPDATE {{s}}.instances i SET status = next.status, paused_status = next.paused_status, wake_at = next.wake_at,
        wait_types = %(wait_types)s::text[], output = %(output)s, error = %(error)s,
        ended_at = CASE WHEN next.status IN ('complete', 'errored') THEN %(now)s END,
        lease_owner = NULL, lease_expires = NULL, updated_at = %(now)s
    FROM next WHERE i.pk = next.pk
    RETURNING i.status
)
SELECT coalesce((SELECT status FROM ended), {_REFUSE_LOST})
"""

# A run that ends its instance (complete, errored): END_RUN's outcome for those ends, in
# one UPDATE (the server runs it in about 40 µs less). A pause asked meanwhile
# (waitingForPause) has nothing left to pause.
END_FINISHED = f"""
WITH ended AS (
    UPDATE {{s}}.instances SET status = %(end)s, paused_status = NULL, wake_at = NULL, output = %(output)s,
        error = %(error)s, ended_at = %(now)s, lease_owner = NULL, lease_expires = NULL, updated_at = %(now)s
    WHERE {_LEASED}
    RETURNING status
)
SELECT coalesce((SELECT status FROM ended), {_REFUSE_LOST})
"""

RENEW_LEASES = """
WITH locked AS (
    SELECT i.pk FROM {s}.instances i
    JOIN unnest(%(pks)s::bigint[], %(tokens)s::bigint[]) AS held (pk, token)
        ON i.pk = held.pk AND i.lease_token = held.token
    WHERE i.lease_owner = %(worker)s
    ORDER BY i.workflow, i.id FOR UPDATE OF i
)
UPDATE {s}.instances i SET lease_expires = %(lease_until)s FROM locked WHERE i.pk = locked.pk
RETURNING i.pk
"""

WORKER_SEEN = """
INSERT INTO {s}.workers (id, host, pid, started_at, seen_at) VALUES (%(id)s, %(host)s, %(pid)s, %(now)s, %(now)s)
ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at
"""

EXPIRE_WORKERS = """
WITH expired AS (
    UPDATE {s}.instances SET lease_expires = %(expired)s WHERE lease_owner = ANY(%(ids)s::text[]) RETURNING 1
), forgotten AS (
    DELETE FROM {s}.workers WHERE id = ANY(%(ids)s::text[])
)
SELECT count(*) FROM expired
"""

HISTORY = f"""
SELECT {STEP_COLUMNS}, a.attempt, a.started_at, a.ended_at, a.outcome, a.error_type, a.error_message
FROM {{s}}.steps s LEFT JOIN {{s}}.attempts a ON a.step_seq = s.seq
WHERE s.instance_pk = %s ORDER BY s.seq, a.attempt
"""

LOAD_STEPS = f"SELECT {STEP_COLUMNS} FROM {{s}}.steps s WHERE s.instance_pk = %s ORDER BY s.seq"

EVENTS = """
SELECT e.seq, e.type, e.payload, e.sent_at, s.kind, s.name, s.count
FROM {s}.events e LEFT JOIN {s}.steps s ON s.seq = e.consumed_by
WHERE e.instance_pk = %s ORDER BY e.seq
"""

LEASES = """
SELECT pk, lease_token, status FROM {s}.instances WHERE pk = ANY(%s) AND lease_owner IS NOT NULL
"""

NEXT_EVENT = """
SELECT seq, type, payload, sent_at FROM {s}.events
WHERE instance_pk = %s AND type = %s AND consumed_by IS NULL ORDER BY seq LIMIT 1
"""

WORKFLOW_NAMES = "SELECT name FROM {s}.workflows ORDER BY name"

STATUS_COUNTS = """
SELECT CASE WHEN status = 'running' AND lease_expires < %s THEN 'unknown' ELSE status END, count(*)
FROM {s}.instances WHERE workflow = %s GROUP BY 1
"""

WORKERS_ON_HOST = "SELECT id, pid FROM {s}.workers WHERE host = %s"

FORGET_WORKER = "DELETE FROM {s}.workers WHERE id = %s"
