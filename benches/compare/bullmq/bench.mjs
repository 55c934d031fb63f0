// BullMQ side of benches/compare: no-op jobs through BullMQ on the Redis given
// by REDIS_URL or --redis-port. A job's latency runs from just before
// queue.add() to the arrival of its `completed` event at a QueueEvents
// listener (a blocking XREAD on the queue's event stream: pushed, not
// polled). Prints one JSON object per scenario on stdout.
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';

const { values: args } = parseArgs({
  options: {
    'redis-port': { type: 'string' },
    jobs: { type: 'string', default: '1000' },
    warmup: { type: 'string', default: '100' },
    'in-flight': { type: 'string', default: '200' },
    'in-flight-warmup': { type: 'string', default: '2000' },
    duration: { type: 'string', default: '15' },
    'worker-concurrency': { type: 'string', default: '50' },
    'job-timeout': { type: 'string', default: '30' },
  },
});
const redisUrl = new URL(
  process.env.REDIS_URL ?? `redis://127.0.0.1:${args['redis-port'] ?? 6379}`,
);
const connection = {
  host: redisUrl.hostname,
  port: Number(redisUrl.port || 6379),
  maxRetriesPerRequest: null,
};
const jobTimeoutMs = Number(args['job-timeout']) * 1000;
const bullmqVersion = JSON.parse(
  readFileSync(new URL('./node_modules/bullmq/package.json', import.meta.url)),
).version;
const queueName = 'compare';

// --- the worker process --------------------------------------------------

const worker = fork(new URL('./worker.mjs', import.meta.url), [
  queueName, connection.host, String(connection.port), args['worker-concurrency'],
]);
await new Promise((resolve, reject) => {
  worker.once('message', resolve);
  worker.once('exit', (code) => reject(new Error(`the worker exited (${code})`)));
});
const workerCpuSeconds = () =>
  new Promise((resolve) => {
    worker.once('message', ({ cpu }) => resolve((cpu.user + cpu.system) / 1e6));
    worker.send('cpu');
  });

// --- jobs and their completions ------------------------------------------

const queue = new Queue(queueName, { connection });
// A fresh queue: reading its event stream from the start cannot miss the
// first jobs' events, whenever the listener's first XREAD happens.
const events = new QueueEvents(queueName, { connection, lastEventId: '0' });
const redis = new IORedis(connection);
await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);

const pending = new Map(); // job id → { start, resolve, timer }

function settle(jobId, outcome) {
  const job = pending.get(jobId);
  if (!job) return; // a warm-up leftover or a job that already timed out
  const end = performance.now();
  pending.delete(jobId);
  clearTimeout(job.timer);
  job.resolve({ outcome, latencyMs: end - job.start, start: job.start, end });
}
events.on('completed', ({ jobId }) => settle(jobId, 'ok'));
events.on('failed', ({ jobId, failedReason }) => settle(jobId, `failed: ${failedReason}`));

// Our own job ids, so that the start time is on record before queue.add()
// is sent and a completion can never arrive for an id not yet known.
function runJob(jobId) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => settle(jobId, 'timeout'), jobTimeoutMs);
    pending.set(jobId, { start: performance.now(), resolve, timer });
    queue.add('noop', {}, { jobId }).catch((err) => settle(jobId, `add: ${err.message}`));
  });
}

// --- measurement ------------------------------------------------------------

class Recorder {
  cpuBefore = null; // a promise of cpuSnapshot(), taken when measuring starts
  latencies = [];
  errors = 0;
  timeouts = 0;
  errorSamples = [];
  firstStart = Infinity;
  lastEnd = -Infinity;

  // Called as the first measured job is submitted: CPU time counts from
  // here, without the warm-up.
  begin() {
    this.cpuBefore = cpuSnapshot();
    return this.cpuBefore;
  }

  add({ outcome, latencyMs, start, end }) {
    this.firstStart = Math.min(this.firstStart, start);
    if (outcome !== 'ok') {
      this.errors += 1;
      if (outcome === 'timeout') this.timeouts += 1;
      if (this.errorSamples.length < 5) this.errorSamples.push(outcome);
      return;
    }
    this.latencies.push(latencyMs);
    this.lastEnd = Math.max(this.lastEnd, end);
  }
}

// Exact nearest-rank percentile of sorted samples.
const percentile = (sorted, q) => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
const round = (value, places = 3) => Math.round(value * 10 ** places) / 10 ** places;

