import { describe, expect, it } from 'vitest';
import { RecordIndex } from '../../src/domain/record-index.js';

interface Rec {
  id: string;
  n: number;
}

describe('RecordIndex', () => {
  it('finds records by id and follows the collection as it changes', () => {
    const index = new RecordIndex<Rec>();
    const records: Rec[] = [
      { id: 'a', n: 1 },
      { id: 'b', n: 2 },
    ];
    expect(index.get(records, 'b')).toBe(records[1]);
    expect(index.get(records, 'c')).toBeUndefined();
    // Added in place (the length changed).
    records.push({ id: 'c', n: 3 });
    expect(index.get(records, 'c')).toBe(records[2]);
    // Removed in place: the others moved.
    records.splice(0, 1);
    expect(index.get(records, 'a')).toBeUndefined();
    expect(index.get(records, 'c')).toEqual({ id: 'c', n: 3 });
    // Another array (a copy-on-write update, a reload), and a record replaced by another object.
    const copy = records.map((r) => ({ ...r }));
    expect(index.get(copy, 'b')).toBe(copy[0]);
    copy[0] = { id: 'b', n: 20 };
    expect(index.get(copy, 'b')).toBe(copy[0]);
    // Two records swapping places.
    copy.reverse();
    expect(index.get(copy, 'b')?.n).toBe(20);
    expect(index.get(copy, 'c')?.n).toBe(3);
  });

  it('answers the first of a duplicated id, as a linear search would', () => {
    const index = new RecordIndex<Rec>();
    const records = [
      { id: 'a', n: 1 },
      { id: 'a', n: 2 },
    ];
    expect(index.get(records, 'a')?.n).toBe(1);
  });
});
