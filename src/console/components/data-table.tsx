/**
 * The list every page shows: a table with one row an item and buttons at the
 * end of each row, preceded by its loading / error / empty state; and the
 * pieces around it (row actions whose accessible names say which row, the
 * confirmation before a delete, the error of a row action).
 */
import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { Badge, ConfirmDialog, LoadState } from './ui';

/** One column: its heading and what a row shows in it. */
export interface Column<T> {
  header: string;
  cell: (row: T) => ComponentChildren;
  /** Class of the cells (`mono`, `break`…). */
  class?: string;
  /** Tooltip of a cell. */
  title?: (row: T) => string | undefined;
  /** The cells' `data-testid`. */
  testId?: string;
}

/** A button at the end of a row; `danger` for destructive ones, `secondary` otherwise. */
export interface RowAction {
  label: string;
  onClick: () => void;
  danger?: boolean;
  disabled?: boolean;
  /** A tooltip (why it is disabled). */
  title?: string;
  /** Completes this button's accessible name instead of the row's name ("of web"). */
  what?: string;
}

export interface DataTableProps<T> {
  rows: readonly T[];
  columns: readonly Column<T>[];
  rowKey: (row: T) => string;
  /** The table's `data-testid`. */
  testId?: string;
  /** A row's `data-testid`. */
  rowTestId?: (row: T) => string;
  /** More attributes of a row (`data-*`). */
  rowAttributes?: (row: T) => Record<string, string>;
  /** Completes each action button's accessible name ("Delete web"). */
  rowName?: (row: T) => string;
  /** The buttons of a row (none: no actions column). */
  actions?: (row: T) => readonly (RowAction | null | false)[];
  /** Plural noun for the states: "Loading listeners…", "No listeners yet.". */
  what: string;
  loading?: boolean;
  /** A load error: shown in place of the table unless `errorShownElsewhere`. */
  error?: unknown;
  /** The page shows the load error once above several tables: no state here while it stands. */
  errorShownElsewhere?: boolean;
  /** What an empty list says instead of "No {what} yet.". */
  empty?: ComponentChildren;
  /** A live list: the table stays while empty, this one row saying why (waiting, filtered out). */
  emptyRow?: ComponentChildren;
  /** The table's class. */
  tableClass?: string;
}

/** See the module comment. Renders nothing but the state while the list is empty. */
export function DataTable<T>(props: DataTableProps<T>) {
  const failed = !!props.error;
  const shownError = props.errorShownElsewhere ? null : props.error;
  const empty = props.rows.length === 0 && props.emptyRow === undefined;
  if (empty && !failed && !props.loading && props.empty !== undefined) return <>{props.empty}</>;
  return (
    <>
      <LoadState loading={!!props.loading} error={shownError} empty={!failed && empty} what={props.what} />
      {empty ? null : (
        <table data-testid={props.testId} class={props.tableClass}>
          <thead>
            <tr>
              {props.columns.map((column) => (
                <th scope="col" key={column.header}>
                  {column.header}
                </th>
              ))}
              {props.actions ? (
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              ) : null}
            </tr>
          </thead>
          <tbody>
            {props.rows.length === 0 ? (
              <tr>
                <td colSpan={props.columns.length + (props.actions ? 1 : 0)} class="muted empty-row">
                  {props.emptyRow}
                </td>
              </tr>
            ) : null}
            {props.rows.map((row) => (
              <tr
                key={props.rowKey(row)}
                data-testid={props.rowTestId?.(row)}
                {...props.rowAttributes?.(row)}
              >
                {props.columns.map((column) => (
                  <td
                    key={column.header}
                    class={column.class}
                    title={column.title?.(row)}
                    data-testid={column.testId}
                  >
                    {column.cell(row)}
                  </td>
                ))}
                {props.actions ? (
                  <td class="row-actions">
                    <RowActions actions={props.actions(row)} name={props.rowName?.(row)} />
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

/** Small buttons whose accessible names end with `name` ("Edit web", "Delete web"). */
export function RowActions(props: {
  actions: readonly (RowAction | null | false)[];
  name?: string | undefined;
}) {
  return (
    <>
      {props.actions.map((action) =>
        action ? (
          <button
            key={action.label}
            type="button"
            class={action.danger ? 'danger small' : 'secondary small'}
            disabled={action.disabled}
            title={action.title}
            onClick={action.onClick}
          >
            {action.label}
            {(action.what ?? props.name) ? (
              <span class="visually-hidden"> {action.what ?? props.name}</span>
            ) : null}
          </button>
        ) : null,
      )}
    </>
  );
}

/**
 * Asks "Delete {name}?" (plus what follows from it) before `onConfirm` runs;
 * the delete's error stays in the dialog.
 */
export function ConfirmDelete(props: {
  title: string;
  name: string;
  /** Said after the question ("Clients using it are refused at once."). */
  consequence?: string;
  /** Replaces the whole question. */
  message?: ComponentChildren;
  confirmLabel?: string;
  onConfirm: () => Promise<unknown>;
  onClose: () => void;
}) {
  return (
    <ConfirmDialog
      title={props.title}
      message={
        props.message ?? (
          <>
            Delete <strong>{props.name}</strong>?{props.consequence ? ` ${props.consequence}` : null}
          </>
        )
      }
      confirmLabel={props.confirmLabel ?? 'Delete'}
      onConfirm={props.onConfirm}
      onClose={props.onClose}
    />
  );
}

/**
 * Runs a row action (enable, renew, test…) and keeps its error for the page
 * to show; the error clears when the next action starts.
 */
export function useAction(): { error: unknown; run: (action: () => Promise<unknown>) => Promise<void> } {
  const [error, setError] = useState<unknown>(null);
  const run = async (action: () => Promise<unknown>) => {
    setError(null);
    try {
      await action();
    } catch (err) {
      setError(err);
    }
  };
  return { error, run };
}

/** What a rule list shows of each rule (cache rules, policy rules). */
export interface ListedRule {
  id: string;
  name: string;
  priority: number;
  enabled: boolean;
  expression: string;
}

/**
 * Rules in the order they apply: priority, name (and "disabled"), badges and
 * a summary of what the rule does, its match expression, its row buttons.
 */
export function RuleList<R extends ListedRule>(props: {
  rules: readonly R[];
  summary: (rule: R) => ComponentChildren;
  actions: (rule: R) => readonly (RowAction | null | false)[];
  /** Shown after the name (e.g. an automatic mode's state). */
  badge?: (rule: R) => ComponentChildren;
}) {
  if (props.rules.length === 0) return null;
  return (
    <ol class="policy-list">
      {props.rules.map((rule) => (
        <li key={rule.id} data-rule={rule.name}>
          <div class="policy-line">
            <span class="muted" title="priority">
              {rule.priority}
            </span>{' '}
            <strong>{rule.name}</strong> {rule.enabled ? null : <Badge tone="muted">disabled</Badge>}
            {props.badge?.(rule)}
            <span class="policy-summary">{props.summary(rule)}</span>
          </div>
          <code class="mono break">{rule.expression === '' ? '(every request)' : rule.expression}</code>
          <div class="row-actions">
            <RowActions name={rule.name} actions={props.actions(rule)} />
          </div>
        </li>
      ))}
    </ol>
  );
}
