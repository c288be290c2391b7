-- stepstone schema, version 2 (PostgreSQL): a write's fence that aborts its transaction.
--
-- A run's write sends BEGIN, its fence, its step records and COMMIT in one round trip
-- (pipeline mode), before it can read the fence's answer. So a fence that fails must
-- fail the transaction itself: the statements call this function when the lease is
-- gone (or a step's event was taken meanwhile), and the COMMIT that follows is never run.

CREATE FUNCTION write_refused(instance_pk bigint, reason text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'instance %: %', instance_pk, reason USING ERRCODE = 'SSW01';
END
$$;
