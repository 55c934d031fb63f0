// The BullMQ worker of the comparison: a no-op processor, in its own process
// (started by bench.mjs) so that, as with jobgate's worker, the client and
// the worker each have an event loop and can run on different cores.
import { Worker } from 'bullmq';

const [queueName, host, port, concurrency] = process.argv.slice(2);

const worker = new Worker(queueName, async () => null, {
  connection: { host, port: Number(port), maxRetriesPerRequest: null },
  concurrency: Number(concurrency),
});
worker.on('error', (err) => console.error(`worker: ${err.message}`));
await worker.waitUntilReady();

// bench.mjs asks for this process's CPU time around each scenario.
process.on('message', (message) => {
  if (message === 'cpu') {
    process.send({ cpu: process.cpuUsage() });
  }
});
process.on('disconnect', async () => {
  await worker.close();
  process.exit(0);
});
process.send({ ready: true });
