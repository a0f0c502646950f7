/** First-run setup (username, password, setup code) and the login page. */
import type { JSX } from 'preact';
import { useState } from 'preact/hooks';
import { call } from '../api';
import { ErrorMessage, Field, type FormErrors, formErrors, NO_ERRORS } from '../components/ui';
import type { User } from '../types';

export function AuthPage(props: { mode: 'setup' | 'login'; onSignedIn: (user: User) => void }) {
  const setup = props.mode === 'setup';
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [setupToken, setSetupToken] = useState('');
  const [errors, setErrors] = useState<FormErrors>(NO_ERRORS);
  const [busy, setBusy] = useState(false);

  const submit = async (event: JSX.TargetedEvent<HTMLFormElement>) => {
    event.preventDefault();
    setBusy(true);
    setErrors(NO_ERRORS);
    try {
      const result = setup
        ? await call<{ user: User }>('POST', '/api/v1/setup', { body: { username, password, setupToken } })
        : await call<{ user: User }>('POST', '/api/v1/auth/login', {
            body: { username, password },
            allow401: true,
          });
      props.onSignedIn(result.user);
    } catch (err) {
      setErrors(formErrors(err, ['username', 'password', 'setupToken']));
      setBusy(false);
    }
  };

  return (
    <main class="auth">
      <form class="card auth-card" onSubmit={submit} aria-labelledby="auth-title">
        <p class="brand">p2pstream</p>
        <h1 id="auth-title">{setup ? 'Create the administrator' : 'Log in'}</h1>
        {setup ? (
          <p class="muted">
            First run: choose the administrator's username and password. The setup code is printed in the
            server log (or set with <code>P2PSTREAM_SETUP_TOKEN</code>).
          </p>
        ) : null}
        <Field label="Username" error={errors.field.username}>
          <input
            name="username"
            autocomplete="username"
            required
            value={username}
            onInput={(e) => setUsername(e.currentTarget.value)}
          />
        </Field>
        <Field
          label="Password"
          error={errors.field.password}
          hint={setup ? 'At least 12 characters.' : undefined}
        >
          <input
            name="password"
            type="password"
            autocomplete={setup ? 'new-password' : 'current-password'}
            required
            minLength={setup ? 12 : undefined}
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </Field>
        {setup ? (
          <Field label="Setup code" error={errors.field.setupToken}>
            <input
              name="setupToken"
              autocomplete="one-time-code"
              required
              value={setupToken}
              onInput={(e) => setSetupToken(e.currentTarget.value)}
            />
          </Field>
        ) : null}
        <ErrorMessage error={errors.form} />
        <button type="submit" class="primary wide" disabled={busy}>
          {setup ? 'Create administrator' : 'Log in'}
        </button>
      </form>
    </main>
  );
}
