// Preloaded into the agents by the bench's --profile run (NODE_OPTIONS=--require …; Node 20 does not
// accept --cpu-prof in NODE_OPTIONS): V8 CPU profile from start to exit, written to
// $BENCH_CPU_PROF_DIR/<pid>.cpuprofile. In-process inspector sessions answer synchronously, so the
// profile is written inside the 'exit' handler.
'use strict';
const inspector = require('node:inspector');
const { mkdirSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dir = process.env.BENCH_CPU_PROF_DIR;
if (dir) {
  const session = new inspector.Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 1000 });
  session.post('Profiler.start');
  process.on('exit', () => {
    session.post('Profiler.stop', (err, res) => {
      if (err) return;
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, `${process.env.SYNCFLOW_AGENT_ID ?? 'node'}-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  });
}
