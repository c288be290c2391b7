-- stepstone schema, version 3 (PostgreSQL): where in the run a step was called.
--
-- A run's concurrent branches (asyncio.gather, TaskGroup) may call steps of one name in
-- an order that depends on timing, so a step's occurrence number alone does not find it
-- again on replay. `branch` is 'path#n': the n-th call of the step's kind and name in the
-- branch at `path` ('' the run itself, '0' its first branch, '0.1' that one's second).
-- NULL for every step recorded before this version: those are found again as they were
-- then, by occurrence number in the order of the run's calls.

ALTER TABLE steps ADD COLUMN branch text;
