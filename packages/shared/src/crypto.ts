import { createCipheriv, createDecipheriv, randomBytes, createHash } from 'node:crypto';
import { SyncflowError, ErrorKind } from './errors.js';

/** AES-256-GCM sealing of connection URLs with the key shared by the coordinator and agents. */
export class Sealer {
  readonly #key: Buffer;
  constructor(key: Buffer) {
    if (key.length !== 32) throw new SyncflowError(ErrorKind.InvalidArgument, 'SYNCFLOW_SECRET_KEY must be 32 bytes (base64 or hex)');
    this.#key = key;
  }
  static fromString(s: string): Sealer {
    const key = /^[0-9a-fA-F]{64}$/.test(s) ? Buffer.from(s, 'hex') : Buffer.from(s, 'base64');
    return new Sealer(key);
  }
  /** A short, non-secret fingerprint of the key, to tell mismatched keys apart in logs. */
  fingerprint(): string {
    return createHash('sha256').update(this.#key).digest('hex').slice(0, 8);
  }
  seal(plain: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.#key, iv);
    const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
    return ['v1', iv.toString('base64'), c.getAuthTag().toString('base64'), body.toString('base64')].join('.');
  }
  open(sealed: string): string {
    const [v, iv, tag, body] = sealed.split('.');
    if (v !== 'v1' || !iv || !tag || body === undefined) throw new SyncflowError(ErrorKind.InvalidArgument, 'sealed value is malformed');
    try {
      const d = createDecipheriv('aes-256-gcm', this.#key, Buffer.from(iv, 'base64'));
      d.setAuthTag(Buffer.from(tag, 'base64'));
      return Buffer.concat([d.update(Buffer.from(body, 'base64')), d.final()]).toString('utf8');
    } catch (e) {
      throw new SyncflowError(ErrorKind.PermissionDenied, 'cannot open sealed value: wrong SYNCFLOW_SECRET_KEY?', { code: 'bad_key', cause: e });
    }
  }
}
