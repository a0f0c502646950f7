/**
 * The form every create / edit dialog is made of: a modal with a form, field
 * errors from a VALIDATION_FAILED answer shown under the field they name, the
 * rest above the buttons, and Cancel / Save buttons that cannot submit twice.
 */
import type { ComponentChildren, JSX } from 'preact';
import { useContext, useState } from 'preact/hooks';
import {
  Dialog,
  ErrorMessage,
  type FormErrors,
  FormErrorsContext,
  fieldError,
  formErrors,
  NO_ERRORS,
} from './ui';

/** The error the server gave for `name` (or inside it) in the enclosing form, if any. */
export function useFieldError(name: string): string | undefined {
  return fieldError(useContext(FormErrorsContext), name);
}

export interface FormDialogProps {
  title: string;
  onClose: () => void;
  /**
   * Sends the form. A rejection is shown: a VALIDATION_FAILED naming one of
   * `fields` under that field, anything else above the buttons.
   */
  onSubmit: () => Promise<unknown>;
  /** The server field paths this form shows a control for. */
  fields: readonly string[];
  /** How a rejection is sorted into field and form errors; `formErrors` by default. */
  sortErrors?: (err: unknown, fields: readonly string[]) => FormErrors;
  /** The submit button's text; `Save` by default; `null`: no submit button (a dialog that only shows). */
  submitLabel?: string | null;
  /** The submit button stays disabled (what the form would send is refused up front). */
  submitDisabled?: boolean;
  /** The cancel button's text; `Cancel` by default. */
  cancelLabel?: string;
  /** Its text while the form is being sent (the submit label by default). */
  busyLabel?: string;
  /** Skips the browser's own checks (the server's field errors are shown instead). */
  noValidate?: boolean;
  wide?: boolean;
  testId?: string;
  /** Buttons placed before Cancel (e.g. "Test"). */
  extraActions?: ComponentChildren;
  /** The form's class (a layout of its own). */
  formClass?: string;
  /** Shown in the dialog after the form (a dialog opened from this one: forms do not nest). */
  after?: ComponentChildren;
  children: ComponentChildren;
}

/**
 * A form that sends itself once at a time: `onSubmit` runs on submit, its
 * rejection is sorted into field errors (shown by each `Field`) and a form
 * error (shown before `actions`); `actions` gets whether it is being sent.
 * A form in a dialog stays busy after a success (the dialog closes); one on a
 * page (`repeatable`) can be sent again.
 */
export function Form(props: {
  /** Sends the form; it gets the form element (what a control shows before the next render). */
  onSubmit: (form: HTMLFormElement) => Promise<unknown>;
  fields: readonly string[];
  sortErrors?: ((err: unknown, fields: readonly string[]) => FormErrors) | undefined;
  noValidate?: boolean | undefined;
  class?: string | undefined;
  labelledBy?: string;
  testId?: string;
  /** The form stays on the page after a success and can be sent again. */
  repeatable?: boolean;
  /** Every change of a control sends the form (settings that apply as they are chosen). */
  submitOnChange?: boolean;
  actions?: (busy: boolean) => ComponentChildren;
  children: ComponentChildren;
}) {
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);
  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    // A dialog opened from another one sits inside it: its submit is its own.
    event.stopPropagation();
    setBusy(true);
    setErrors(NO_ERRORS);
    try {
      await props.onSubmit(event.currentTarget);
      if (props.repeatable) setBusy(false);
    } catch (err) {
      setErrors((props.sortErrors ?? formErrors)(err, props.fields));
      setBusy(false);
    }
  };
  return (
    <form
      onSubmit={submit}
      onChange={props.submitOnChange ? (event) => event.currentTarget.requestSubmit() : undefined}
      noValidate={props.noValidate}
      class={props.class}
      aria-labelledby={props.labelledBy}
      data-testid={props.testId}
    >
      <FormErrorsContext.Provider value={errors}>{props.children}</FormErrorsContext.Provider>
      <ErrorMessage error={errors.form} />
      {props.actions?.(busy)}
    </form>
  );
}

/** A modal form; see the module comment. The submit button stays disabled after a success (the caller closes it). */
export function FormDialog(props: FormDialogProps) {
  return (
    <Dialog title={props.title} onClose={props.onClose} wide={props.wide} testId={props.testId}>
      <Form
        onSubmit={props.onSubmit}
        fields={props.fields}
        sortErrors={props.sortErrors}
        noValidate={props.noValidate}
        class={props.formClass}
        actions={(busy) => (
          <div class="actions">
            {props.extraActions}
            <button type="button" class="secondary" onClick={props.onClose}>
              {props.cancelLabel ?? 'Cancel'}
            </button>
            {props.submitLabel === null ? null : (
              <button type="submit" class="primary" disabled={busy || props.submitDisabled}>
                {(busy ? props.busyLabel : undefined) ?? props.submitLabel ?? 'Save'}
              </button>
            )}
          </div>
        )}
      >
        {props.children}
      </Form>
      {props.after}
    </Dialog>
  );
}

/** A checkbox with its label on the same line (`<CheckboxField {...form.check('enabled')}>Enabled</CheckboxField>`). */
export function CheckboxField(props: {
  name: string;
  checked: boolean;
  onChange: (event: JSX.TargetedEvent<HTMLInputElement>) => void;
  children: ComponentChildren;
  disabled?: boolean;
}) {
  return (
    <label class="field inline">
      <input
        name={props.name}
        type="checkbox"
        checked={props.checked}
        disabled={props.disabled}
        onChange={props.onChange}
      />{' '}
      {props.children}
    </label>
  );
}

type FieldValues = Record<string, string | boolean>;
type TextTarget = HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement;
type KeysOf<T, V> = { [K in keyof T]: T[K] extends V ? K : never }[keyof T] & string;

/**
 * The state of a form's controls in one object, with the props that bind a
 * control to it: `<input {...form.text('name')} />`, `<select {...form.choice('protocol')}>`,
 * `<input type="checkbox" {...form.check('enabled')} />`. Each binding names
 * the control, which is also how a `Field` finds its server error.
 */
export function useFields<T extends FieldValues>(initial: T) {
  const [values, setValues] = useState<T>(initial);
  const set = <K extends keyof T>(key: K, value: T[K]) => setValues((prev) => ({ ...prev, [key]: value }));
  return {
    values,
    set,
    /** An input or textarea edited as text (`onInput`). */
    text: (key: KeysOf<T, string>) => ({
      name: key,
      value: values[key] as string,
      onInput: (e: JSX.TargetedEvent<TextTarget>) => set(key, e.currentTarget.value as T[typeof key]),
    }),
    /** A select (`onChange`). */
    choice: (key: KeysOf<T, string>) => ({
      name: key,
      value: values[key] as string,
      onChange: (e: JSX.TargetedEvent<TextTarget>) => set(key, e.currentTarget.value as T[typeof key]),
    }),
    /** A checkbox. */
    check: (key: KeysOf<T, boolean>) => ({
      name: key,
      type: 'checkbox' as const,
      checked: values[key] as boolean,
      onChange: (e: JSX.TargetedEvent<HTMLInputElement>) =>
        set(key, e.currentTarget.checked as T[typeof key]),
    }),
  };
}

/** A number typed in a text control, or the text itself when it is not one (the server names the field). */
export function numberOr(value: string): number | string {
  const n = Number(value);
  return value.trim() === '' || Number.isNaN(n) ? value : n;
}
