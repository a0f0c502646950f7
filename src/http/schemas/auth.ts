/** Schemas of setup, login, logout and the current user. */
import { Type } from 'typebox';
import { errorResponses, NoContent, Nullable, Timestamp } from './common.js';

export const User = Type.Object({ id: Type.String(), username: Type.String(), createdAt: Timestamp });

/**
 * The setup body. The fields are checked by the auth service in a fixed order
 * (setup code first, so nothing is learned without it), so none is required
 * or refused here.
 */
export const SetupBody = Type.Object({
  username: Type.Optional(Type.String({ description: 'Required: 3–64 of a-z, 0-9, _ . - (lower-cased).' })),
  password: Type.Optional(Type.String({ description: 'Required: 12–1024 characters.' })),
  setupToken: Type.Optional(Type.String({ description: 'Required: the setup code the server logged.' })),
});

export const LoginBody = Type.Object({
  username: Type.Optional(Type.String()),
  password: Type.Optional(Type.String()),
});

export const UserReply = Type.Object({ user: User });

export const MeReply = Type.Object({
  user: Nullable(User),
  authMethod: Type.Enum(['session', 'apiToken']),
});

export const setupStatusSchema = {
  summary: 'Whether first-admin setup is pending',
  security: [],
  response: { 200: Type.Object({ setupRequired: Type.Boolean() }), ...errorResponses },
};
export const setupSchema = {
  summary: 'Create the first admin (sets the session cookie)',
  security: [],
  body: SetupBody,
  response: { 201: UserReply, ...errorResponses },
};
export const loginSchema = {
  summary: 'Log in with a password (sets the session cookie)',
  security: [],
  body: LoginBody,
  response: { 200: UserReply, ...errorResponses },
};
export const logoutSchema = {
  summary: 'Revoke the current session',
  response: { 204: NoContent, ...errorResponses },
};
export const meSchema = {
  summary: 'The current user and how they authenticated',
  response: { 200: MeReply, ...errorResponses },
};

export const ChangePasswordBody = Type.Object({
  currentPassword: Type.String({ maxLength: 1024 }),
  newPassword: Type.String({ description: '12–1024 characters.' }),
});
export const changePasswordSchema = {
  summary: "Change the current user's password; revokes their other sessions",
  body: ChangePasswordBody,
  response: { 204: NoContent, ...errorResponses },
};
