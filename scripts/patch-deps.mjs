#!/usr/bin/env node
// Mends a known defect of postgres.js 3.4.9 (and turns on TCP_NODELAY and saves copies in COPY, see below) (porsager/postgres#1208, #1154; fix proposed in #1168,
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
// A query in flight when the server ends its connection (a restart's 57P01) leaves that error behind
// (`errorResponse` is not cleared when the socket closes), and the connection, once reconnected,
// fails its first query with it (porsager/postgres#1223, same root): after a restart of a target
// database each pooled connection failed one later query, e.g. a finalize retried with backoff
// failed up to the pool's size in a row (seen: a job waiting >150 s). The close forgets it.
edits.push(['async function closed(hadError) {\n    incoming = Buffer.alloc(0)', 'async function closed(hadError) {\n    incoming = Buffer.alloc(0)\n    errorResponse = null']);
// A connection that closes with queries in flight kept the one in flight (`query`) and any queued
// behind it (`sent`) once rejected; a transaction's ROLLBACK sent after the close was queued behind the
// stale one and never answered. When the pool reopened that connection for a new transaction, the
// stale entries took the answers of its queries, one behind: the new transaction's first query got its
// answer while the caller waited for the second, forever (seen: a target database stopped mid-load, and
// after it was back a `dlq retry` hung in ensureTargetSchema, its session idle in transaction holding an
// advisory lock). The close now forgets everything in flight (rejecting it), and a query run on a
// closed connection fails at once instead of waiting in line.
edits.push(['    !hadError && (query || sent.length) && error(Errors.connection(\'CONNECTION_CLOSED\', options, socket))',
  `    !hadError && (query || sent.length) && error(Errors.connection('CONNECTION_CLOSED', options, socket))
    /* syncflow: nothing in flight after a close */
    const lost = Errors.connection('CONNECTION_CLOSED', options)
    stream && (stream.destroy(lost), stream = null)
    query && (queryError(query, lost), query = null)
    while (sent.length) queryError(sent.shift(), lost)`]);
edits.push(["      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n",
  "      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n\n    if (socket === null) /* syncflow: closed, not yet reopened */\n      return queryError(q, Errors.connection('CONNECTION_CLOSED', options))\n"]);
// The same in sql.begin(): once its connection closed, the transaction's further queries (its ROLLBACK
// among them) fail at once, as do those it had queued, instead of running on the connection after the
// pool reopened it for someone else, outside any transaction (porsager/postgres#1155 describes both).
const indexEdits = [
  ['      , prepare = null\n\n    try {', '      , prepare = null\n      , closedBy = null /* syncflow: transaction connection closed */\n\n    try {'],
  ['        new Promise((_, reject) => connection.onclose = reject)',
    "        new Promise((_, reject) => connection.onclose = (e) => {\n          closedBy = e || Errors.connection('CONNECTION_CLOSED', options)\n          while (queries.length) queries.shift().reject(closedBy)\n          reject(e)\n        })"],
  ['        q.catch(e => uncaughtError || (uncaughtError = e))\n', '        q.catch(e => uncaughtError || (uncaughtError = e))\n        if (closedBy)\n          return q.reject(closedBy)\n'],
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

// COPY TO STDOUT: the server sends one CopyData message per row. postgres.js pushed each into the
// stream on its own (two Buffer views and a push per row), and copied every socket read whole behind
// the few bytes of a row left over from the read before (Buffer.concat): a third of the source agent's
// CPU on narrow tables. Now consecutive CopyData payloads of one read are compacted in place and
// pushed once, and a message split across reads is completed by copying only its own bytes. Measured
// on 2.2 M rows of order_items: 0.86 s -> 0.5 s of CPU, the same bytes.
edits.push([`  function data(x) {
    if (incomings) {
      incomings.push(x)
      remaining -= x.length
      if (remaining > 0)
        return
    }

    incoming = incomings
      ? Buffer.concat(incomings, length - remaining)
      : incoming.length === 0
        ? x
        : Buffer.concat([incoming, x], incoming.length + x.length)

    while (incoming.length > 4) {
      length = incoming.readUInt32BE(1)
      if (length >= incoming.length) {
        remaining = length - incoming.length
        incomings = [incoming]
        break
      }

      try {
        handle(incoming.subarray(0, length + 1))
      } catch (e) {
        query && (query.cursorFn || query.describeFirst) && write(Sync)
        errored(e)
      }
      incoming = incoming.subarray(length + 1)
      remaining = 0
      incomings = null
    }
  }
`, `  /* syncflow: copy-out coalescing */
  function data(x) {
    if (incomings) {
      // The start of a message came in earlier reads: complete it with its own bytes of this one.
      const have = incomings.reduce((n, b) => n + b.length, 0)
      if (have < 5) {
        if (have + x.length < 5)
          return incomings.push(x)
        length = Buffer.concat([...incomings, x.subarray(0, 5 - have)]).readUInt32BE(1)
      }
      const need = length + 1 - have
      if (x.length < need)
        return incomings.push(x)
      incomings.push(x.subarray(0, need))
      const message = Buffer.concat(incomings, length + 1)
      incomings = null
      parse(message)
      x = x.subarray(need)
    }
    parse(x)
  }

  function parse(x) {
    incoming = x
    let pos = 0, cs = -1, ce = 0
    while (pos < x.length) {
      if (x.length - pos < 5 || (length = x.readUInt32BE(pos + 1)) + 1 > x.length - pos) {
        incomings = [x.subarray(pos)]
        break
      }
      if (x[pos] === 100 && stream && !stream.write) { // CopyOut only: a CopyBoth (replication) reader expects one message per chunk
        cs < 0 && (cs = ce = pos)
        x.copyWithin(ce, pos + 5, pos + length + 1)
        ce += length - 4
      } else {
        cs >= 0 && (copyFlush(x.subarray(cs, ce)), cs = -1)
        try {
          handle(x.subarray(pos, pos + length + 1))
        } catch (e) {
          query && (query.cursorFn || query.describeFirst) && write(Sync)
          errored(e)
        }
      }
      pos += length + 1
    }
    cs >= 0 && copyFlush(x.subarray(cs, ce))
    incoming = Buffer.alloc(0)
  }

  function copyFlush(x) {
    stream && (stream.push(x) || socket.pause())
  }
`]);

// COPY FROM STDIN: each chunk went through the message builder, which copies it into a new Buffer
// (Buffer.concat) behind its 5-byte header: one more copy and allocation of every byte the target
// agent loads. The header and the chunk are written together instead (cork: one writev).
copyEdits.push(['socket.write(b().d().raw(chunk).end(), callback)', 'copyDataWrite(chunk, callback)']);
edits.push(['  function CopyInResponse() {', `  /* syncflow: copy-in without a copy */
  function copyDataWrite(chunk, callback) {
    const header = Buffer.allocUnsafe(5)
    header[0] = 100
    header.writeUInt32BE(chunk.length + 4, 1)
    socket.cork()
    socket.write(header)
    socket.write(chunk, callback)
    socket.uncork()
  }

  function CopyInResponse() {`]);

patchGrpc();
if (!existsSync(pkgDir)) process.exit(0); // not installed (yet)
const version = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).version;
if (version !== WANTED) {
  console.error(`patch-deps: postgres ${version} is not ${WANTED}: not patched (check porsager/postgres#1208 is fixed in it)`);
  process.exit(0);
}
// [file, edits made once, edits made at every occurrence, what the log line says]
for (const [file, fileEdits, everywhere, what] of [
  ['src/connection.js', edits, copyEdits, 'null-socket guard, nothing in flight after a close, TCP_NODELAY, COPY in/out without per-row or per-chunk copies'],
  ['cjs/src/connection.js', edits, copyEdits, 'the same'],
  ['src/index.js', indexEdits, [], 'transactions whose connection closed'],
  ['cjs/src/index.js', indexEdits, [], 'the same'],
]) {
  const path = join(pkgDir, file);
  const before = readFileSync(path, 'utf8');
  let text = before;
  // Each edit once: an install patched by an older version of this script gets only what it lacks.
  for (const [from, to] of fileEdits) if (!text.includes(to)) text = replaceOnce(text, from, to, file);
  for (const [from, to] of everywhere) text = text.split(from).join(to); // CopyIn and CopyBoth streams (a no-op once done)
  if (text === before) continue;
  writeFileSync(path, text);
  console.error(`patch-deps: patched postgres ${version} ${file} (${what})`);
}

