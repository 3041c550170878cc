-- forkpool durable jobs, schema version 1. Applied by `forkpool migrate` (or the queue
-- keeper with queue.migrate = "auto") inside one transaction, under an advisory lock.
-- The table's names and the meaning of `state` are a contract (DESIGN §12): users query them.

CREATE TABLE forkpool.jobs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job            text        NOT NULL,
    args           jsonb       NOT NULL DEFAULT '{}',
    queue          text        NOT NULL DEFAULT 'default',
    -- Lower runs first (River's and Oban's convention).
    priority       int         NOT NULL DEFAULT 0,
    state          text        NOT NULL DEFAULT 'available'
                   CHECK (state IN ('available', 'running', 'completed', 'discarded', 'cancelled')),
    -- Counted when a worker claims the job: the attempt running now, or the last one. A
    -- job put back by a graceful stop gets its attempt back.
    attempt        int         NOT NULL DEFAULT 0,
    -- Every claim's fence: it only ever grows (unlike `attempt`, which a graceful stop gives
    -- back), so a completion fenced by it can never match a later claim.
    claim_count    int         NOT NULL DEFAULT 0,
    max_attempts   int         NOT NULL DEFAULT 20 CHECK (max_attempts >= 1),
    run_at         timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    attempted_at   timestamptz,
    finished_at    timestamptz,
    result         jsonb,
    -- One object per failed attempt: {"attempt", "at", "kind", "message", "sqlstate"?}.
    errors         jsonb       NOT NULL DEFAULT '[]',
    unique_key     text,
    -- Who holds a running job: the host's stable identity, the service instance (one per
    -- master start) and the worker (a number the master gives each worker it forks). A
    -- rescue names exactly these, so it never touches another host's or worker's job.
    host           text,
    instance       bigint,
    worker         bigint,
    -- The backend running the job (pg_backend_pid() of the claiming connection), so that
    -- `cancel` can cancel its query; with backend_start it never names a reused pid.
    backend_pid    int,
    lease_until    timestamptz,
    cancel_requested boolean   NOT NULL DEFAULT false
);

-- The claim's order: the partial index holds only what may be claimed.
CREATE INDEX jobs_claim_order ON forkpool.jobs (priority, run_at, id) WHERE state = 'available';
-- A unique key is unique among jobs not yet finished: a unique index, not a lock.
CREATE UNIQUE INDEX jobs_unique_key ON forkpool.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'running');
-- Rescue looks up what one host, instance or worker holds.
CREATE INDEX jobs_running_holder ON forkpool.jobs (host, instance, worker) WHERE state = 'running';
-- Lapsed leases: what another host may take back.
CREATE INDEX jobs_lease ON forkpool.jobs (lease_until) WHERE state = 'running';
-- Status counts by state and queue.
CREATE INDEX jobs_state_queue ON forkpool.jobs (state, queue);
-- Pruning: finished jobs by age.
CREATE INDEX jobs_finished ON forkpool.jobs (finished_at)
    WHERE state IN ('completed', 'cancelled', 'discarded');

-- Paused queues: no host claims their jobs (checked by every claim, so a pause is seen at
-- once everywhere); enqueueing goes on.
CREATE TABLE forkpool.paused_queues (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now()
);

-- Each schedule's ticks, once each across all hosts: the host whose insert of (schedule,
-- tick) succeeds enqueues the tick's job in the same transaction. No leader.
CREATE TABLE forkpool.schedule_ticks (
    schedule   text        NOT NULL,
    tick       timestamptz NOT NULL,
    job_id     bigint,
    PRIMARY KEY (schedule, tick)
);

-- The services sharing this queue: one row per host instance, its heartbeat renewed with
-- its leases. `status` lists them; nothing depends on a row being here (no leader).
CREATE TABLE forkpool.hosts (
    host        text        NOT NULL,
    instance    bigint      NOT NULL,
    hostname    text        NOT NULL,
    pid         int         NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, instance)
);

-- What a job file says about its durable runs, written by every service from its catalog,
-- so that `forkpool.enqueue()` from SQL uses the same defaults as the socket.
CREATE TABLE forkpool.job_defaults (
    job           text PRIMARY KEY,
    queue         text NOT NULL,
    priority      int  NOT NULL,
    max_attempts  int  NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One insert, shared by the SQL function and the socket's batches. A duplicate unique_key
-- returns the existing job instead of a new one; the loop covers the race where that job
-- finishes between the conflicting insert and the look-up.
CREATE FUNCTION forkpool.insert_job(
    p_job text, p_args jsonb, p_queue text, p_priority int, p_run_at timestamptz,
    p_max_attempts int, p_unique_key text,
    OUT job_id bigint, OUT duplicate boolean, OUT job_state text)
LANGUAGE plpgsql AS $$
DECLARE
    d forkpool.job_defaults;
BEGIN
    IF p_job IS NULL OR p_job = '' THEN
        RAISE EXCEPTION 'forkpool.enqueue: job must be named' USING ERRCODE = '22023';
    END IF;
    IF p_args IS NOT NULL AND jsonb_typeof(p_args) <> 'object' THEN
        RAISE EXCEPTION 'forkpool.enqueue: args must be a JSON object, not %', jsonb_typeof(p_args)
            USING ERRCODE = '22023';
    END IF;
    SELECT * INTO d FROM forkpool.job_defaults WHERE job_defaults.job = p_job;
    FOR i IN 1..5 LOOP
        INSERT INTO forkpool.jobs (job, args, queue, priority, run_at, max_attempts, unique_key)
        VALUES (p_job, coalesce(p_args, '{}'), coalesce(p_queue, d.queue, 'default'),
                coalesce(p_priority, d.priority, 0), coalesce(p_run_at, now()),
                coalesce(p_max_attempts, d.max_attempts, 20), p_unique_key)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('available', 'running')
        DO NOTHING
        RETURNING id, state INTO job_id, job_state;
        IF job_id IS NOT NULL THEN
            duplicate := false;
            RETURN;
        END IF;
        SELECT id, state INTO job_id, job_state FROM forkpool.jobs
         WHERE unique_key = p_unique_key AND state IN ('available', 'running');
        IF job_id IS NOT NULL THEN
            duplicate := true;
            RETURN;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'forkpool.enqueue: unique_key % kept changing hands', p_unique_key
        USING ERRCODE = '40001';
END $$;

-- Transactional enqueue from any client: the job exists only if the caller's transaction
-- commits. NULL arguments take the job file's defaults (forkpool.job_defaults).
CREATE FUNCTION forkpool.enqueue(
    job text, args jsonb DEFAULT '{}', queue text DEFAULT NULL, priority int DEFAULT NULL,
    run_at timestamptz DEFAULT NULL, max_attempts int DEFAULT NULL,
    unique_key text DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT job_id FROM forkpool.insert_job(job, args, queue, priority, run_at, max_attempts, unique_key)
$$;

-- One NOTIFY per statement and queue, never one per row; PostgreSQL also folds identical
-- notifications of one transaction into one. The payload is the queue's name.
CREATE FUNCTION forkpool.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('forkpool_jobs', q.queue)
       FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') q;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_inserted AFTER INSERT ON forkpool.jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION forkpool.notify_inserted();
