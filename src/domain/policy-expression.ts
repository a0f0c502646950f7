/**
 * CEL match expressions of traffic policies (docs/pipeline.md "The policy
 * stages"), on `@marcbachmann/cel-js`: compiled and type-checked once when a
 * rule is saved, evaluated per request against {@link PolicyRequestFacts}.
 *
 * Variables: `method`, `host`, `path`, `ip`, `listener` (strings; `host` and
 * `ip` are '' when unknown, `listener` is the listener's name), `query` and
 * `headers` (`map<string, string>`, header names lower case, repeated query
 * keys keep their first value). Helpers: `path_prefix(path, "/api")` (whole
 * segments: `/api` matches `/api` and `/api/x`, not `/apix`) and
 * `ip_in(ip, "10.0.0.0/8")` (IPv4 or IPv6 CIDR, or a single address). An
 * empty expression matches every request.
 *
 * Cost is bounded at compile time: at most {@link MAX_EXPRESSION_CHARS}
 * characters, {@link MAX_EXPRESSION_NODES} syntax nodes and nesting depth
 * {@link MAX_EXPRESSION_DEPTH}; comprehension macros (`all`, `exists`, `map`,
 * `filter`…) may not nest, so one evaluation is linear in the request's
 * size; `matches` is refused (its regular expressions run on a backtracking
 * engine); a literal CIDR must parse. Any refusal is VALIDATION_FAILED with
 * `details: {field, position, line, column}` (position 0-based, line and
 * column 1-based).
 *
 * A header or query parameter that is absent reads as '' when the
 * expression only reads it by name (`headers["x-api-key"]`); an expression
 * that also tests presence (`"x-api-key" in headers`) keeps CEL's rule (an
 * absent key is an error). At run time an expression that fails does not
 * match: `a && b` and `a || b` absorb errors as CEL specifies.
 */
import { isIP } from 'node:net';
import { type ASTNode, Environment } from '@marcbachmann/cel-js';
import { AppError } from '../errors.js';

export const MAX_EXPRESSION_CHARS = 4096;
export const MAX_EXPRESSION_NODES = 400;
export const MAX_EXPRESSION_DEPTH = 32;

/** The variables of a match expression, as the data plane fills them. */
export interface PolicyRequestFacts {
  method: string;
  host: string;
  path: string;
  ip: string;
  listener: string;
  query: Record<string, string>;
  headers: Record<string, string | string[] | undefined>;
}

/** A compiled match expression. */
export interface CompiledExpression {
  readonly source: string;
  /** True for the empty expression (matches all, costs nothing). */
  readonly always: boolean;
  /** Whether the expression reads `query` (the data plane parses the query only then). */
  readonly usesQuery: boolean;
  /**
   * The header and query keys this expression reads only by name, which read
   * as '' when absent (evaluate against {@link withBlanks}); null when it
   * looks at a map otherwise (`in`, a macro…): then CEL's rule stays and an
   * absent key is an error (no match).
   */
  readonly blanks: { readonly headers: readonly string[]; readonly query: readonly string[] } | null;
  /** True when the request matches; an evaluation error is no match. */
  matches(facts: PolicyRequestFacts): boolean;
}

const MACROS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);
const REFUSED_FUNCTIONS = new Map([
  ['matches', 'matches() is not available: use startsWith, endsWith, contains or path_prefix'],
]);

/** Whether `path` starts with `prefix` on a segment boundary (the route table's rule). */
export function pathPrefix(path: string, prefix: string): boolean {
  if (!path.startsWith(prefix)) return false;
  if (path.length === prefix.length || prefix.endsWith('/')) return true;
  return path.charCodeAt(prefix.length) === 47;
}

/** An address range: an IPv4 or IPv6 network as bytes and a prefix length. */
interface Cidr {
  readonly family: 4 | 6;
  readonly bytes: Uint8Array;
  readonly bits: number;
}

/** Parses `10.0.0.0/8`, `2001:db8::/32` or a single address; null when invalid. */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf('/');
  const address = slash < 0 ? text : text.slice(0, slash);
  const bytes = addressBytes(address);
  if (bytes === null) return null;
  const family = bytes.length === 4 ? 4 : 6;
  const max = family === 4 ? 32 : 128;
  let bits = max;
  if (slash >= 0) {
    const rest = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(rest)) return null;
    bits = Number(rest);
    if (bits > max) return null;
  }
  return { family, bytes, bits };
}

function addressBytes(address: string): Uint8Array | null {
  let text = address;
  if (text.startsWith('[') && text.endsWith(']')) text = text.slice(1, -1);
  const kind = isIP(text);
  if (kind === 4) return Uint8Array.from(text.split('.').map(Number));
  if (kind !== 6) return null;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = text.match(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const groups =
    tail === undefined
      ? headGroups
      : [...headGroups, ...new Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  if (groups.length !== 8) return null;
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = Number.parseInt(g, 16);
    bytes[i * 2] = n >> 8;
    bytes[i * 2 + 1] = n & 0xff;
  });
  return bytes;
}

