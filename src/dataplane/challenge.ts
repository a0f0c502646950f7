/**
 * The WAF `challenge` action: a proof-of-work page served by p2pstream
 * itself. The page carries a signed challenge bound to the client address;
 * its script finds a number `s` such that SHA-256(`challenge:s`) starts with
 * `difficulty` zero bits (pure JavaScript, so it also works on plain-http
 * origins where WebCrypto is unavailable) and opens
 * {@link CHALLENGE_PATH}`?c=…&s=…&r=…`. The server checks the signature, the
 * address, the expiry and the work, then sets a signed pass cookie (per
 * rule, bound to the address, valid the rule's `passTtlSeconds`) and
 * redirects back.
 *
 * Tokens are `base64url(JSON).base64url(HMAC-SHA256)`, keyed by a random key
 * per process: a restart asks clients to solve again, nothing more.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const CHALLENGE_PATH = '/.well-known/p2pstream/challenge';
/** Leading zero bits the work must reach (about 65 000 hashes on average). */
export const DEFAULT_CHALLENGE_DIFFICULTY = 16;
/** How long a served challenge may be solved. */
export const CHALLENGE_TTL_MS = 10 * 60_000;
export const PASS_COOKIE_PREFIX = 'p2pstream_pass_';

interface TokenBody {
  /** `c` challenge, `p` pass. */
  k: 'c' | 'p';
  r: string;
  ip: string;
  e: number;
  d?: number;
  n?: string;
}

export class ChallengeSigner {
  readonly #key: Buffer;
  readonly difficulty: number;

  constructor(options: { key?: Buffer; difficulty?: number } = {}) {
    this.#key = options.key ?? randomBytes(32);
    this.difficulty = options.difficulty ?? DEFAULT_CHALLENGE_DIFFICULTY;
  }

  /** A challenge for `ip` under rule `ruleId`. */
  challenge(ruleId: string, ip: string, now: number): string {
    return this.#sign({
      k: 'c',
      r: ruleId,
      ip,
      e: now + CHALLENGE_TTL_MS,
      d: this.difficulty,
      n: randomBytes(9).toString('base64url'),
    });
  }

  /** The rule id of a solved challenge for `ip`, or null (bad signature, address, expiry or work). */
  verifySolution(token: string, solution: string, ip: string, now: number): string | null {
    const body = this.#open(token);
    if (body === null || body.k !== 'c' || body.ip !== ip || body.e < now) return null;
    if (!/^\d{1,12}$/.test(solution)) return null;
    const digest = createHash('sha256').update(`${token}:${solution}`).digest();
    return leadingZeroBits(digest) >= (body.d ?? this.difficulty) ? body.r : null;
  }

  /** A pass for `ip` under rule `ruleId`, valid `ttlSeconds`. */
  pass(ruleId: string, ip: string, ttlSeconds: number, now: number): string {
    return this.#sign({ k: 'p', r: ruleId, ip, e: now + ttlSeconds * 1000 });
  }

  /** Whether `value` is a valid, unexpired pass for `ip` under `ruleId`. */
  verifyPass(value: string, ruleId: string, ip: string, now: number): boolean {
    const body = this.#open(value);
    return body !== null && body.k === 'p' && body.r === ruleId && body.ip === ip && body.e >= now;
  }

  #sign(body: TokenBody): string {
    const payload = Buffer.from(JSON.stringify(body)).toString('base64url');
    return `${payload}.${createHmac('sha256', this.#key).update(payload).digest('base64url')}`;
  }

  #open(token: string): TokenBody | null {
    if (token.length > 1024) return null;
    const dot = token.indexOf('.');
    if (dot < 0) return null;
    const payload = token.slice(0, dot);
    const given = Buffer.from(token.slice(dot + 1), 'base64url');
    const expected = createHmac('sha256', this.#key).update(payload).digest();
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    try {
      const body = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as TokenBody;
      return typeof body.r === 'string' && typeof body.ip === 'string' && typeof body.e === 'number'
        ? body
        : null;
    } catch {
      return null;
    }
  }
}

export function leadingZeroBits(bytes: Uint8Array): number {
  let bits = 0;
  for (const byte of bytes) {
    if (byte === 0) {
      bits += 8;
      continue;
    }
    return bits + Math.clz32(byte) - 24;
  }
  return bits;
}

