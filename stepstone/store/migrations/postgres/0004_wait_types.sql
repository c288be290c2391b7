-- stepstone schema, version 4 (PostgreSQL): the event types a waiting instance waits for.
--
-- An event wakes a waiting (or paused-while-waiting) instance only if the instance waits
-- for its type: an event of another type is kept for a later wait, and the instance is
-- not run again meanwhile. Written whenever a run stops to wait ('{}' when it waits for
-- no event: a sleep, a retry). NULL for instances that stopped before this version: any
-- event wakes those, as before.

ALTER TABLE instances ADD COLUMN wait_types text[];
