import { describe, expect, it } from 'vitest';
import { grpc, loadProtos } from '../../packages/shared/src/index.js';
import { encodeBatch, transferSerializer } from '../../packages/agent/src/stream/batch-frame.js';

// The agents' own Transfer batch encoding must decode, with the generic protobuf decoder the target
// uses, to exactly what the generic encoder would have sent.
const service = (loadProtos().proto.syncflow.v1.AgentService as unknown as grpc.ServiceClientConstructor).service;
const decode = (b: Buffer) => service.Transfer!.requestDeserialize(b) as { batch: { seq: string; data: Buffer; rows: string; first_key: { values: string[] }; last_key: { values: string[] } } };
const generic = service.Transfer!.requestSerialize as (m: object) => Buffer;

describe('Transfer batch encoding', () => {
  const cases = [
    { seq: 1, data: Buffer.from('1\tx\n2\ty\n'), rows: 2, first_key: { values: ['1'] }, last_key: { values: ['2'] } },
    { seq: 300, data: Buffer.alloc(0), rows: 0, first_key: { values: [] }, last_key: { values: [] } },
    { seq: 2 ** 40 + 7, data: Buffer.alloc(200_000, 0xab), rows: 129, first_key: { values: ['ü–€ key', ''] }, last_key: { values: ['z'.repeat(300), '0'] } },
    { seq: '17', data: Buffer.from([0, 1, 2, 255]), rows: '3', first_key: null, last_key: null },
  ];
  it('decodes to the same message as the generic encoding, unframed and behind 5 reserved bytes', () => {
    for (const b of cases) {
      const ours = encodeBatch(b, 0);
      const theirs = generic({ batch: b });
      expect(decode(ours)).toEqual(decode(theirs));
      expect(decode(ours).batch.data.equals(b.data)).toBe(true);
      expect(decode(encodeBatch(b, 5).subarray(5))).toEqual(decode(theirs));
    }
  });
  it('leaves every other Transfer message to the generic encoder, and refuses a negative count', () => {
    const s = transferSerializer(generic);
    const end = { end: { total_rows: 5, total_batches: 1 } };
    expect(s(end).equals(generic(end))).toBe(true);
    expect(() => encodeBatch({ ...cases[0]!, rows: -1 }, 0)).toThrow(/non-negative/);
  });
});
