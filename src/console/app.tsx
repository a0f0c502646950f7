/**
 * The console shell: first-run setup, login, and once signed in the header
 * (environment switcher, current user, logout), the navigation and the pages.
 * A 401 from any call returns to the login page with `?next=` the page the
 * user was on, and login brings them back there.
 */
import { useEffect, useState } from 'preact/hooks';
import { call, LOCAL, local, onUnauthenticated } from './api';
import { ErrorMessage, TrustBadge } from './components/ui';
import { EnvironmentProvider, useEnvironments } from './environment';
import { AgentsPage } from './pages/agents';
import { AuthPage } from './pages/auth';
import { CachePage } from './pages/cache';
import { EnvironmentsPage } from './pages/environments';
import { OverviewPage } from './pages/overview';
import { PoliciesPage } from './pages/policies';
import { ProxyPage } from './pages/proxy';
import { TemplatesPage } from './pages/templates';
import { TlsPage } from './pages/tls';
import { TokensPage } from './pages/tokens';
import { TrafficPage } from './pages/traffic';
import { currentLocation, navigate, safeNext, useLocation } from './router';
import type { User } from './types';

type Session =
  | { state: 'loading' }
  | { state: 'setup' }
  | { state: 'anonymous' }
  | { state: 'user'; user: User };

const NAV: { path: string; label: string; scoped: boolean }[] = [
  { path: '/', label: 'Overview', scoped: true },
  { path: '/proxy', label: 'Proxy', scoped: true },
  { path: '/tls', label: 'TLS', scoped: true },
  { path: '/traffic', label: 'Traffic', scoped: true },
  { path: '/policies', label: 'Traffic Policy', scoped: true },
  { path: '/cache', label: 'Cache', scoped: true },
  { path: '/templates', label: 'Templates', scoped: true },
  { path: '/agents', label: 'Agents', scoped: true },
  { path: '/settings/tokens', label: 'API Tokens', scoped: true },
  { path: '/settings/environments', label: 'Environments', scoped: false },
];

export function App() {
  const [session, setSession] = useState<Session>({ state: 'loading' });
  const [bootError, setBootError] = useState<unknown>(null);
  const { path, query } = useLocation();

  useEffect(() => {
    onUnauthenticated(() => {
      setSession((s) => (s.state === 'setup' ? s : { state: 'anonymous' }));
      const here = currentLocation();
      if (!here.startsWith('/login') && !here.startsWith('/setup')) {
        navigate(`/login?next=${encodeURIComponent(here)}`, { replace: true });
      }
    });
    (async () => {
      const { setupRequired } = await local.get<{ setupRequired: boolean }>('/api/v1/setup');
      if (setupRequired) {
        setSession({ state: 'setup' });
        return;
      }
      try {
        const me = await call<{ user: User }>('GET', '/api/v1/auth/me', { allow401: true });
        setSession({ state: 'user', user: me.user });
      } catch {
        setSession({ state: 'anonymous' });
      }
    })().catch(setBootError);
    return () => onUnauthenticated(null);
  }, []);

  // Keep the address bar consistent with the session state.
  useEffect(() => {
    if (session.state === 'setup' && path !== '/setup') navigate('/setup', { replace: true });
    if (session.state === 'anonymous' && path !== '/login') {
      const here = currentLocation();
      navigate(here === '/' ? '/login' : `/login?next=${encodeURIComponent(here)}`, { replace: true });
    }
    if (session.state === 'user' && (path === '/login' || path === '/setup')) {
      navigate(safeNext(query.get('next')), { replace: true });
    }
  }, [session.state, path, query]);

  if (bootError) {
    return (
      <main class="center">
        <ErrorMessage error={bootError} />
      </main>
    );
  }
  if (session.state === 'loading') return <main class="center muted">Loading…</main>;
  if (session.state === 'setup' || session.state === 'anonymous') {
    return (
      <AuthPage
        mode={session.state === 'setup' ? 'setup' : 'login'}
        onSignedIn={(user) => {
          setSession({ state: 'user', user });
          navigate(safeNext(new URLSearchParams(window.location.search).get('next')), { replace: true });
        }}
      />
    );
  }
  return (
    <EnvironmentProvider>
      <Shell
        user={session.user}
        path={path}
        onLoggedOut={() => {
          setSession({ state: 'anonymous' });
          navigate('/login', { replace: true });
        }}
      />
    </EnvironmentProvider>
  );
}

