#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { intArg } from './args.js';
import { DEFAULT_COORDINATOR } from './client.js';
import { registerConnection } from './commands/connection.js';
import { registerJob } from './commands/job.js';
import { registerDlq } from './commands/dlq.js';
import { registerLocal } from './commands/local.js';
import { registerSync } from './commands/sync.js';
import { registerSafety } from './commands/safety.js';
import { oneLine, reportError, usageError } from './output.js';

/**
 * `syncflow`: the operator CLI, a SyncService client. Errors always end as one stderr line
 * `syncflow: <reason>`, exit 2 for usage mistakes and invalid arguments, 1 for everything else.
 */

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

const ENV_HELP = `
Environment:
  SYNCFLOW_COORDINATOR      coordinator address, host:port (default ${DEFAULT_COORDINATOR}; --coordinator wins)
  SYNCFLOW_API_TOKEN        bearer token sent with every call
  SYNCFLOW_TLS_CA           CA certificate (PEM file): connect with TLS and verify the server
  SYNCFLOW_TLS_SERVER_NAME  name to verify in the server certificate, if not the dialled host

Examples:
  syncflow local up --region eu=postgres://… --region us=postgres://…
  syncflow sync plan --from eu --to us
  syncflow sync start --from eu --to us --mode mirror --wait
  syncflow job list --json`;

/** Rejects a group called without (or with an unknown) subcommand, in one line. */
function groupAction(cmd: Command) {
  return (_opts: unknown, self: Command) => {
    const names = cmd.commands.map((c) => c.name()).filter((n) => n !== 'help');
    const path = cmd.parent ? `syncflow ${cmd.name()}` : 'syncflow';
    const given = self.args[0];
    if (given === 'help') {
      // `syncflow help [command]` / `syncflow job help [command]` (commander only offers it without an action)
      const want = self.args[1];
      const target = want === undefined ? cmd : cmd.commands.find((c) => c.name() === want || c.aliases().includes(want));
      if (!target) throw usageError(`no help for unknown command '${want}' (expected one of: ${names.join(', ')})`);
      target.outputHelp();
      return;
    }
    if (given === undefined) throw usageError(`missing command: ${path} ${names.join('|')} (see ${path} --help)`);
    throw usageError(`unknown command '${given}' for '${path}' (expected one of: ${names.join(', ')})`);
  };
}

export function buildProgram(): Command {
  const program = new Command('syncflow')
    .description('copy and keep in sync PostgreSQL databases across regions (a client of the syncflow coordinator)')
    .version(version(), '-V, --version')
    .option('--json', 'print results as JSON (the gRPC response; int64 values as strings)')
    .option('--coordinator <addr>', `coordinator address (env SYNCFLOW_COORDINATOR, default ${DEFAULT_COORDINATOR})`)
    .option('--timeout <seconds>', 'deadline of each call (default 30 s; 120 s for plan and start)', intArg(1, 86_400))
    .exitOverride()
    .configureOutput({ outputError: () => {} })
    .showSuggestionAfterError(true)
    .allowExcessArguments(true)
    .addHelpText('after', ENV_HELP);
  program.action(groupAction(program));

  const group = (name: string, description: string) => {
    const cmd = program.command(name).description(description).allowExcessArguments(true);
    cmd.action(groupAction(cmd));
    return cmd;
  };
  registerConnection(group);
  registerSync(group);
  registerJob(group);
  registerDlq(group);
  registerLocal(group);
  registerSafety(program);
  // leaf commands take exactly their declared arguments
  for (const g of program.commands) {
    for (const c of g.commands) c.allowExcessArguments(false);
    if (g.commands.length === 0) g.allowExcessArguments(false);
  }
  return program;
}

export async function main(argv: string[]): Promise<void> {
  // Node's deprecation notices (e.g. TLS to an IP address) would break the one-line error contract.
  process.noDeprecation = true;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return; // --help, --version
      process.stderr.write(`syncflow: ${oneLine(e.message.replace(/^error:\s*/i, ''))}\n`);
      process.exitCode = 2;
      return;
    }
    reportError(e);
  }
}

await main(process.argv);
// Safety net: a stray handle (a half-closed channel) must not keep a finished command alive.
setTimeout(() => process.exit(), 3_000).unref();
