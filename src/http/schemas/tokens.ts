/** Schemas of the API token routes (README "API tokens with curl", "Security notes"). */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Nullable, Timestamp } from './common.js';

/** An API token as the API shows it (never the token or its hash). */
export const ApiToken = Type.Object({
  id: Type.String(),
  name: Type.String(),
  enabled: Type.Boolean(),
  expiresAt: Nullable(Timestamp),
  lastUsedAt: Nullable(Timestamp),
  createdAt: Timestamp,
});

export const CreateTokenBody = Type.Object(
  {
    name: Type.String({ description: '1–128 characters, unique.' }),
    expiresAt: Type.Optional(
      Nullable(Type.String({ description: 'ISO 8601, in the future; null = never.' })),
    ),
    enabled: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

export const UpdateTokenBody = Type.Object(
  { name: Type.Optional(Type.String()), enabled: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);

const TokenReply = Type.Object({ apiToken: ApiToken });

export const listTokensSchema = {
  summary: 'List API tokens',
  response: { 200: Type.Object({ tokens: Type.Array(ApiToken) }), ...errorResponses },
};
export const createTokenSchema = {
  summary: 'Create an API token (the token is shown this once)',
  body: CreateTokenBody,
  response: {
    201: Type.Object({ token: Type.String({ description: '`p2pat_…`, shown once.' }), apiToken: ApiToken }),
    ...errorResponses,
  },
};
export const getTokenSchema = {
  summary: 'One API token',
  params: IdParams,
  response: { 200: TokenReply, ...errorResponses },
};
export const updateTokenSchema = {
  summary: 'Rename, enable or disable an API token',
  params: IdParams,
  body: UpdateTokenBody,
  response: { 200: TokenReply, ...errorResponses },
};
export const deleteTokenSchema = {
  summary: 'Delete (revoke) an API token',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