function Shell(props: { user: User; path: string; onLoggedOut: () => void }) {
  const env = useEnvironments();
  const logout = async () => {
    try {
      await local.post('/api/v1/auth/logout');
    } finally {
      props.onLoggedOut();
    }
  };
  const current = NAV.find((item) => item.path === props.path);
  const scoped = current?.scoped ?? true;
  return (
    <div class="shell">
      <header class="topbar">
        <a class="brand" href="/">
          p2pstream
        </a>
        <EnvironmentSwitcher />
        <div class="user">
          <span class="username" data-testid="current-user" title="Signed in user">
            {props.user.username}
          </span>
          <button type="button" class="secondary small" onClick={logout}>
            Log out
          </button>
        </div>
      </header>
      <nav class="sidenav" aria-label="Main">
        <ul>
          {NAV.filter((item) => !item.path.startsWith('/settings')).map((item) => (
            <NavItem key={item.path} item={item} current={props.path} />
          ))}
        </ul>
        <p class="nav-group" id="nav-settings">
          Settings
        </p>
        <ul aria-labelledby="nav-settings">
          {NAV.filter((item) => item.path.startsWith('/settings')).map((item) => (
            <NavItem key={item.path} item={item} current={props.path} />
          ))}
        </ul>
      </nav>
      <main class="content" id="main">
        {env.notice ? (
          <div class="notice" role="status">
            <span>{env.notice}</span>
            <button type="button" class="secondary small" onClick={env.dismissNotice}>
              Dismiss
            </button>
          </div>
        ) : null}
        {scoped && env.selected.id !== LOCAL ? (
          <p class="scope" data-testid="scope">
            Operating on <strong>{env.selected.name}</strong> ({env.selected.url})
          </p>
        ) : null}
        {!env.loaded ? <p class="muted">Loading environments…</p> : <Page path={props.path} />}
      </main>
    </div>
  );
}

function NavItem(props: { item: { path: string; label: string }; current: string }) {
  return (
    <li>
      <a href={props.item.path} aria-current={props.item.path === props.current ? 'page' : undefined}>
        {props.item.label}
      </a>
    </li>
  );
}

function Page(props: { path: string }) {
  const env = useEnvironments();
  // Keyed by environment: switching remounts the page, so nothing of the old one stays on screen.
  const key = env.selected.id;
  switch (props.path) {
    case '/':
      return <OverviewPage key={key} environment={key} />;
    case '/proxy':
      return <ProxyPage key={key} environment={key} />;
    case '/tls':
      return <TlsPage key={key} environment={key} />;
    case '/traffic':
      return <TrafficPage key={key} environment={key} />;
    case '/policies':
      return <PoliciesPage key={key} environment={key} />;
    case '/cache':
      return <CachePage key={key} environment={key} />;
    case '/templates':
      return <TemplatesPage key={key} environment={key} />;
    case '/agents':
      return <AgentsPage key={key} environment={key} />;
    case '/settings/tokens':
      return <TokensPage key={key} environment={key} />;
    case '/settings/environments':
      return <EnvironmentsPage />;
    default:
      return (
        <section>
          <h1>Not found</h1>
          <p>
            There is no page at <code>{props.path}</code>. <a href="/">Go to the overview</a>.
          </p>
        </section>
      );
  }
}

function EnvironmentSwitcher() {
  const env = useEnvironments();
  const selectedEntry = env.entries.find((e) => e.environment.id === env.selected.id);
  return (
    <div class="switcher">
      <label for="environment-switcher">Environment</label>
      <select
        id="environment-switcher"
        value={env.selected.id}
        onChange={(event) => env.select(event.currentTarget.value)}
      >
        {env.entries.map(({ environment, blocked, agent }) => (
          <option
            key={environment.id}
            value={environment.id}
            disabled={blocked !== null}
            data-blocked={blocked ?? undefined}
          >
            {environment.name}
            {environment.virtual ? '' : ` · ${environment.trustState ?? ''}`}
            {environment.transport === 'agent' && agent ? ` · via ${agent.name}` : ''}
            {blocked ? ` — unavailable: ${blocked}` : ''}
          </option>
        ))}
      </select>
      {selectedEntry && !selectedEntry.environment.virtual ? (
        <span data-testid="selected-trust">
          <TrustBadge state={selectedEntry.environment.trustState} />
        </span>
      ) : null}
    </div>
  );
}
