import { status as GrpcStatus, type ServiceError, Metadata } from '@grpc/grpc-js';

/**
 * The few error kinds syncflow knows. Whether to retry is decided from `retryable`
 * (set from SQLSTATE classes and gRPC codes in one place below), never from message text.
 */
export const ErrorKind = {
  InvalidArgument: 'invalid_argument',
  NotFound: 'not_found',
  AlreadyExists: 'already_exists',
  PermissionDenied: 'permission_denied',
  Unauthenticated: 'unauthenticated',
  FailedPrecondition: 'failed_precondition',
  Unavailable: 'unavailable',
  Cancelled: 'cancelled',
  DataError: 'data_error',
  Internal: 'internal',
} as const;
export type ErrorKind = (typeof ErrorKind)[keyof typeof ErrorKind];

export class SyncflowError extends Error {
  readonly kind: ErrorKind;
  /** SQLSTATE for database errors, else a short stable code. */
  readonly code: string;
  readonly retryable: boolean;
  /** Retrying before this many ms is refused anyway (an open circuit breaker's time to its next probe). */
  readonly retryAfterMs?: number;
  override readonly cause?: unknown;

  constructor(kind: ErrorKind, message: string, opts: { code?: string; retryable?: boolean; cause?: unknown; retryAfterMs?: number } = {}) {
    super(message);
    this.name = 'SyncflowError';
    this.kind = kind;
    this.code = opts.code ?? kind;
    this.retryable = opts.retryable ?? (kind === ErrorKind.Unavailable);
    this.cause = opts.cause;
    if (opts.retryAfterMs !== undefined) this.retryAfterMs = opts.retryAfterMs;
  }
}

export const invalidArgument = (message: string, code?: string) => new SyncflowError(ErrorKind.InvalidArgument, message, { code });
export const notFound = (message: string) => new SyncflowError(ErrorKind.NotFound, message);
export const failedPrecondition = (message: string, code?: string) => new SyncflowError(ErrorKind.FailedPrecondition, message, { code });
export const unavailable = (message: string, cause?: unknown) => new SyncflowError(ErrorKind.Unavailable, message, { cause, retryable: true });

/** SQLSTATE classes (first two characters) that say "try again later". */
const RETRYABLE_SQLSTATE_CLASSES = new Set(['08', '40', '53', '57', '58']);
/** Specific SQLSTATEs that are not retryable even inside a retryable class. */
const NOT_RETRYABLE_SQLSTATES = new Set(['57014' /* query_canceled by us */]);

