-- forkpool durable jobs, schema version 2: the claim and the completion as functions.
--
-- Each is then one statement with its planner settings attached, where version 1 sent the
-- claim inside `BEGIN; SET LOCAL ...; SET LOCAL ...; <claim>; COMMIT` (five statements) and
-- planned the completion anew every time. PL/pgSQL keeps each statement's plan for the
-- session; the settings are in force while it is made, so the plan kept is the one below
-- whatever the statistics say (see `forkpool.claim_jobs`).

-- The claim: picks, locks (`SKIP LOCKED`: claimers never wait for each other) and marks the
-- jobs running with their attempt counted, in one statement — never select-then-update,
-- which would let two workers take one job. Only `p_jobs` (the claiming catalog's names)
-- are picked, so hosts with different catalogs share one table; queues in `p_excluded` are
-- at their cap; paused queues are skipped.
--
-- Sorts and sequential scans are off while it runs: the only good plan walks the claim
-- index (`jobs_claim_order`) to the first runnable jobs and updates them by primary key.
-- Without that, with 20,000 jobs waiting, the planner sorted every one of them at each claim
-- (15–26 ms a claim) on a table not analyzed yet, or when the exclusion of an unknown list
-- of queues looked like it left no row at all. Its generic plan is forced: PostgreSQL kept
-- choosing a custom plan (the `LIMIT` of a generic plan is costed as unknown), so every
-- claim was planned again — 0.38 ms a claim where the kept plan takes 0.25 ms.
CREATE FUNCTION forkpool.claim_jobs(
    p_jobs text[], p_excluded text[], p_limit bigint, p_host text, p_instance bigint,
    p_worker bigint, p_lease_seconds float8, p_record_backend boolean)
RETURNS TABLE (id bigint, claim_count int, job text, args text, queue text, attempt int,
               max_attempts int)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_sort = off
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT p.id FROM forkpool.jobs p
         WHERE p.state = 'available' AND p.run_at <= now()
           AND p.job = ANY(p_jobs)
           AND p.queue <> ALL(p_excluded)
           AND p.queue NOT IN (SELECT z.queue FROM forkpool.paused_queues z)
         ORDER BY p.priority, p.run_at, p.id
         LIMIT p_limit
         FOR UPDATE SKIP LOCKED)
    UPDATE forkpool.jobs j
       SET state = 'running', attempt = j.attempt + 1, claim_count = j.claim_count + 1,
           attempted_at = now(), host = p_host, instance = p_instance, worker = p_worker,
           backend_pid = CASE WHEN p_record_backend THEN pg_backend_pid() END,
           lease_until = now() + make_interval(secs => p_lease_seconds),
           cancel_requested = false
      FROM picked
     WHERE j.id = picked.id
    RETURNING j.id, j.claim_count, j.job, j.args::text, j.queue, j.attempt, j.max_attempts;
END $$;

-- The completion: the claimed job `completed` with its result, fenced by the claim (and,
-- with `p_honor_cancel`, by a cancel requested meanwhile). False when the fence failed; with
-- `p_or_fail` it raises SQLSTATE FP001 instead, so that the `COMMIT` sent right behind it
-- rolls the job's whole transaction back (an exactly-once job's completion and commit in one
-- round trip). By primary key: a plan kept from when the table was small never scans it.
CREATE FUNCTION forkpool.complete_job(
    p_id bigint, p_claim_count int, p_result text, p_honor_cancel boolean, p_or_fail boolean)
RETURNS boolean
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    UPDATE forkpool.jobs
       SET state = 'completed', finished_at = now(), result = p_result::jsonb,
           lease_until = NULL, backend_pid = NULL
     WHERE id = p_id AND claim_count = p_claim_count AND state = 'running'
       AND NOT (cancel_requested AND p_honor_cancel);
    IF NOT FOUND AND p_or_fail THEN
        RAISE EXCEPTION 'forkpool.complete_job: job % is no longer held by this claim', p_id
            USING ERRCODE = 'FP001';
    END IF;
    RETURN FOUND;
END $$;
