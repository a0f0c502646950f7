/** The agent daemon entry point (`p2pstream agent`). */

export async function runAgentFromEnv(_env: NodeJS.ProcessEnv): Promise<void> {
  throw new Error('the agent daemon is not available in this build yet');
}
