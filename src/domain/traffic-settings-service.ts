/**
 * Tracer settings (`GET/PUT /api/v1/traffic/settings`): `enabled` and `level`,
 * persisted in the store's `traffic` record (default: on, `basic`) and applied
 * live through `onChange`. Errors: VALIDATION_FAILED.
 */
import type { TrafficSettingsRecord } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { TRACE_LEVELS, type TraceCounters, type TraceLevel } from './traffic-types.js';
import { invalid, rejectUnknownFields, requireBoolean, requireObject } from './validate.js';

/** The persisted part of the settings. */
export interface TrafficSettings {
  enabled: boolean;
  level: TraceLevel;
}

/** What the settings routes answer: the settings and the tracer's counters. */
export type TrafficSettingsView = TrafficSettings & TraceCounters;

export interface TrafficSettingsServiceOptions {
  store: Store;
  /** The tracer's counters; zeros when absent. */
  counters?: () => TraceCounters;
  /** Called after a change is persisted, to apply it to the tracer. */
  onChange?: (settings: TrafficSettings) => void;
}

const NO_COUNTERS: TraceCounters = { subscribers: 0, emittedEvents: 0, droppedEvents: 0 };
/** Fields a client may send back from a GET; they are read-only and ignored. */
const READ_ONLY_FIELDS = ['subscribers', 'emittedEvents', 'droppedEvents'];

export class TrafficSettingsService {
  readonly #store: Store;
  readonly #counters: () => TraceCounters;
  readonly #onChange: (settings: TrafficSettings) => void;

  constructor(options: TrafficSettingsServiceOptions) {
    this.#store = options.store;
    this.#counters = options.counters ?? (() => NO_COUNTERS);
    this.#onChange = options.onChange ?? (() => {});
  }

  /** The persisted settings (defaults when the record is missing or odd). */
  settings(): TrafficSettings {
    return normalize(this.#store.read().traffic);
  }

  /** Settings plus counters. */
  view(): TrafficSettingsView {
    return { ...this.settings(), ...this.#counters() };
  }

  /**
   * Changes `enabled` and/or `level` (omitted fields keep their value) and
   * applies them at once. VALIDATION_FAILED on unknown fields or bad values.
   */
  async update(body: unknown): Promise<TrafficSettingsView> {
    const input = requireObject(body);
    rejectUnknownFields(input, ['enabled', 'level', ...READ_ONLY_FIELDS]);
    const enabled = input.enabled === undefined ? undefined : requireBoolean(input.enabled, 'enabled');
    let level: TraceLevel | undefined;
    if (input.level !== undefined) {
      if (!TRACE_LEVELS.includes(input.level as TraceLevel))
        throw invalid('level', `must be one of ${TRACE_LEVELS.join(', ')}`);
      level = input.level as TraceLevel;
    }
    const next = await this.#store.update((db) => {
      const current = normalize(db.traffic);
      const updated: TrafficSettingsRecord = {
        enabled: enabled ?? current.enabled,
        level: level ?? current.level,
      };
      db.traffic = updated;
      return { ...updated };
    });
    this.#onChange(next);
    return { ...next, ...this.#counters() };
  }
}

function normalize(record: Partial<TrafficSettingsRecord> | undefined): TrafficSettings {
  return {
    enabled: typeof record?.enabled === 'boolean' ? record.enabled : true,
    level: TRACE_LEVELS.includes(record?.level as TraceLevel) ? (record?.level as TraceLevel) : 'basic',
  };
}
