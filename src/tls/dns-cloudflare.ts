/**
 * DNS-01 through a DNS provider's API. {@link DnsChallengeProvider} is the
 * interface; {@link createCloudflareProvider} implements it with the
 * Cloudflare v4 API (zone found by the longest matching name, TXT record
 * created and later deleted by id), its base URL overridable
 * (`apiBaseUrl`, default {@link CLOUDFLARE_API_BASE_URL}). Errors are
 * thrown with the API's own message.
 */
import { Agent, request } from 'undici';

export const CLOUDFLARE_API_BASE_URL = 'https://api.cloudflare.com/client/v4';

/** Publishes and removes the TXT records of DNS-01 challenges. */
export interface DnsChallengeProvider {
  /** Creates a TXT record `fqdn` (no trailing dot) with `value`; returns what `removeTxt` needs. */
  createTxt(fqdn: string, value: string): Promise<string>;
  removeTxt(handle: string): Promise<void>;
}

export interface CloudflareOptions {
  apiToken: string;
  apiBaseUrl?: string | null;
  /** Trusted CA (PEM) for the API's TLS besides the system store. */
  ca?: string;
}

interface CloudflareAnswer<T> {
  success?: boolean;
  errors?: { code?: number; message?: string }[];
  result?: T;
}

export function createCloudflareProvider(options: CloudflareOptions): DnsChallengeProvider {
  const base = (options.apiBaseUrl ?? CLOUDFLARE_API_BASE_URL).replace(/\/+$/, '');
  // Verification set here, not inherited: NODE_TLS_REJECT_UNAUTHORIZED=0 must not send the API token to anyone.
  const dispatcher = new Agent({
    connect: { ...(options.ca ? { ca: options.ca } : {}), rejectUnauthorized: true },
  });
  const call = async <T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> => {
    const res = await request(`${base}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${options.apiToken}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      dispatcher,
    });
    const text = await res.body.text();
    let answer: CloudflareAnswer<T>;
    try {
      answer = JSON.parse(text) as CloudflareAnswer<T>;
    } catch {
      throw new Error(`Cloudflare API ${method} ${path}: HTTP ${res.statusCode}, not JSON`);
    }
    if (res.statusCode >= 300 || answer.success !== true) {
      const reason = answer.errors?.map((e) => e.message).join('; ') || `HTTP ${res.statusCode}`;
      throw new Error(`Cloudflare API ${method} ${path}: ${reason}`);
    }
    return answer.result as T;
  };
  const findZone = async (fqdn: string): Promise<string> => {
    const labels = fqdn.split('.');
    for (let i = 1; i < labels.length - 1; i++) {
      const name = labels.slice(i).join('.');
      const zones = await call<{ id: string; name: string }[]>(
        'GET',
        `/zones?name=${encodeURIComponent(name)}`,
      );
      if (zones.length > 0 && zones[0]) return zones[0].id;
    }
    throw new Error(`Cloudflare has no zone for ${fqdn} that this token can see`);
  };
  return {
    async createTxt(fqdn, value) {
      const zone = await findZone(fqdn);
      const record = await call<{ id: string }>('POST', `/zones/${zone}/dns_records`, {
        type: 'TXT',
        name: fqdn,
        content: value,
        ttl: 60,
      });
      return `${zone}/${record.id}`;
    },
    async removeTxt(handle) {
      const [zone, id] = handle.split('/');
      await call('DELETE', `/zones/${zone}/dns_records/${id}`);
    },
  };
}
