/**
 * Records of a store collection by id in O(1), for lookups on hot paths (an
 * agent's credentials on every upgrade, every live session checked when
 * another replica changed the agents) where a linear search over thousands of
 * records would dominate.
 *
 * The index follows the collection it is given: rebuilt when the array is
 * another one (the stores replace it on a copy-on-write update, a reload or
 * another replica's change) or its length changed (a record added or
 * removed in place), and when the record found at a remembered position no
 * longer has the id asked for. Records are never swapped in place for others
 * of the same count, which this would miss.
 */
export class RecordIndex<T extends { id: string }> {
  #array: readonly T[] | null = null;
  #length = -1;
  readonly #positions = new Map<string, number>();

  /** The record with this id in `records` (the collection as it is now), or undefined. */
  get(records: readonly T[], id: string): T | undefined {
    if (records !== this.#array || records.length !== this.#length) this.#rebuild(records);
    let at = this.#positions.get(id);
    if (at === undefined) return undefined;
    if (records[at]?.id !== id) {
      this.#rebuild(records);
      at = this.#positions.get(id);
      if (at === undefined) return undefined;
    }
    return records[at];
  }

  #rebuild(records: readonly T[]): void {
    this.#positions.clear();
    records.forEach((record, i) => {
      // The first of a duplicated id wins, as Array.prototype.find would.
      if (!this.#positions.has(record.id)) this.#positions.set(record.id, i);
    });
    this.#array = records;
    this.#length = records.length;
  }
}
