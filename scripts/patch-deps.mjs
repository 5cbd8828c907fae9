#!/usr/bin/env node
// Mends a known defect of postgres.js 3.4.9 (and turns on TCP_NODELAY, see below) (porsager/postgres#1208, #1154; fix proposed in #1168,
// not released): small writes are deferred with setImmediate, and when the connection closes first
// (the database stopped or restarted mid-transaction) the deferred write runs on a null socket and
// throws an uncatchable TypeError that kills the agent. The teardown also clears the timer without
// forgetting it, so a pooled connection that reconnects never flushes a small write again: its
// queries hang. Run by `postinstall` and by scripts/install-deps.sh; idempotent; refuses to touch
// any other version (upgrade postgres.js and drop this script once the fix is released).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkgDir = join(root, 'node_modules', 'postgres');
const MARK = '/* syncflow: null-socket guard */';
const WANTED = '3.4.9';

const edits = [
  // A write after the socket closed (a transaction's ROLLBACK on its dead connection): fail the query.
  ['function nextWrite(fn) {\n    const x = socket.write(chunk, fn)',
    `function nextWrite(fn) {\n    ${MARK}\n    if (socket === null) { chunk = nextWriteTimer = null; errored(Errors.connection('CONNECTION_CLOSED', options)); return false }\n    const x = socket.write(chunk, fn)`],
  // Teardown forgets the pending write and its timer, so a reconnected connection flushes again.
  ['clearImmediate(nextWriteTimer)\n    if (socket) {', 'clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    if (socket) {'],
  ['clearImmediate(nextWriteTimer)\n    socket.removeListener', 'clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null\n    socket.removeListener'],
];
// TCP_NODELAY on every connection (postgres.js sets none): it writes a COPY's data and its CopyDone
// separately, and with Nagle's algorithm the second waits for the server's delayed ACK (~40 ms on
// Linux), twice per COPY; measured, a 200,000-row apply in 4,000-row batches took 17-20 s with Nagle
// and 9-10 s without. Node applies setNoDelay on connect when it is called before.
edits.push(['? (await Promise.resolve(options.socket(options)))\n        : new net.Socket()',
  '? (await Promise.resolve(options.socket(options)))\n        : new net.Socket().setNoDelay(true)']);
// COPY FROM STDIN streams write to the socket directly: fail the write instead of throwing.
const copyEdits = [
  ['write(chunk, encoding, callback) {\n        socket.write(b().d().raw(chunk).end(), callback)',
    "write(chunk, encoding, callback) {\n        if (socket === null) return callback(Errors.connection('CONNECTION_CLOSED', options))\n        socket.write(b().d().raw(chunk).end(), callback)"],
  ['callback(error)\n        socket.write(b().f().str(error + b.N).end())', 'callback(error)\n        socket && socket.write(b().f().str(error + b.N).end())'],
  ['final(callback) {\n        socket.write(b().c().end())', "final(callback) {\n        if (socket === null) return callback(Errors.connection('CONNECTION_CLOSED', options))\n        socket.write(b().c().end())"],
];

if (!existsSync(pkgDir)) process.exit(0); // not installed (yet)
const version = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).version;
if (version !== WANTED) {
  console.error(`patch-deps: postgres ${version} is not ${WANTED}: not patched (check porsager/postgres#1208 is fixed in it)`);
  process.exit(0);
}
for (const file of ['src/connection.js', 'cjs/src/connection.js']) {
  const path = join(pkgDir, file);
  const before = readFileSync(path, 'utf8');
  let text = before;
  // Each edit once: an install patched by an older version of this script gets only what it lacks.
  for (const [from, to] of edits) if (!text.includes(to)) text = replaceOnce(text, from, to, file);
  for (const [from, to] of copyEdits) text = text.split(from).join(to); // CopyIn and CopyBoth streams (a no-op once done)
  if (text === before) continue;
  writeFileSync(path, text);
  console.error(`patch-deps: patched postgres ${version} ${file} (null-socket guard, TCP_NODELAY)`);
}

function replaceOnce(text, from, to, file) {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + 1) >= 0) {
    console.error(`patch-deps: error: ${file}: expected exactly one occurrence of ${JSON.stringify(from.slice(0, 40))}`);
    process.exit(1);
  }
  return text.slice(0, at) + to + text.slice(at + from.length);
}
