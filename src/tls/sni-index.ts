/**
 * Certificate selection by SNI name (docs/tls.md): a certificate whose
 * hosts hold the exact name, then the one with the longest matching
 * `*.suffix` (a `*.example.com` entry matches any name ending in
 * `.example.com`, like route hosts), else nothing (the listener then uses
 * its default certificate, or refuses the name). Built once per change of
 * the certificate set; a lookup costs one map probe per label of the name,
 * whatever the number of certificates.
 *
 * When two certificates claim the same host, the one listed first wins
 * (callers list the newer certificate first).
 */
export class SniIndex<T> {
  readonly #exact = new Map<string, T>();
  /** `.example.com` → entry, for `*.example.com`. */
  readonly #wildcard = new Map<string, T>();

  constructor(entries: Iterable<{ hosts: readonly string[]; value: T }>) {
    for (const entry of entries) {
      for (const raw of entry.hosts) {
        const host = raw.toLowerCase();
        if (host.startsWith('*.')) {
          const suffix = host.slice(1);
          if (!this.#wildcard.has(suffix)) this.#wildcard.set(suffix, entry.value);
        } else if (!this.#exact.has(host)) this.#exact.set(host, entry.value);
      }
    }
  }

  get size(): number {
    return this.#exact.size + this.#wildcard.size;
  }

  /** The entry for `serverName` (lower case), or undefined. */
  lookup(serverName: string): T | undefined {
    const exact = this.#exact.get(serverName);
    if (exact !== undefined) return exact;
    if (this.#wildcard.size === 0) return undefined;
    // Longest suffix first: from the first dot onwards, then the next one…
    let dot = serverName.indexOf('.');
    while (dot > 0 && dot < serverName.length - 1) {
      const found = this.#wildcard.get(serverName.slice(dot));
      if (found !== undefined) return found;
      dot = serverName.indexOf('.', dot + 1);
    }
    return undefined;
  }
}
