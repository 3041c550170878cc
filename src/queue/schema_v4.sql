-- forkpool durable jobs, schema version 4: a job's claim and its completion each write one
-- index entry fewer.
--
-- A claim, a completion, a retry all change a job's `state`. PostgreSQL cannot update such
-- a row in place (no HOT update: `state` is indexed), so each writes a new row version and
-- an entry for it into every index whose predicate that version meets. `jobs_state_queue
-- (state, queue)` had no predicate: it took an entry at every step of every job. Its readers
-- were the status counts, which read every job anyway, and `pause_queue` / `resume_queue`,
-- which look only at one queue's waiting jobs. A partial index of waiting jobs by queue
-- serves those, and takes an entry only when a job is stored or goes back to waiting.
--
-- Per job stored, claimed and completed (no unique key): 10 index entries before, 8 now, and
-- 10 % less WAL (2,345-2,366 → 2,106-2,109 bytes a job over a 20,000-job drain). The drain's
-- rate moves less than the two cores' noise in most runs (issue #15, README Performance).

DROP INDEX forkpool.jobs_state_queue;
CREATE INDEX jobs_waiting_queue ON forkpool.jobs (queue) WHERE state = 'available';