// CPU time (s) of everything that is not idle, from /proc/stat (USER_HZ is
// 100 on Linux), so the CPU taken by other work on the machine shows.
function machineBusySeconds() {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = ticks.map(Number);
  return (user + nice + system + irq + softirq + steal) / 100;
}

async function redisInfo(section) {
  const fields = {};
  for (const line of (await redis.info(section)).split('\r\n')) {
    const [key, value] = line.split(':');
    if (value !== undefined) fields[key] = value;
  }
  return fields;
}

async function cpuSnapshot() {
  const own = process.cpuUsage();
  const redisCpu = await redisInfo('cpu');
  return {
    client: (own.user + own.system) / 1e6,
    worker: await workerCpuSeconds(),
    redis: Number(redisCpu.used_cpu_user) + Number(redisCpu.used_cpu_sys),
    machine: machineBusySeconds(),
  };
}

const redisVersion = (await redisInfo('server')).redis_version;

// Runs `measure(recorder)` and prints the scenario's JSON line.
async function scenario(name, inFlight, measure) {
  const recorder = new Recorder();
  await measure(recorder);
  const before = await recorder.cpuBefore;
  const after = await cpuSnapshot();
  const cpu = Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
  const sorted = Float64Array.from(recorder.latencies).sort();
  const jobs = sorted.length;
  const windowS = (recorder.lastEnd - recorder.firstStart) / 1000;
  const ms = (value) => (jobs > 0 ? round(value) : null);
  const ownCpu = cpu.client + cpu.worker + cpu.redis;
  console.log(JSON.stringify({
    scenario: name,
    system: `bullmq ${bullmqVersion}`,
    jobs,
    errors: recorder.errors,
    timeouts: recorder.timeouts,
    duration_s: round(Math.max(windowS, 0)),
    jobs_per_s: windowS > 0 ? round(jobs / windowS, 1) : null,
    p50_ms: ms(percentile(sorted, 0.5)),
    p90_ms: ms(percentile(sorted, 0.9)),
    p99_ms: ms(percentile(sorted, 0.99)),
    p999_ms: ms(percentile(sorted, 0.999)),
    max_ms: ms(sorted[jobs - 1]),
    mean_ms: ms(sorted.reduce((sum, v) => sum + v, 0) / jobs),
    in_flight: inFlight,
    worker: `1 Node.js process, Worker concurrency ${args['worker-concurrency']}`,
    client: '1 Node.js process: Queue.add + QueueEvents',
    redis: `${redisVersion} on redis://${redisUrl.host}`,
    client_cpu_s: round(cpu.client, 2),
    worker_cpu_s: round(cpu.worker, 2),
    redis_cpu_s: round(cpu.redis, 2),
    other_cpu_s: round(Math.max(cpu.machine - ownCpu, 0), 2),
    cpu_ms_per_job: jobs > 0 ? round((ownCpu * 1000) / jobs) : null,
    load_average: loadavg().map((l) => round(l, 2)),
    error_samples: recorder.errorSamples,
  }));
}

await scenario('bullmq-sequential', 1, async (recorder) => {
  const warmup = Number(args.warmup);
  for (let i = 0; i < warmup + Number(args.jobs); i++) {
    if (i === warmup) await recorder.begin();
    const result = await runJob(`seq-${i}`);
    if (i >= warmup) recorder.add(result);
  }
});

// `in-flight` lanes, each submitting its next job as soon as its last one
// completed; the first `in-flight-warmup` jobs are not measured, and no job
// is submitted once `duration` seconds have passed since the first measured
// one. Mirrors jobgate-loadgen's fixed-concurrency pacing.
const inFlight = Number(args['in-flight']);
await scenario(`bullmq-${inFlight}-in-flight`, inFlight, async (recorder) => {
  const warmup = Number(args['in-flight-warmup']);
  let next = 0;
  let deadline = Infinity;
  const lane = async () => {
    for (;;) {
      const index = next++;
      if (index === warmup) {
        recorder.begin();
        deadline = performance.now() + Number(args.duration) * 1000;
      }
      if (performance.now() >= deadline) return;
      const result = await runJob(`flight-${index}`);
      if (index >= warmup) recorder.add(result);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
});

await Promise.all([events.close(), queue.close()]);
redis.disconnect();
worker.disconnect();
