/**
 * The shapes the console reads from the management API, derived from the
 * routes' schemas (src/http/schemas/): the schema that serializes a reply is
 * the type the console reads it as. Type-only imports: nothing of the schemas
 * (or TypeBox) is bundled into the console.
 */
import type { Static } from 'typebox';
import type {
  AgentConnection as AgentConnectionSchema,
  AgentGrant as AgentGrantSchema,
  Agent as AgentSchema,
  AgentSetup as AgentSetupSchema,
} from '../http/schemas/agents';
import type { User as UserSchema } from '../http/schemas/auth';
import type {
  Rule as CacheRuleSchema,
  Settings as CacheSettingsSchema,
  Stats as CacheStatsSchema,
} from '../http/schemas/cache';
import type {
  Certificate as CertificateSchema,
  DiscoverReply as DiscoverReplySchema,
  EnvironmentEntry as EnvironmentEntrySchema,
  LastTest as LastTestSchema,
  LocalEnvironmentId as LocalEnvironmentIdSchema,
  TestReply as TestReplySchema,
  TrustState as TrustStateSchema,
} from '../http/schemas/environments';
import type {
  TestResult as PolicyTestResultSchema,
  RateLimitSchema as RateLimitRuleSchema,
  ShaperSchema,
  AutoSchema as WafAutoSchema,
  WafRuleSchema,
} from '../http/schemas/policies';
import type {
  BackendHealth as BackendHealthSchema,
  BackendMember as BackendMemberSchema,
  Backend as BackendSchema,
  Listener as ListenerSchema,
  ProxyRoute as ProxyRouteSchema,
  RouteTarget as RouteTargetSchema,
} from '../http/schemas/proxy';
import type {
  TemplateSchema as ResponseTemplateSchema,
  Preview as TemplatePreviewSchema,
} from '../http/schemas/templates';
import type {
  AccountSchema,
  AcmeChallenge as AcmeChallengeSchema,
  CertificateSource as CertificateSourceSchema,
  CertificateStatus as CertificateStatusSchema,
  ProviderSchema,
  CertificateSchema as TlsCertificateSchema,
} from '../http/schemas/tls';
import type { ApiToken as ApiTokenSchema } from '../http/schemas/tokens';
import type {
  Overview as OverviewSchema,
  TraceEvent as TraceEventSchema,
  TraceLevel as TraceLevelSchema,
  TrafficSettings as TrafficSettingsSchema,
} from '../http/schemas/traffic';

export type User = Static<typeof UserSchema>;
export type TrustState = Static<typeof TrustStateSchema>;
export type LocalEnvironmentId = Static<typeof LocalEnvironmentIdSchema>;
export type Certificate = Static<typeof CertificateSchema>;
export type LastTest = Static<typeof LastTestSchema>;
/** What `POST /api/v1/environments/:id/discover` answers. */
export type DiscoverOutcome = Static<typeof DiscoverReplySchema>;
/** What `POST /api/v1/environments/:id/test` answers. */
export type TestOutcome = Static<typeof TestReplySchema>;
/** A registered environment, or the virtual Local one (`virtual: true`). */
export type Environment = Static<typeof EnvironmentEntrySchema>;
export type ApiToken = Static<typeof ApiTokenSchema>;
export type AgentConnection = Static<typeof AgentConnectionSchema>;
export type Agent = Static<typeof AgentSchema>;
export type AgentSetup = Static<typeof AgentSetupSchema>;
/** What creating or rotating an agent answers: the token is shown once. */
export type AgentGrant = Static<typeof AgentGrantSchema>;
export type Listener = Static<typeof ListenerSchema>;
export type RouteTarget = Static<typeof RouteTargetSchema>;
export type ProxyRoute = Static<typeof ProxyRouteSchema>;
export type Backend = Static<typeof BackendSchema>;
export type BackendMember = Static<typeof BackendMemberSchema>;
/** One member's state in `GET /api/v1/proxy/backends/:id/health`. */
export type MemberHealth = Static<typeof BackendHealthSchema>['members'][number];
export type TraceEvent = Static<typeof TraceEventSchema>;
export type TraceLevel = Static<typeof TraceLevelSchema>;
export type TrafficSettings = Static<typeof TrafficSettingsSchema>;
export type Overview = Static<typeof OverviewSchema>;

/** Thresholds of an auto-mode WAF rule. */
export type WafAuto = Static<typeof WafAutoSchema>;
export type WafRule = Static<typeof WafRuleSchema>;
export type RateLimitRule = Static<typeof RateLimitRuleSchema>;
export type Shaper = Static<typeof ShaperSchema>;
/** One stage's decision in `POST /api/v1/policies/test`. */
export type PolicyTestStage = Static<typeof PolicyTestResultSchema>['stages'][number];
/** What the policy editors need of a response template. */
export type ResponseTemplateSummary = Pick<ResponseTemplate, 'id' | 'name' | 'kind'>;

export type TlsCertificate = Static<typeof TlsCertificateSchema>;
export type CertificateStatus = Static<typeof CertificateStatusSchema>;
export type CertificateSource = Static<typeof CertificateSourceSchema>;
export type AcmeChallenge = Static<typeof AcmeChallengeSchema>;
export type AcmeAccount = Static<typeof AccountSchema>;
export type DnsProvider = Static<typeof ProviderSchema>;

export type CacheSettings = Static<typeof CacheSettingsSchema>;
export type CacheRule = Static<typeof CacheRuleSchema>;
export type CacheStats = Static<typeof CacheStatsSchema>;
export type ResponseTemplate = Static<typeof ResponseTemplateSchema>;
export type TemplatePreview = Static<typeof TemplatePreviewSchema>;
