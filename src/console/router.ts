/**
 * A tiny history router: the current path as state, `navigate()` to move,
 * `<Link>`-free: the shell intercepts clicks on same-origin `<a href="/…">`.
 */
import { useEffect, useState } from 'preact/hooks';

const listeners = new Set<() => void>();

/** The current location as `pathname + search`. */
export function currentLocation(): string {
  return window.location.pathname + window.location.search;
}

/** Moves to `to` (a same-origin path); `replace` keeps the history length. */
export function navigate(to: string, options: { replace?: boolean } = {}): void {
  if (to === currentLocation()) return;
  if (options.replace) window.history.replaceState(null, '', to);
  else window.history.pushState(null, '', to);
  for (const listener of listeners) listener();
}

/** Re-renders on navigation; returns the current pathname and search params. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const [location, setLocation] = useState(currentLocation);
  useEffect(() => {
    const update = () => setLocation(currentLocation());
    listeners.add(update);
    window.addEventListener('popstate', update);
    return () => {
      listeners.delete(update);
      window.removeEventListener('popstate', update);
    };
  }, []);
  const url = new URL(location, window.location.origin);
  return { path: url.pathname, query: url.searchParams };
}

/** Turns plain left clicks on internal links into history navigation. */
export function interceptLinks(root: HTMLElement): () => void {
  const onClick = (event: MouseEvent) => {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const anchor = (event.target as Element | null)?.closest?.('a');
    if (!anchor || anchor.target || anchor.hasAttribute('download')) return;
    const href = anchor.getAttribute('href');
    if (!href?.startsWith('/') || href.startsWith('//')) return;
    event.preventDefault();
    navigate(href);
  };
  root.addEventListener('click', onClick);
  return () => root.removeEventListener('click', onClick);
}

/** A safe return path from a `next` parameter: same-origin paths only, never the auth pages. */
export function safeNext(value: string | null): string {
  if (!value?.startsWith('/') || value.startsWith('//') || value.startsWith('/\\')) return '/';
  if (value.startsWith('/login') || value.startsWith('/setup')) return '/';
  return value;
}
