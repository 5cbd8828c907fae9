import { grpc, loadProtos } from '@syncflow/shared';

/**
 * The Transfer stream's batches, serialized without the two whole-batch copies of the generic path
 * (protobufjs' writer, then grpc-js' framing into a new buffer): one buffer of the final size gets
 * the gRPC frame header space, the protobuf prefix and the batch's bytes. grpc-js, patched by
 * scripts/patch-deps.mjs, sends a buffer marked `syncflowPreframed` as it is after filling in the 5
 * header bytes, and says so by setting PREFRAMED; without the patch the same encoding goes out
 * without the header space (one copy then, as protobufjs does). Every other message of the stream
 * goes the generic way.
 */
const PREFRAMED = Symbol.for('syncflow.grpc.preframed');
const FRAME_HEADER = 5;

interface BatchOut { seq: number | string; data: Buffer; rows: number | string; first_key: { values: string[] } | null; last_key: { values: string[] } | null }

function varintLength(n: number): number {
  let len = 1;
  while (n >= 128) { n = Math.floor(n / 128); len++; }
  return len;
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 128) { buf[pos++] = (n % 128) | 128; n = Math.floor(n / 128); }
  buf[pos++] = n;
  return pos;
}

/** A non-negative integer field value (int64 arrives as number or decimal string). */
function count(v: number | string): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`batch field is not a non-negative integer: ${String(v)}`);
  return n;
}

const keyLength = (values: readonly string[]) => values.reduce((s, v) => { const l = Buffer.byteLength(v, 'utf8'); return s + 1 + varintLength(l) + l; }, 0);

function writeKey(buf: Buffer, pos: number, tag: number, values: readonly string[]): number {
  buf[pos++] = tag;
  pos = writeVarint(buf, pos, keyLength(values));
  for (const v of values) {
    buf[pos++] = 0x0a; // Key.values = 1, length-delimited
    pos = writeVarint(buf, pos, Buffer.byteLength(v, 'utf8'));
    pos += buf.write(v, pos, 'utf8');
  }
  return pos;
}

/** TransferMessage { batch (2): Batch { seq (1), data (2), rows (3), first_key (4), last_key (5) } }, behind `reserve` free bytes. */
export function encodeBatch(b: BatchOut, reserve: number): Buffer {
  const seq = count(b.seq), rows = count(b.rows);
  // A key left null is left out, as protobufjs does (an empty one is written empty).
  const keyField = (k: { values: string[] } | null) => (k ? 1 + varintLength(keyLength(k.values)) + keyLength(k.values) : 0);
  const body = 1 + varintLength(seq) + 1 + varintLength(b.data.length) + b.data.length + 1 + varintLength(rows)
    + keyField(b.first_key) + keyField(b.last_key);
  const buf = Buffer.allocUnsafe(reserve + 1 + varintLength(body) + body);
  let p = reserve;
  buf[p++] = 0x12; // TransferMessage.batch = 2
  p = writeVarint(buf, p, body);
  buf[p++] = 0x08; p = writeVarint(buf, p, seq);
  buf[p++] = 0x12; p = writeVarint(buf, p, b.data.length);
  p += b.data.copy(buf, p);
  buf[p++] = 0x18; p = writeVarint(buf, p, rows);
  if (b.first_key) p = writeKey(buf, p, 0x22, b.first_key.values);
  if (b.last_key) p = writeKey(buf, p, 0x2a, b.last_key.values);
  if (p !== buf.length) throw new Error('batch encoding length mismatch');
  return buf;
}

/** The Transfer request serializer: batches by encodeBatch, pre-framed when grpc-js takes them so. */
export function transferSerializer(generic: (m: object) => Buffer): (m: { batch?: BatchOut | null; [field: string]: unknown }) => Buffer {
  return (m) => {
    if (!m.batch) return generic(m);
    const framed = (globalThis as Record<symbol, unknown>)[PREFRAMED] === true;
    const out = encodeBatch(m.batch, framed ? FRAME_HEADER : 0);
    if (framed) (out as Buffer & { syncflowPreframed?: boolean }).syncflowPreframed = true;
    return out;
  };
}

let ctor: grpc.ServiceClientConstructor | undefined;
/** AgentService's client class with the Transfer serializer above. */
export function agentClientClass(): grpc.ServiceClientConstructor {
  if (!ctor) {
    const base = loadProtos().proto.syncflow.v1.AgentService as unknown as grpc.ServiceClientConstructor;
    const transfer = base.service.Transfer!;
    ctor = grpc.makeClientConstructor({
      ...base.service,
      Transfer: { ...transfer, requestSerialize: transferSerializer(transfer.requestSerialize as (m: object) => Buffer) },
    }, 'AgentService');
  }
  return ctor;
}