function kindOfSqlState(code: string): ErrorKind {
  const cls = code.slice(0, 2);
  if (code === '42P01' || code === '42703' || code === '3D000' || code === '42704') return ErrorKind.NotFound;
  if (code === '42501' || code === '28000' || code === '28P01') return ErrorKind.PermissionDenied;
  if (cls === '22' || cls === '23') return ErrorKind.DataError;
  if (RETRYABLE_SQLSTATE_CLASSES.has(cls)) return ErrorKind.Unavailable;
  if (cls === '42') return ErrorKind.InvalidArgument;
  return ErrorKind.Internal;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTFOUND', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'EAI_AGAIN']);

const GRPC_TO_KIND: Record<number, ErrorKind> = {
  [GrpcStatus.INVALID_ARGUMENT]: ErrorKind.InvalidArgument,
  [GrpcStatus.NOT_FOUND]: ErrorKind.NotFound,
  [GrpcStatus.ALREADY_EXISTS]: ErrorKind.AlreadyExists,
  [GrpcStatus.PERMISSION_DENIED]: ErrorKind.PermissionDenied,
  [GrpcStatus.UNAUTHENTICATED]: ErrorKind.Unauthenticated,
  [GrpcStatus.FAILED_PRECONDITION]: ErrorKind.FailedPrecondition,
  [GrpcStatus.UNAVAILABLE]: ErrorKind.Unavailable,
  [GrpcStatus.DEADLINE_EXCEEDED]: ErrorKind.Unavailable,
  [GrpcStatus.RESOURCE_EXHAUSTED]: ErrorKind.Unavailable,
  [GrpcStatus.ABORTED]: ErrorKind.Unavailable,
  [GrpcStatus.CANCELLED]: ErrorKind.Cancelled,
  [GrpcStatus.DATA_LOSS]: ErrorKind.DataError,
};

const KIND_TO_GRPC: Record<ErrorKind, GrpcStatus> = {
  invalid_argument: GrpcStatus.INVALID_ARGUMENT,
  not_found: GrpcStatus.NOT_FOUND,
  already_exists: GrpcStatus.ALREADY_EXISTS,
  permission_denied: GrpcStatus.PERMISSION_DENIED,
  unauthenticated: GrpcStatus.UNAUTHENTICATED,
  failed_precondition: GrpcStatus.FAILED_PRECONDITION,
  unavailable: GrpcStatus.UNAVAILABLE,
  cancelled: GrpcStatus.CANCELLED,
  data_error: GrpcStatus.FAILED_PRECONDITION,
  internal: GrpcStatus.INTERNAL,
};

function isGrpcError(e: unknown): e is ServiceError {
  return typeof e === 'object' && e !== null && 'code' in e && typeof (e as ServiceError).code === 'number' && 'metadata' in e;
}

/** Turns anything thrown (postgres.js, grpc-js, node) into a SyncflowError; the one place retry is decided. */
export function toSyncflowError(e: unknown, context?: string): SyncflowError {
  if (e instanceof SyncflowError) return e;
  const prefix = context ? `${context}: ` : '';
  if (isGrpcError(e)) {
    const kind = GRPC_TO_KIND[e.code] ?? ErrorKind.Internal;
    const code = e.metadata?.get('sf-code')?.[0]?.toString() ?? kind;
    const retry = e.metadata?.get('sf-retryable')?.[0]?.toString();
    const after = Number(e.metadata?.get('sf-retry-after-ms')?.[0]?.toString() ?? NaN);
    return new SyncflowError(kind, prefix + (e.details || e.message), {
      code, cause: e, retryable: retry !== undefined ? retry === 'true' : kind === ErrorKind.Unavailable,
      ...Number.isFinite(after) && after >= 0 ? { retryAfterMs: after } : {},
    });
  }
  const anyE = e as { code?: unknown; message?: unknown; name?: string; severity?: unknown };
  const message = typeof anyE?.message === 'string' ? anyE.message : String(e);
  if (anyE && typeof anyE.code === 'string') {
    // postgres.js server errors carry `severity`; the code is a SQLSTATE.
    if (anyE.name === 'PostgresError' || (typeof anyE.severity === 'string' && /^[0-9A-Z]{5}$/.test(anyE.code))) {
      const kind = kindOfSqlState(anyE.code);
      return new SyncflowError(kind, prefix + message, {
        code: anyE.code, cause: e,
        retryable: kind === ErrorKind.Unavailable && !NOT_RETRYABLE_SQLSTATES.has(anyE.code),
      });
    }
    if (NETWORK_CODES.has(anyE.code)) {
      return new SyncflowError(ErrorKind.Unavailable, prefix + message, { code: anyE.code, cause: e, retryable: true });
    }
  }
  return new SyncflowError(ErrorKind.Internal, prefix + message, { cause: e, retryable: false });
}

/** The gRPC answer for an error: right status code, our code and retryability in trailers. */
export function toGrpcError(e: unknown): Partial<ServiceError> {
  const err = toSyncflowError(e);
  const metadata = new Metadata();
  metadata.set('sf-code', err.code);
  metadata.set('sf-retryable', String(err.retryable));
  if (err.retryAfterMs !== undefined) metadata.set('sf-retry-after-ms', String(Math.round(err.retryAfterMs)));
  return { code: KIND_TO_GRPC[err.kind], details: err.message, metadata };
}