/** A dotted-quad IPv4 address as an unsigned 32-bit number, or -1 (fast path of {@link ipInCidr}). */
function ipv4Number(ip: string, from: number): number {
  let value = 0;
  let part = -1;
  let dots = 0;
  for (let i = from; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      if (part < 0 || dots === 3) return -1;
      value = value * 256 + part;
      part = -1;
      dots++;
    } else if (c >= 48 && c <= 57) {
      part = part < 0 ? c - 48 : part * 10 + (c - 48);
      if (part > 255) return -1;
    } else return -1;
  }
  if (dots !== 3 || part < 0) return -1;
  return value * 256 + part;
}

/** Whether `ip` lies in `cidr`; an IPv4-mapped IPv6 address is compared as IPv4. */
export function ipInCidr(ip: string, cidr: Cidr): boolean {
  if (cidr.family === 4) {
    const n = ipv4Number(ip, ip.startsWith('::ffff:') ? 7 : 0);
    if (n >= 0) {
      const net =
        ((cidr.bytes[0]! << 24) | (cidr.bytes[1]! << 16) | (cidr.bytes[2]! << 8) | cidr.bytes[3]!) >>> 0;
      const mask = cidr.bits === 0 ? 0 : (0xffffffff << (32 - cidr.bits)) >>> 0;
      return (n & mask) >>> 0 === (net & mask) >>> 0;
    }
  }
  let bytes = addressBytes(ip);
  if (bytes === null) return false;
  if (bytes.length === 16 && cidr.family === 4 && isV4Mapped(bytes)) bytes = bytes.subarray(12);
  if (bytes.length !== cidr.bytes.length) return false;
  let bits = cidr.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i]! & mask) !== (cidr.bytes[i]! & mask)) return false;
  }
  return true;
}

function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Parsed CIDRs by text; bounded because expressions may build them at run time. */
const cidrCache = new Map<string, Cidr | null>();
const CIDR_CACHE_LIMIT = 4096;

function cachedCidr(text: string): Cidr | null {
  let cidr = cidrCache.get(text);
  if (cidr === undefined) {
    cidr = parseCidr(text);
    if (cidrCache.size >= CIDR_CACHE_LIMIT) cidrCache.clear();
    cidrCache.set(text, cidr);
  }
  return cidr;
}

const environment = new Environment({
  limits: {
    maxAstNodes: MAX_EXPRESSION_NODES,
    maxDepth: MAX_EXPRESSION_DEPTH,
    maxListElements: 256,
    maxMapEntries: 64,
    maxCallArguments: 8,
  },
})
  .registerVariable('method', 'string')
  .registerVariable('host', 'string')
  .registerVariable('path', 'string')
  .registerVariable('ip', 'string')
  .registerVariable('listener', 'string')
  .registerVariable('query', 'map<string, string>')
  .registerVariable('headers', 'map<string, string>')
  .registerFunction('path_prefix(string, string): bool', pathPrefix)
  .registerFunction('ip_in(string, string): bool', (ip: string, cidr: string) => {
    const parsed = cachedCidr(cidr);
    return parsed !== null && ipInCidr(ip, parsed);
  });

const ALWAYS: CompiledExpression = {
  source: '',
  always: true,
  usesQuery: false,
  blanks: { headers: [], query: [] },
  matches: () => true,
};

/**
 * Compiles and type-checks a match expression (must be boolean). Throws
 * AppError VALIDATION_FAILED naming `field` with the error's position.
 */
export function compileExpression(source: unknown, field = 'expression'): CompiledExpression {
  if (source === undefined || source === null) return ALWAYS;
  if (typeof source !== 'string') throw expressionError(field, 'must be a string', '', 0);
  if (source.trim() === '') return ALWAYS;
  if (source.length > MAX_EXPRESSION_CHARS)
    throw expressionError(field, `must be at most ${MAX_EXPRESSION_CHARS} characters`, source, 0);
  let program: ReturnType<Environment['parse']>;
  try {
    program = environment.parse(source);
  } catch (err) {
    throw fromCelError(field, source, err);
  }
  const checked = program.check();
  if (!checked.valid) throw fromCelError(field, source, checked.error);
  if (checked.type !== 'bool')
    throw expressionError(field, `must be a condition (bool), not ${checked.type}`, source, 0);
  let usesQuery = false;
  walk(program.ast, 0, (node, macroDepth) => {
    if (node.op === 'id' && node.args === 'query') usesQuery = true;
    if (node.op === 'call' || node.op === 'rcall') {
      const name = node.args[0];
      const refused = REFUSED_FUNCTIONS.get(name);
      if (refused) throw expressionError(field, refused, source, node.pos);
      if (node.op === 'rcall' && MACROS.has(name) && macroDepth > 0)
        throw expressionError(
          field,
          `${name}() inside another comprehension is not allowed (it would cost the product of both sizes)`,
          source,
          node.pos,
        );
      if (node.op === 'call' && name === 'ip_in') {
        const literal = node.args[1][1];
        if (literal?.op === 'value' && typeof literal.args === 'string' && cachedCidr(literal.args) === null)
          throw expressionError(
            field,
            `ip_in: "${literal.args}" is not an address or CIDR`,
            source,
            literal.pos,
          );
      }
    }
  });
  const fillHeaders = fillableKeys(program.ast, 'headers');
  const fillQuery = fillableKeys(program.ast, 'query');
  return {
    source,
    always: false,
    usesQuery,
    blanks: fillHeaders === false || fillQuery === false ? null : { headers: fillHeaders, query: fillQuery },
    matches(facts) {
      try {
        return program(facts) === true;
      } catch {
        return false;
      }
    },
  };
}

