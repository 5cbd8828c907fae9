// Summarises V8 CPU profiles (`npm run bench -- --profile` writes them to bench/results/profiles/<run>/):
// per profile, where the sampled time went — idle (waiting on the network or the database), GC, and
// self time per function and per package.   node test/bench/profile-summary.mjs <dir> [top]
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, topArg] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node test/bench/profile-summary.mjs <dir with .cpuprofile files> [top]');
  process.exit(2);
}
const top = Number(topArg ?? 15);

function where(url) {
  if (!url) return 'v8/native';
  if (url.startsWith('node:')) return 'node core';
  const m = /node_modules\/((@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1];
  const p = /packages\/([^/]+)\//.exec(url);
  return p ? `syncflow ${p[1]}` : url;
}

for (const file of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) {
  const prof = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const nodes = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map();
  // timeDeltas[i] is the time before sample i; attribute it to that sample's node.
  prof.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const byFn = new Map();
  const byPkg = new Map();
  for (const [id, us] of self) {
    const cf = nodes.get(id).callFrame;
    const name = cf.functionName || '(anonymous)';
    const special = name.startsWith('(') && !cf.url;
    const key = special ? name : `${name} ${where(cf.url)}${cf.url ? ':' + (cf.lineNumber + 1) : ''}`;
    byFn.set(key, (byFn.get(key) ?? 0) + us);
    const pkg = special ? name : where(cf.url);
    byPkg.set(pkg, (byPkg.get(pkg) ?? 0) + us);
  }
  const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)} %  ${(us / 1e6).toFixed(2).padStart(7)} s`;
  console.log(`\n== ${file}: ${(total / 1e6).toFixed(1)} s sampled`);
  console.log('-- by package (self time)');
  for (const [k, v] of [...byPkg].sort((x, y) => y[1] - x[1]).slice(0, 12)) console.log(`${pct(v)}  ${k}`);
  console.log(`-- top ${top} functions (self time)`);
  for (const [k, v] of [...byFn].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`${pct(v)}  ${k}`);
}
