/**
 * Small input checks shared by the domain services. Each throws AppError
 * VALIDATION_FAILED with the offending field in `details.field`.
 */
import { AppError } from '../errors.js';

/** Rejects anything but a plain JSON object (arrays, null, strings…). */
export function requireObject(value: unknown, what = 'body'): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new AppError('VALIDATION_FAILED', `${what} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

export function invalid(field: string, message: string): AppError {
  return new AppError('VALIDATION_FAILED', `${field}: ${message}`, { details: { field } });
}

// Control characters (C0, DEL, C1) and the Unicode line/paragraph separators.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** A display name: 1–`max` characters after trimming, no control characters. */
export function requireName(value: unknown, field = 'name', max = 128): string {
  if (typeof value !== 'string') throw invalid(field, 'must be a string');
  const name = value.trim();
  if (name.length < 1 || name.length > max) throw invalid(field, `must be 1 to ${max} characters`);
  if (CONTROL_CHARACTERS.test(name)) throw invalid(field, 'must not contain control characters');
  return name;
}

export function requireBoolean(value: unknown, field: string): boolean {
  if (typeof value !== 'boolean') throw invalid(field, 'must be true or false');
  return value;
}

export function optionalBoolean(value: unknown, field: string, fallback: boolean): boolean {
  return value === undefined ? fallback : requireBoolean(value, field);
}

export function requireInteger(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(field, `must be an integer from ${min} to ${max}`);
  }
  return value;
}

/** An ISO-8601 date-time string, returned normalised; null stays null. */
export function optionalDate(value: unknown, field: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || Number.isNaN(Date.parse(value)))
    throw invalid(field, 'must be an ISO 8601 date-time');
  return new Date(value).toISOString();
}

/** Rejects fields not in `allowed`, so a typo never passes silently. */
export function rejectUnknownFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) throw invalid(key, 'is not a known field');
  }
}
