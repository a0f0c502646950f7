/** Small building blocks shared by the pages: dialogs, fields, badges, copy, data loading, formatting. */
import { type ComponentChildren, cloneElement, createContext, type JSX, type VNode } from 'preact';
import { useCallback, useContext, useEffect, useId, useRef, useState } from 'preact/hooks';
import { ApiError, messageOf } from '../api';

/** What Tab can reach inside a dialog. */
const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex="-1"])';

function focusablesIn(root: HTMLElement): HTMLElement[] {
  return [...root.querySelectorAll<HTMLElement>(FOCUSABLE)].filter((el) => el.getClientRects().length > 0);
}

/**
 * A modal built on the native `<dialog>`: the page behind is inert, focus
 * starts on the first field (or the first button: Cancel in a confirmation),
 * Tab and Shift+Tab cycle inside the dialog, Escape closes it and focus goes
 * back to what opened it. `onClose` runs once, whether closed by Escape, the
 * close button or the caller unmounting it.
 */
export function Dialog(props: {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
  testId?: string;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const onCloseRef = useRef(props.onClose);
  onCloseRef.current = props.onClose;
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current!;
    const closed = () => onCloseRef.current();
    // The native modal lets Tab leave the last control for the browser's own UI: keep it inside.
    const trap = (event: KeyboardEvent) => {
      if (event.key !== 'Tab') return;
      const items = focusablesIn(dialog);
      const first = items[0];
      const last = items.at(-1);
      if (!first || !last) return;
      const active = dialog.ownerDocument.activeElement;
      if (event.shiftKey && (active === first || !dialog.contains(active))) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && (active === last || !dialog.contains(active))) {
        event.preventDefault();
        first.focus();
      }
    };
    dialog.addEventListener('close', closed);
    dialog.addEventListener('keydown', trap);
    if (!dialog.open) dialog.showModal();
    const body = dialog.querySelector<HTMLElement>('.dialog-body');
    const start =
      body?.querySelector<HTMLElement>('[autofocus]') ??
      (body ? focusablesIn(body).find((el) => el.matches('input, select, textarea')) : undefined) ??
      (body ? focusablesIn(body)[0] : undefined);
    start?.focus();
    return () => {
      // Removed first: closing on unmount is not the user closing it.
      dialog.removeEventListener('close', closed);
      dialog.removeEventListener('keydown', trap);
      if (dialog.open) dialog.close();
    };
  }, []);
  return (
    <dialog
      ref={ref}
      class={props.wide ? 'dialog wide' : 'dialog'}
      aria-labelledby={titleId}
      data-testid={props.testId}
    >
      <header class="dialog-head">
        <h2 id={titleId}>{props.title}</h2>
        <button type="button" class="icon" aria-label="Close" onClick={() => ref.current?.close()}>
          ×
        </button>
      </header>
      <div class="dialog-body">{props.children}</div>
    </dialog>
  );
}

/**
 * A labelled form control (the single child element) with its hint, or its
 * error (from a server `field`) right under it. The label names the control
 * through `for`/`id`, and the hint or error describes it (`aria-describedby`).
 * Inside a `FormDialog` the error is found by itself: the one the server gave
 * for `name` (by default the control's own `name`); `error` overrides it.
 */
export function Field(props: {
  label: string;
  error?: string | null | undefined;
  /** The server field path whose error shows here (the first that has one); the control's `name` by default. */
  name?: string | readonly string[];
  hint?: string | undefined;
  children: VNode;
}) {
  const id = useId();
  const noteId = `${id}-note`;
  const errors = useContext(FormErrorsContext);
  const controlName = (props.children.props as { name?: unknown }).name;
  const paths = props.name ?? (typeof controlName === 'string' ? controlName : []);
  const error =
    props.error ??
    (typeof paths === 'string' ? [paths] : paths).map((p) => fieldError(errors, p)).find(Boolean);
  const note = error ?? props.hint ?? null;
  const control = cloneElement(props.children, {
    id,
    'aria-invalid': error ? 'true' : undefined,
    'aria-describedby': note ? noteId : undefined,
  });
  return (
    <div class={error ? 'field invalid' : 'field'}>
      <label class="field-label" for={id}>
        {props.label}
      </label>
      {control}
      {error ? (
        <small class="field-error" id={noteId} role="alert">
          {error}
        </small>
      ) : props.hint ? (
        <small class="hint" id={noteId}>
          {props.hint}
        </small>
      ) : null}
    </div>
  );
}

/** A form-level error message (errors without a field, network failures). */
export function ErrorMessage(props: { error: unknown }) {
  if (!props.error) return null;
  return (
    <p class="error-box" role="alert">
      {messageOf(props.error)}
    </p>
  );
}

/** Server validation errors split into the one at a field and the rest. */
export interface FormErrors {
  field: Record<string, string>;
  form: unknown;
}

export const NO_ERRORS: FormErrors = { field: {}, form: null };

/**
 * The error for the control of `name`: the server's error at that path, or
 * at a path inside it (`ttl.seconds`, `key.0` belong to `ttl`, `key`).
 */
export function fieldError(errors: FormErrors, name: string): string | undefined {
  return (
    errors.field[name] ??
    Object.entries(errors.field).find(
      ([path]) => path.startsWith(`${name}.`) || path.startsWith(`${name}[`),
    )?.[1]
  );
}

/** The errors of the form a `Field` stands in (provided by `FormDialog`). */
export const FormErrorsContext = createContext<FormErrors>(NO_ERRORS);

