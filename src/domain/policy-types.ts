/**
 * The closed value sets of traffic policies, without any runtime dependency,
 * so that the route schemas (and through them the console's types) can use them.
 */
export const WAF_ACTIONS = ['block', 'allow', 'log', 'challenge'] as const;
export const RATE_LIMIT_ALGORITHMS = ['fixed_window', 'sliding_window', 'token_bucket'] as const;
