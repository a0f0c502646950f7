/**
 * How the database document splits into rows for a record store: derived from
 * the shape of `emptyDatabase()`, so a collection added to the schema needs no
 * storage code.
 *
 * - An array is a *collection*: each element with a string `id` is one row
 *   keyed by that id (an array whose elements lack unique string ids is stored
 *   whole, as one row).
 * - A plain object holding at least one array (`proxy: {listeners, routes}`)
 *   is a *container*: its children are laid out the same way.
 * - Anything else (`schemaVersion`, `instance`, `traffic`) is a *value*: one row.
 *
 * Slots are named by their dotted path (`agents`, `proxy.routes`).
 */
import { emptyDatabase } from './schema.js';

export interface LayoutSlot {
  /** Dotted path of the slot in the document. */
  name: string;
  path: string[];
  kind: 'collection' | 'value';
  /** The empty document's value there (a fresh copy is made on use). */
  template: unknown;
}

/** The id of a value row, and of a collection stored whole. */
export const WHOLE_ROW_ID = '';

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The slots of the current schema, in document order. */
export function documentLayout(): LayoutSlot[] {
  const slots: LayoutSlot[] = [];
  const walk = (value: Record<string, unknown>, prefix: string[]) => {
    for (const [key, child] of Object.entries(value)) {
      const path = [...prefix, key];
      if (Array.isArray(child)) {
        slots.push({ name: path.join('.'), path, kind: 'collection', template: child });
      } else if (isPlainObject(child) && Object.values(child).some(Array.isArray)) {
        walk(child, path);
      } else {
        slots.push({ name: path.join('.'), path, kind: 'value', template: child });
      }
    }
  };
  walk(emptyDatabase('') as unknown as Record<string, unknown>, []);
  return slots;
}

/** The value at `path`, or undefined when a step is missing. */
export function getAt(root: unknown, path: readonly string[]): unknown {
  let node: unknown = root;
  for (const key of path) {
    if (!isPlainObject(node)) return undefined;
    node = node[key];
  }
  return node;
}

/** Sets the value at `path`, creating missing containers on the way. */
export function setAt(root: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let node = root;
  for (const key of path.slice(0, -1)) {
    if (!isPlainObject(node[key])) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

/** The ids of a collection's elements, or null when it must be stored whole (an element lacks a unique string id). */
export function recordIds(elements: readonly unknown[]): string[] | null {
  const ids: string[] = [];
  const seen = new Set<string>();
  for (const element of elements) {
    const id = isPlainObject(element) ? element.id : undefined;
    if (typeof id !== 'string' || id === WHOLE_ROW_ID || seen.has(id)) return null;
    seen.add(id);
    ids.push(id);
  }
  return ids;
}
