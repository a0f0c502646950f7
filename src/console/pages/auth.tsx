/** First-run setup (username, password, setup code) and the login page. */
import { call } from '../api';
import { Form, useFields } from '../components/form-dialog';
import { Field } from '../components/ui';
import type { User } from '../types';

export function AuthPage(props: { mode: 'setup' | 'login'; onSignedIn: (user: User) => void }) {
  const setup = props.mode === 'setup';
  const form = useFields({ username: '', password: '', setupToken: '' });

  const submit = async () => {
    const { username, password, setupToken } = form.values;
    const result = setup
      ? await call<{ user: User }>('POST', '/api/v1/setup', { body: { username, password, setupToken } })
      : await call<{ user: User }>('POST', '/api/v1/auth/login', {
          body: { username, password },
          allow401: true,
        });
    props.onSignedIn(result.user);
  };

  return (
    <main class="auth">
      <Form
        class="card auth-card"
        onSubmit={submit}
        fields={['username', 'password', 'setupToken']}
        labelledBy="auth-title"
        actions={(busy) => (
          <button type="submit" class="primary wide" disabled={busy}>
            {setup ? 'Create administrator' : 'Log in'}
          </button>
        )}
      >
        <p class="brand">p2pstream</p>
        <h1 id="auth-title">{setup ? 'Create the administrator' : 'Log in'}</h1>
        {setup ? (
          <p class="muted">
            First run: choose the administrator's username and password. The setup code is printed in the
            server log (or set with <code>P2PSTREAM_SETUP_TOKEN</code>).
          </p>
        ) : null}
        <Field label="Username">
          <input autocomplete="username" required {...form.text('username')} />
        </Field>
        <Field label="Password" hint={setup ? 'At least 12 characters.' : undefined}>
          <input
            type="password"
            autocomplete={setup ? 'new-password' : 'current-password'}
            required
            minLength={setup ? 12 : undefined}
            {...form.text('password')}
          />
        </Field>
        {setup ? (
          <Field label="Setup code">
            <input autocomplete="one-time-code" required {...form.text('setupToken')} />
          </Field>
        ) : null}
      </Form>
    </main>
  );
}