function replaceOnce(text, from, to, file) {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + 1) >= 0) {
    console.error(`patch-deps: error: ${file}: expected exactly one occurrence of ${JSON.stringify(from.slice(0, 40))}`);
    process.exit(1);
  }
  return text.slice(0, at) + to + text.slice(at + from.length);
}

// grpc-js frames every message by copying it into a new buffer 5 bytes longer. The agents' Transfer
// serializer (packages/agent/src/stream/batch-frame.ts) writes a batch behind 5 free bytes and marks
// the buffer; framing then fills in the header and sends that buffer as it is: one copy and one
// allocation fewer of every byte a source agent ships. The patched module says so on globalThis, and
// only then does the serializer reserve the bytes (unpatched, batches go out unframed as before).
function patchGrpc() {
  const dir = join(root, 'node_modules', '@grpc', 'grpc-js');
  if (!existsSync(dir)) return;
  const v = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
  if (v !== '1.14.7') {
    console.error(`patch-deps: @grpc/grpc-js ${v} is not 1.14.7: batches are framed by copying (not patched)`);
    return;
  }
  const file = join(dir, 'build', 'src', 'compression-filter.js');
  const before = readFileSync(file, 'utf8');
  const GUARD = '/* syncflow: pre-framed */';
  if (before.includes(GUARD)) return;
  let text = replaceOnce(before, '"use strict";\n', `"use strict";\n${GUARD}
globalThis[Symbol.for('syncflow.grpc.preframed')] = true;
function syncflowPreframed(m) { m.writeUInt8(0, 0); m.writeUInt32BE(m.length - 5, 1); return m; }
`, file);
  text = replaceOnce(text, `    async writeMessage(message, compress) {
        let messageBuffer = message;`, `    async writeMessage(message, compress) {
        if (message.syncflowPreframed === true) {
            if (!compress) return syncflowPreframed(message);
            message = message.subarray(5);
        }
        let messageBuffer = message;`, file);
  text = replaceOnce(text, `    async writeMessage(message, compress) {
        const output = Buffer.allocUnsafe(message.length + 5);`, `    async writeMessage(message, compress) {
        if (message.syncflowPreframed === true) return syncflowPreframed(message);
        const output = Buffer.allocUnsafe(message.length + 5);`, file);
  writeFileSync(file, text);
  console.error(`patch-deps: patched @grpc/grpc-js ${v} build/src/compression-filter.js (pre-framed Transfer batches)`);
}
