#!/usr/bin/env node
// Call gpukilld from Node with @grpc/grpc-js, loading the contract from proto/ at run time
// (@grpc/proto-loader): the standard health check, the GPUs, three Watch snapshots, and
// optionally a kill as yourself.
//
//     npm ci && node example.js [--socket PATH] [--kill PID]
//
// Over the Unix socket the daemon knows who you are from the kernel (the socket's peer
// credentials): Kill acts as you, on your own processes only unless you are an admin.

'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 ? process.argv[at + 1] : fallback;
}

const socket = option('--socket', process.env.GPUKILL_SOCKET || '/run/gpukill/gpukilld.sock');
const protoDir = option('--proto', path.join(__dirname, '..', '..', 'proto', 'proto'));
const kill = option('--kill', null);

const definition = protoLoader.loadSync('gpukill/v1/gpukill.proto', {
  includeDirs: [protoDir],
  keepCase: true, // field names as in the .proto
  longs: String, // uint64 and int64 as decimal strings
  enums: String, // enum values by name
  defaults: true,
  oneofs: true,
});
const gpukill = grpc.loadPackageDefinition(definition).gpukill.v1;
const target = `unix:${socket}`;
const daemon = new gpukill.GpuKillService(target, grpc.credentials.createInsecure());

// grpc.health.v1.Health/Check without its .proto: the request is one string field (empty
// for the whole server), the answer one enum field.
function healthCheck(service) {
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  const name = Buffer.from(service);
  const encode = () => (name.length ? Buffer.concat([Buffer.from([0x0a, name.length]), name]) : Buffer.alloc(0));
  const decode = (bytes) => (bytes.length >= 2 && bytes[0] === 0x08 ? bytes[1] : 0);
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest('/grpc.health.v1.Health/Check', encode, decode, {}, (error, status) => {
      client.close();
      return error ? reject(error) : resolve(['UNKNOWN', 'SERVING', 'NOT_SERVING'][status] || status);
    }),
  );
}

const call = (method, request) =>
  new Promise((resolve, reject) =>
    daemon[method](request, (error, answer) => (error ? reject(error) : resolve(answer))),
  );

async function main() {
  console.log(`health: ${await healthCheck('')}`);
  const { snapshot } = await call('List', {});
  console.log(`host ${snapshot.host}, snapshot ${snapshot.sequence}`);
  for (const gpu of snapshot.gpus) {
    const used = gpu.memory_used_bytes === null ? '-' : Math.floor(Number(gpu.memory_used_bytes) / 2 ** 20);
    console.log(`GPU ${gpu.index}: ${gpu.name} ${used} MiB used`);
  }

  // Watch sends the latest snapshot at once, then each new one; cancel when done.
  await new Promise((resolve, reject) => {
    const stream = daemon.Watch({});
    let seen = 0;
    stream.on('data', ({ snapshot: update, skipped }) => {
      console.log(`watch: snapshot ${update.sequence}, ${update.gpus.length} GPUs, ${skipped} skipped`);
      if (++seen === 3) {
        stream.cancel();
        resolve();
      }
    });
    stream.on('error', (error) => (error.code === grpc.status.CANCELLED ? resolve() : reject(error)));
  });

  if (kill !== null) {
    const answer = await call('Kill', { pid: Number(kill) });
    for (const result of answer.results) {
      const outcome = result.outcome.replace(/^KILL_OUTCOME_/, '');
      console.log(`kill ${result.target.pid}: ${outcome}${result.reason ? ` (${result.reason})` : ''}`);
    }
  }
  daemon.close();
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