/** Sorts an error thrown by a save: a VALIDATION_FAILED with `field` goes to that field. */
export function formErrors(err: unknown, knownFields: readonly string[]): FormErrors {
  if (err instanceof ApiError && err.field && knownFields.includes(err.field)) {
    return { field: { [err.field]: err.message }, form: null };
  }
  return { field: {}, form: err };
}

/** Tones used by badges. */
export type Tone = 'ok' | 'warn' | 'bad' | 'muted' | 'info';

export function Badge(props: { tone: Tone; children: ComponentChildren; title?: string }) {
  return (
    <span class={`badge ${props.tone}`} title={props.title}>
      {props.children}
    </span>
  );
}

/** The badge for an environment's trust state. */
export function TrustBadge(props: { state: string | undefined }) {
  const tone: Tone =
    props.state === 'TRUSTED'
      ? 'ok'
      : props.state === 'CHANGED'
        ? 'bad'
        : props.state === 'EXPIRED'
          ? 'warn'
          : 'muted';
  return <Badge tone={tone}>{props.state ?? 'LOCAL'}</Badge>;
}

/**
 * Copies `text` to the clipboard and says so; falls back to selecting the text
 * when refused. Shows "Copy"; `what` completes the accessible name ("Copy token").
 */
export function CopyButton(props: { text: string; what?: string; targetId?: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(props.text);
      setState('copied');
    } catch {
      if (props.targetId) {
        const el = document.getElementById(props.targetId);
        const range = document.createRange();
        if (el) {
          range.selectNodeContents(el);
          window.getSelection()?.removeAllRanges();
          window.getSelection()?.addRange(range);
        }
      }
      setState('failed');
    }
    window.setTimeout(() => setState('idle'), 2000);
  };
  return (
    <button type="button" class="secondary small" onClick={copy} aria-live="polite">
      {state === 'copied' ? 'Copied' : state === 'failed' ? 'Press Ctrl+C to copy' : 'Copy'}
      {props.what && state === 'idle' ? <span class="visually-hidden"> {props.what}</span> : null}
    </button>
  );
}

/** A block of secret or config text shown once, with a copy button. */
export function SecretBlock(props: { text: string; label: string }) {
  const id = useId();
  return (
    <div class="secret">
      <div class="secret-head">
        <span>{props.label}</span>
        <CopyButton text={props.text} targetId={id} what={props.label} />
      </div>
      <pre id={id}>{props.text}</pre>
    </div>
  );
}

/** Asks before a destructive action; the action's error is shown in the dialog. */
export function ConfirmDialog(props: {
  title: string;
  message: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => Promise<unknown>;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const confirm = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await props.onConfirm();
      props.onClose();
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <Dialog title={props.title} onClose={props.onClose} testId="confirm-dialog">
      <form onSubmit={confirm}>
        <p>{props.message}</p>
        <ErrorMessage error={error} />
        <div class="actions">
          <button type="button" class="secondary" onClick={props.onClose}>
            Cancel
          </button>
          <button type="submit" class="danger" disabled={busy}>
            {props.confirmLabel}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** Loads data and reloads on demand; `deps` restart the load (an older answer is ignored). */
export function useResource<T>(
  load: () => Promise<T>,
  deps: readonly unknown[],
): { data: T | undefined; error: unknown; loading: boolean; reload: () => void } {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let current = true;
    setLoading(true);
    load().then(
      (value) => {
        if (!current) return;
        setData(value);
        setError(null);
        setLoading(false);
      },
      (err: unknown) => {
        if (!current) return;
        setError(err);
        setLoading(false);
      },
    );
    return () => {
      current = false;
    };
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload };
}

/** A date-time in the reader's locale, or a dash. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '—' : date.toLocaleString();
}

/** "5 s ago", "3 min ago", "in 2 d"… or a dash. */
export function relativeTime(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '—';
  const diff = Math.round((t - now) / 1000);
  const abs = Math.abs(diff);
  const [value, unit] =
    abs < 60
      ? [abs, 's']
      : abs < 3600
        ? [Math.round(abs / 60), 'min']
        : abs < 86400
          ? [Math.round(abs / 3600), 'h']
          : [Math.round(abs / 86400), 'd'];
  return diff < 0 ? `${value} ${unit} ago` : diff === 0 ? 'now' : `in ${value} ${unit}`;
}

/** `AB:CD:EF:01…78:9A`: enough to recognise a fingerprint at a glance. */
export function shortFingerprint(fingerprint: string | null | undefined): string {
  if (!fingerprint) return '—';
  const pairs = fingerprint.split(':');
  if (pairs.length <= 6) return fingerprint;
  return `${pairs.slice(0, 4).join(':')}…${pairs.slice(-2).join(':')}`;
}

/** A page section heading with actions on the right. */
export function SectionHead(props: { title: string; children?: ComponentChildren; level?: 1 | 2 }) {
  const Heading = props.level === 2 ? 'h2' : 'h1';
  return (
    <div class="section-head">
      <Heading>{props.title}</Heading>
      <div class="toolbar">{props.children}</div>
    </div>
  );
}

/** Loading / error / empty states for a table body. */
export function LoadState(props: { loading: boolean; error: unknown; empty: boolean; what: string }) {
  if (props.error) return <ErrorMessage error={props.error} />;
  if (props.loading) return <p class="muted">Loading {props.what}…</p>;
  if (props.empty) return <p class="muted">No {props.what} yet.</p>;
  return null;
}
