/**
 * The one error handler: answers `{error: {code, message}}` with the code's
 * status, logs 5xx with the cause, and never sends the cause out.
 */
import type { FastifyError, FastifyInstance, FastifyReply } from 'fastify';
import { AppError, toAppError } from '../errors.js';
import { validationFailure } from './validation.js';

/** Maps fastify's own errors (body parsing, limits) onto the closed table. */
export function normalizeHttpError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  const invalidInput = validationFailure(err);
  if (invalidInput) return invalidInput;
  const fe = err as Partial<FastifyError> | null;
  switch (fe?.code) {
    case 'FST_ERR_MAX_PARAM_LENGTH':
      // An id longer than any real id is simply an unknown id.
      return new AppError('NOT_FOUND', 'not found', { cause: err });
    case 'FST_ERR_BAD_URL':
      return new AppError('VALIDATION_FAILED', 'the URL is malformed', { cause: err });
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new AppError('PAYLOAD_TOO_LARGE', 'the request body is too large', { cause: err });
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new AppError('VALIDATION_FAILED', 'the request body is not valid JSON', { cause: err });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new AppError('VALIDATION_FAILED', 'the request body must be application/json', { cause: err });
  }
  if (err instanceof SyntaxError)
    return new AppError('VALIDATION_FAILED', 'the request body is not valid JSON', { cause: err });
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    if (fe.statusCode === 413)
      return new AppError('PAYLOAD_TOO_LARGE', 'the request body is too large', { cause: err });
    if (fe.statusCode === 404) return new AppError('NOT_FOUND', 'not found', { cause: err });
    return new AppError('VALIDATION_FAILED', fe.message ?? 'bad request', { cause: err });
  }
  return toAppError(err);
}

/**
 * Sends an AppError in the public shape `{error: {code, message, field?, details?}}`
 * (`field` repeats `details.field`, which older clients read).
 */
export function sendError(reply: FastifyReply, error: AppError): FastifyReply {
  const body: {
    error: { code: string; message: string; field?: unknown; details?: Record<string, unknown> };
  } = {
    error: { code: error.code, message: error.message },
  };
  if (error.details?.field !== undefined) body.error.field = error.details.field;
  if (error.details !== undefined) body.error.details = error.details;
  const retryAfter = error.details?.retryAfterSeconds;
  if (typeof retryAfter === 'number' && Number.isFinite(retryAfter) && retryAfter > 0)
    reply.header('retry-after', String(Math.ceil(retryAfter)));
  return reply.code(error.status).type('application/json; charset=utf-8').send(body);
}

export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err, request, reply) => {
    const error = normalizeHttpError(err);
    if (error.status >= 500)
      request.log.error({ err: error.cause ?? error, code: error.code }, 'request failed');
    return sendError(reply, error);
  });
  app.setNotFoundHandler((_request, reply) => sendError(reply, new AppError('NOT_FOUND', 'no such route')));
}
