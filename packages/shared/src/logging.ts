import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * One JSON logger per process. Secrets and row values never reach it: connection URLs
 * are redacted by key name, and callers log keys and counts, never row data. Lines are written
 * synchronously (pino's default buffers them): a process killed with -9 keeps its last lines, often
 * the ones an operator needs (seen: a killed agent's last batches missing from its log). At the
 * default level a process logs per task and per event, not per row or batch, so it costs nothing.
 */
export function createLogger(name: string, level = 'info'): Logger {
  return pino({
    name,
    level,
    base: { svc: name, pid: process.pid },
    redact: {
      paths: ['url', '*.url', 'sealed_url', '*.sealed_url', 'password', '*.password', 'token', '*.token', 'authorization', '*.authorization', 'connectionString'],
      censor: '[redacted]',
    },
    timestamp: pino.stdTimeFunctions.isoTime,
  }, pino.destination({ dest: 1, sync: true }));
}

/** Removes user:password from any postgres URL inside a message before it is logged or returned. */
export function scrubSecrets(text: string): string {
  return text.replace(/(postgres(?:ql)?:\/\/)[^@\s/]*@/gi, '$1***@');
}

/** host:port/dbname of a postgres URL, safe to show. */
export function describeDatabase(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '5432'}${u.pathname}`;
  } catch {
    return '(unparsable url)';
  }
}
