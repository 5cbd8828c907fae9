import { createServer, type Server } from 'node:http';
import { gunzipSync } from 'node:zlib';

export interface ReceivedSpan { traceId: string; name: string; service: string }

/** An in-process OTLP/HTTP (JSON) trace receiver: what Jaeger's OTLP port would get. */
export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  private constructor(private server: Server, readonly port: number) {}

  static async start(): Promise<OtlpReceiver> {
    let self: OtlpReceiver | undefined;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let body = Buffer.concat(chunks);
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
        try { self?.ingest(JSON.parse(body.toString('utf8'))); } catch { /* not JSON: ignored */ }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const addr = server.address();
    self = new OtlpReceiver(server, typeof addr === 'object' && addr ? addr.port : 0);
    return self;
  }

  get endpoint(): string { return `http://127.0.0.1:${this.port}`; }

  private ingest(body: { resourceSpans?: { resource?: { attributes?: { key: string; value: { stringValue?: string } }[] }; scopeSpans?: { spans?: { traceId: string; name: string }[] }[] }[] }) {
    for (const rs of body.resourceSpans ?? []) {
      const service = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
      for (const ss of rs.scopeSpans ?? []) for (const s of ss.spans ?? []) {
        this.spans.push({ traceId: normalise(s.traceId), name: s.name, service });
      }
    }
  }

  servicesOf(traceId: string): Set<string> {
    return new Set(this.spans.filter((s) => s.traceId === traceId).map((s) => s.service));
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** OTLP/JSON carries ids as hex; some encoders use base64. */
function normalise(id: string): string {
  return /^[0-9a-f]{32}$/i.test(id) ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex');
}
