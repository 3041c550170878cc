// graphile-worker doing what `forkpool bench --durable` measures, for benches/compare.sh:
// one Node process, a runner of CONCURRENCY, a task that runs `SELECT 1` through
// helpers.query. Prints one JSON object:
//   burn-down: N jobs added in one addJobs call while the runner runs; seconds from just
//     before the call to the N-th job:success event; the addJobs call's own rate;
//   serial: S jobs added one at a time (await addJob each), jobs/s;
//   idle: K jobs one at a time, each awaited before the next.
// Enqueue-to-start is locked_at − created_at of the job the task receives (both set by the
// database; node-postgres turns them into Dates, so to the millisecond).
//
// usage: node bench.mjs CONNECTION_STRING N S K CONCURRENCY
import { Logger, makeWorkerUtils, run } from "graphile-worker";

const [connectionString, n, s, k, concurrency] = process.argv.slice(2);
const [N, S, K, CONCURRENCY] = [n, s, k, concurrency].map(Number);
const DEADLINE_MS = 300_000;
const silent = new Logger(() => () => {});

let starts = []; // ms, locked_at − created_at of each job run in the current phase
let succeeded = 0;
let onSuccess = () => {};

const taskList = {
  noop: async (_payload, helpers) => {
    await helpers.query("SELECT 1");
    starts.push(helpers.job.locked_at - helpers.job.created_at);
  },
};

function percentile(values, fraction) {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return 0;
  const rank = Math.min(Math.max(Math.ceil(fraction * sorted.length), 1), sorted.length);
  return sorted[rank - 1];
}

function latency(values) {
  return { p50: percentile(values, 0.5), p99: percentile(values, 0.99), max: percentile(values, 1) };
}

/** Resolves once `count` more jobs have succeeded; rejects at the deadline. */
function successes(count) {
  const target = succeeded + count;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${succeeded} of ${target} jobs succeeded in time`)), DEADLINE_MS);
    onSuccess = () => {
      if (succeeded >= target) {
        clearTimeout(timer);
        resolve();
      }
    };
    onSuccess();
  });
}

const utils = await makeWorkerUtils({ connectionString, logger: silent });
await utils.migrate();
const runner = await run({ connectionString, concurrency: CONCURRENCY, noHandleSignals: true, taskList, logger: silent });
runner.events.on("job:success", () => {
  succeeded += 1;
  onSuccess();
});
runner.events.on("job:error", ({ error }) => {
  console.error("graphile job failed:", error);
  process.exitCode = 1;
});

const result = { concurrency: CONCURRENCY, jobs: N };
try {
  // Burn-down, with the batched enqueue inside it.
  starts = [];
  const specs = Array.from({ length: N }, () => ({ identifier: "noop", payload: {} }));
  const allDone = successes(N);
  const t0 = performance.now();
  await utils.addJobs(specs);
  const added = performance.now();
  await allDone;
  const burned = performance.now();
  result.add_jobs = { seconds: (added - t0) / 1000, jobs_per_second: N / ((added - t0) / 1000) };
  result.burn_down = { seconds: (burned - t0) / 1000, jobs_per_second: N / ((burned - t0) / 1000) };
  result.start_latency_ms = latency(starts);

  // One addJob at a time (the jobs also run meanwhile).
  const serialDone = successes(S);
  const t1 = performance.now();
  for (let i = 0; i < S; i += 1) await utils.addJob("noop", {});
  const t2 = performance.now();
  await serialDone;
  result.add_job_serial = { jobs: S, seconds: (t2 - t1) / 1000, jobs_per_second: S / ((t2 - t1) / 1000) };

  // Idle workers: one job at a time, each awaited.
  starts = [];
  const roundTrips = [];
  for (let i = 0; i < K; i += 1) {
    const sent = performance.now();
    // Nothing else runs now: the next success is this job's (set up before the add, which
    // may complete after the job already ran).
    const done = successes(1);
    await utils.addJob("noop", {});
    await done;
    roundTrips.push(performance.now() - sent);
  }
  result.idle = { jobs: K, start_latency_ms: latency(starts), round_trip_ms: latency(roundTrips) };
} finally {
  await runner.stop();
  await utils.release();
}
console.log(JSON.stringify(result));