/** The value of cookie `name` in a Cookie header (joined fields), or null. */
export function cookieValue(header: string | string[] | undefined, name: string): string | null {
  if (header === undefined) return null;
  const text = Array.isArray(header) ? header.join('; ') : header;
  for (const part of text.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

/** A same-site path to return to after the challenge (`/` for anything else). */
export function safeReturnPath(value: string | null): string {
  if (value === null || !value.startsWith('/') || value.startsWith('//') || value.startsWith('/\\'))
    return '/';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
  return /[\u0000-\u001f\u007f]/.test(value) || value.length > 4096 ? '/' : value;
}

/** The solver script: pure-JS SHA-256, then a redirect to the verification path. */
export function solverScript(token: string, difficulty: number, returnTo: string): string {
  const data = JSON.stringify({ c: token, d: difficulty, r: returnTo, p: CHALLENGE_PATH }).replace(
    /</g,
    '\\u003c',
  );
  return `<script>(function(){var a=${data};
var K=[1116352408,1899447441,3049323471,3921009573,961987163,1508970993,2453635748,2870763221,3624381080,310598401,607225278,1426881987,1925078388,2162078206,2614888103,3248222580,3835390401,4022224774,264347078,604807628,770255983,1249150122,1555081692,1996064986,2554220882,2821834349,2952996808,3210313671,3336571891,3584528711,113926993,338241895,666307205,773529912,1294757372,1396182291,1695183700,1986661051,2177026350,2456956037,2730485921,2820302411,3259730800,3345764771,3516065817,3600352804,4094571909,275423344,430227734,506948616,659060556,883997877,958139571,1322822218,1537002063,1747873779,1955562222,2024104815,2227730452,2361852424,2428436474,2756734187,3204031479,3329325298];
function h(s){var b=unescape(encodeURIComponent(s)),l=b.length,n=((l+9+63)>>6)<<4,w=new Array(n).fill(0),i;
for(i=0;i<l;i++)w[i>>2]|=b.charCodeAt(i)<<(24-(i%4)*8);w[l>>2]|=128<<(24-(l%4)*8);w[n-1]=l*8;
var H=[1779033703,3144134277,1013904242,2773480762,1359893119,2600822924,528734635,1541459225],W=new Array(64);
for(var j=0;j<n;j+=16){var x=H.slice();for(i=0;i<64;i++){if(i<16)W[i]=w[j+i]|0;else{var p=W[i-15],q=W[i-2];
W[i]=(((p>>>7|p<<25)^(p>>>18|p<<14)^(p>>>3))+W[i-7]+((q>>>17|q<<15)^(q>>>19|q<<13)^(q>>>10))+W[i-16])|0}
var e=x[4],t1=x[7]+((e>>>6|e<<26)^(e>>>11|e<<21)^(e>>>25|e<<7))+((e&x[5])^(~e&x[6]))+K[i]+W[i]|0,c=x[0],
t2=((c>>>2|c<<30)^(c>>>13|c<<19)^(c>>>22|c<<10))+((c&x[1])^(c&x[2])^(x[1]&x[2]))|0;
x=[t1+t2|0,c,x[1],x[2],x[3]+t1|0,e,x[5],x[6]]}for(i=0;i<8;i++)H[i]=H[i]+x[i]|0}return H}
function z(H){var b=0;for(var i=0;i<8;i++){var v=H[i]>>>0;if(v===0){b+=32;continue}return b+Math.clz32(v)}return b}
var s=0;function run(){for(var k=0;k<5000;k++,s++){if(z(h(a.c+':'+s))>=a.d){location.replace(a.p+'?c='+encodeURIComponent(a.c)+'&s='+s+'&r='+encodeURIComponent(a.r));return}}setTimeout(run,0)}run()})();</script>`;
}

/** The built-in challenge page (HTML) with the solver. */
export function challengePage(token: string, difficulty: number, returnTo: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Checking your browser</title></head><body><p>Checking your browser… this takes a moment.</p><noscript><p>Please enable JavaScript to continue.</p></noscript>${solverScript(token, difficulty, returnTo)}</body></html>`;
}
