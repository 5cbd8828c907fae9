import { context, propagation, trace, SpanStatusCode, type Span, type Context, type Tracer, SpanKind } from '@opentelemetry/api';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import type { Metadata } from '@grpc/grpc-js';

export { context, trace, SpanKind, type Span, type Context };

let provider: NodeTracerProvider | undefined;

/**
 * Starts tracing for this process. Spans are always created (so every job has a trace id);
 * they are exported over OTLP/HTTP only when an endpoint is configured (Jaeger takes OTLP).
 */
export function initTelemetry(serviceName: string, endpoint?: string): void {
  if (provider) return;
  const spanProcessors = endpoint
    ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${endpoint.replace(/\/$/, '')}/v1/traces` }), { scheduledDelayMillis: 500 })]
    : [];
  provider = new NodeTracerProvider({ resource: resourceFromAttributes({ 'service.name': serviceName }), spanProcessors });
  provider.register();
}

export async function shutdownTelemetry(): Promise<void> {
  await provider?.shutdown().catch(() => undefined);
}

export const tracer = (): Tracer => trace.getTracer('syncflow');

/** W3C trace context as a plain map (proto `map<string,string>`, NATS headers, gRPC metadata). */
export function injectContext(ctx: Context = context.active()): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

export function extractContext(carrier: Record<string, string | undefined> | undefined): Context {
  return propagation.extract(context.active(), carrier ?? {});
}

export function metadataCarrier(md: Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ['traceparent', 'tracestate']) {
    const v = md.get(k)[0];
    if (v !== undefined) out[k] = v.toString();
  }
  return out;
}

/** Runs fn inside a span (child of `parent` or the active context); records failures. */
export async function withSpan<T>(name: string, attrs: Record<string, string | number | boolean>, fn: (span: Span) => Promise<T>,
  opts: { parent?: Context; kind?: SpanKind } = {}): Promise<T> {
  const span = tracer().startSpan(name, { attributes: attrs, kind: opts.kind }, opts.parent ?? context.active());
  const ctx = trace.setSpan(opts.parent ?? context.active(), span);
  try {
    return await context.with(ctx, () => fn(span));
  } catch (e) {
    span.recordException(e as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message });
    throw e;
  } finally {
    span.end();
  }
}
