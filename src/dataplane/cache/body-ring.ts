/**
 * Where the memory tier keeps its bodies: a ring of fixed-size segments
 * (1 MiB, or one hot object when that is larger), each one allocation made
 * once and then reused, never freed while the cache's bounds stay the same.
 *
 * Why: with one allocation per body, every body that leaves memory is
 * garbage until V8's next full collection (which the engine starts only
 * after tens of MiB of external memory have come and gone), and the
 * allocator keeps what it once handed out. The process then held far more
 * than the bodies (1.6–1.7× `memoryMiB` of RSS growth with a working set 10×
 * larger). With the ring, the memory tier is a fixed set of large
 * allocations, and what the store counts against `memoryBytes` is those
 * segments whole (the unused tail and the space of bodies dropped since
 * included), so the bound is what the process really holds.
 *
 * Bodies are appended at the head segment. When it is full, the next one is
 * a new segment while the budget allows, else the oldest segment is reused:
 * the bodies in it leave memory (`onRetire`; their disk copy stays). A body
 * handed to a client is a view into a segment, so a segment is never reused
 * while such a view may still be written: {@link pin} holds it until the
 * answer is over (a pinned segment is passed over; with every one pinned,
 * nothing is added to memory until one is released).
 */

/** Default segment size. */
export const SEGMENT_BYTES = 1024 * 1024;

export interface RingSegment<T> {
  readonly bytes: Buffer;
  /** Bytes appended since the segment was (re)started. */
  used: number;
  /** Answers still writing views of this segment. */
  pins: number;
  /** What lives in it (given to `onRetire` when the segment is reused or dropped). */
  readonly owners: Set<T>;
  /** Counts the times the segment was emptied (reused or let go). */
  generation: number;
}

export interface RingSlot<T> {
  readonly segment: RingSegment<T>;
  readonly body: Buffer;
  /** The segment's generation when the slot was taken. */
  readonly generation: number;
}

export class BodyRing<T> {
  readonly segmentBytes: number;
  /** Oldest first; the last is the head (where bodies are appended). */
  readonly #segments: RingSegment<T>[] = [];
  readonly #onRetire: (owner: T) => void;

  constructor(segmentBytes: number, onRetire: (owner: T) => void) {
    this.segmentBytes = segmentBytes;
    this.#onRetire = onRetire;
  }

  /** The segment size for a memory tier of `memoryBytes` holding bodies up to `hotObjectBytes`. */
  static segmentBytesFor(memoryBytes: number, hotObjectBytes: number): number {
    // At least 8 segments in a small tier, so reusing one does not empty it.
    return Math.max(hotObjectBytes, Math.min(SEGMENT_BYTES, Math.floor(memoryBytes / 8)), 1);
  }

  /** Bytes allocated for segments (what the memory tier costs, whole). */
  get allocatedBytes(): number {
    return this.#segments.length * this.segmentBytes;
  }

  get segmentCount(): number {
    return this.#segments.length;
  }

  /** Whether `segment` is the next one {@link add} would reuse (when it cannot grow). */
  isOldest(segment: RingSegment<T>): boolean {
    return this.#segments.length > 1 && this.#segments[0] === segment;
  }

  /**
   * Copies a body (given as chunks, `length` bytes in all) into the ring for
   * `owner`. `mayGrow` says whether one more segment fits the budget.
   * Segments in `keep` are not reused (the body being moved is in one). Null
   * when the body is larger than a segment, or every segment that could be
   * reused is pinned.
   */
  add(
    owner: T,
    chunks: readonly Buffer[],
    length: number,
    mayGrow: boolean,
    keep: RingSegment<T> | null = null,
  ): RingSlot<T> | null {
    const slot = this.reserve(length, mayGrow, keep);
    if (slot === null) return null;
    let offset = 0;
    for (const chunk of chunks) offset += chunk.copy(slot.body, offset);
    slot.segment.owners.add(owner);
    return slot;
  }

  /**
   * Takes `length` bytes at the head for a body that is not there yet (read
   * from disk straight into the ring, so no buffer of its own is allocated).
   * The slot has no owner: pin its segment while filling it, then {@link keep}
   * it for its owner. Null as for {@link add}.
   */
  reserve(length: number, mayGrow: boolean, keep: RingSegment<T> | null = null): RingSlot<T> | null {
    if (length > this.segmentBytes) return null;
    let head = this.#segments.at(-1);
    if (head === undefined || head.used + length > this.segmentBytes) {
      if (mayGrow || head === undefined) {
        if (!mayGrow) return null;
        head = {
          bytes: Buffer.allocUnsafeSlow(this.segmentBytes),
          used: 0,
          pins: 0,
          owners: new Set(),
          generation: 0,
        };
        this.#segments.push(head);
      } else {
        const index = this.#segments.findIndex((s) => s.pins === 0 && s !== keep);
        if (index < 0) return null;
        head = this.#segments[index]!;
        this.#segments.splice(index, 1);
        this.#retire(head);
        this.#segments.push(head);
      }
    }
    const body = head.bytes.subarray(head.used, head.used + length);
    head.used += length;
    return { segment: head, body, generation: head.generation };
  }

  /**
   * Makes a reserved slot `owner`'s; false when its segment was let go or
   * emptied since (the bytes are still readable through the slot, but no
   * longer part of the memory tier).
   */
  keep(owner: T, slot: RingSlot<T>): boolean {
    // Reused or let go segments were retired, which counts a new generation.
    if (slot.segment.generation !== slot.generation) return false;
    slot.segment.owners.add(owner);
    return true;
  }

  /** Keeps a segment from being reused until the returned function is called (once is enough). */
  pin(segment: RingSegment<T>): () => void {
    segment.pins++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      segment.pins--;
    };
  }

  /**
   * Drops the oldest segment (its bodies leave memory); false when there is
   * none. A pinned one may go too: it is not reused, only let go, and its
   * memory is freed once the answers writing from it are over.
   */
  shrink(): boolean {
    const segment = this.#segments.shift();
    if (segment === undefined) return false;
    this.#retire(segment);
    return true;
  }

  /** Empties every segment (their bodies leave memory); the allocations are dropped. */
  clear(): void {
    for (const segment of this.#segments.splice(0)) this.#retire(segment);
  }

  #retire(segment: RingSegment<T>): void {
    const owners = [...segment.owners];
    segment.owners.clear();
    segment.used = 0;
    segment.generation++;
    for (const owner of owners) this.#onRetire(owner);
  }
}
