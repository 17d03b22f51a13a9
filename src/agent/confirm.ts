import { createInterface } from 'node:readline/promises';
import { AgentError } from '../errors.ts';

/**
 * Destructive commands go ahead with --yes, or after the user types the environment's name on
 * a TTY. Without a TTY and without --yes they fail at once: never a hang waiting on stdin.
 */
export async function confirmDestructive(what: string, env: string, yes: boolean | undefined): Promise<void> {
  if (yes) return;
  if (!process.stdin.isTTY || !process.stderr.isTTY) {
    throw new AgentError('E_CONFIRMATION_REQUIRED', `confirmation needed (${what}), and there is no terminal to ask on: pass --yes`);
  }
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`${what}.\nType the environment name (${env}) to go ahead: `);
    if (answer.trim() !== env) throw new AgentError('E_CONFIRMATION_REQUIRED', `${what}: not confirmed; nothing was changed`);
  } finally {
    rl.close();
  }
}