/**
 * The keys an expression reads from `map` only as `map["key"]` / `map.key`
 * (never otherwise: no `in`, no macro, no `size`), or null. Those read as ''
 * when absent — the evaluator would throw (slowly) and the rule would not
 * match, so `headers["x-api-key"] != "secret"` would let a request without
 * the header through. Where the expression looks at the map in any other way
 * (`"x" in headers`), CEL's rule stays: an absent key is an error.
 */
function fillableKeys(ast: ASTNode, map: 'headers' | 'query'): string[] | false {
  let references = 0;
  let accesses = 0;
  const keys = new Set<string>();
  walk(ast, 0, (node) => {
    if (node.op === 'id' && node.args === map) references++;
    if ((node.op === '[]' || node.op === '.') && node.args[0]?.op === 'id' && node.args[0].args === map) {
      const key =
        node.op === '.' ? node.args[1] : node.args[1]?.op === 'value' ? node.args[1].args : undefined;
      if (typeof key !== 'string') return;
      keys.add(key);
      accesses++;
    }
  });
  return references === accesses ? [...keys] : false;
}

/**
 * `facts` with '' for each of `blanks`' keys that the request lacks (a copy
 * only when one is missing). Evaluate only expressions whose `blanks` is not
 * null against it.
 */
export function withBlanks(
  facts: PolicyRequestFacts,
  blanks: { headers: readonly string[]; query: readonly string[] },
): PolicyRequestFacts {
  const headers = blankKeys(facts.headers, blanks.headers);
  const query = blanks.query.length === 0 ? facts.query : blankKeys(facts.query, blanks.query);
  if (headers === facts.headers && query === facts.query) return facts;
  return { ...facts, headers, query };
}

/** `map` with '' for each of `keys` it lacks (a copy only when one is missing). */
export function blankKeys<T extends Record<string, unknown>>(map: T, keys: readonly string[]): T {
  let copy: Record<string, unknown> | null = null;
  for (const key of keys) {
    if (Object.hasOwn(map, key)) continue;
    copy ??= { ...map };
    copy[key] = '';
  }
  return (copy ?? map) as T;
}

/** Visits every node; `macroDepth` counts the comprehensions around it. */
function walk(node: ASTNode, macroDepth: number, visit: (node: ASTNode, macroDepth: number) => void): void {
  visit(node, macroDepth);
  const inner = node.op === 'rcall' && MACROS.has(node.args[0]) ? macroDepth + 1 : macroDepth;
  const visitAll = (value: unknown): void => {
    if (Array.isArray(value)) for (const v of value) visitAll(v);
    else if (value !== null && typeof value === 'object' && 'op' in value && 'args' in value)
      walk(value as ASTNode, node.op === 'rcall' && value === node.args[1] ? macroDepth : inner, visit);
    else if (value !== null && typeof value === 'object')
      for (const v of Object.values(value as Record<string, unknown>)) visitAll(v);
  };
  if (node.op !== 'value' && node.op !== 'id') visitAll(node.args);
}

function fromCelError(field: string, source: string, err: unknown): AppError {
  const e = err as { summary?: string; message?: string; node?: { pos?: number }; range?: { start: number } };
  const position = e?.node?.pos ?? e?.range?.start ?? 0;
  const message = e?.summary ?? e?.message?.split('\n')[0] ?? 'is not a valid expression';
  return expressionError(field, message, source, position);
}

function expressionError(field: string, message: string, source: string, position: number): AppError {
  const before = source.slice(0, position);
  const line = before.split('\n').length;
  const column = position - before.lastIndexOf('\n');
  return new AppError('VALIDATION_FAILED', `${field}: ${message} (line ${line}, column ${column})`, {
    details: { field, position, line, column },
  });
}
