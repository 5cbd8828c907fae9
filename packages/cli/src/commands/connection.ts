import type { Command } from 'commander';
import { checkName, checkPostgresUrl } from '../args.js';
import { withClient, type Globals } from '../client.js';
import { dash, printJson, printTable, println, usageError } from '../output.js';

/** `connection add|list|remove`: the databases syncflow knows, by name. URLs go in, never come out. */

export function registerConnection(group: (name: string, description: string) => Command): void {
  const cmd = group('connection', 'register, list and remove databases');

  cmd.command('add')
    .description('register a database under NAME (its URL is stored encrypted and never shown again)')
    .argument('<name>', 'connection name: lower-case letters, digits, _ and -')
    .requiredOption('--url <url>', 'postgres://user:password@host:port/dbname, or - to read it from stdin (keeps it out of shell history)')
    .requiredOption('--group <group>', 'agent group (region) whose agents reach this database')
    .option('--protected', 'mark it protected: the coordinator guards it against destructive use')
    .action(async (name: string, opts: { url: string; group: string; protected?: boolean }, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      checkName('connection', name);
      checkName('group', opts.group);
      const url = opts.url === '-' ? await readStdinLine() : opts.url;
      checkPostgresUrl('--url', url);
      const conn = await withClient(g, (client) => client.unary('CreateConnection', {
        name, url, group: opts.group, protected: !!opts.protected,
      }));
      if (g.json) return printJson(conn);
      println(`connection ${conn.name} added (group ${conn.group}, database ${dash(conn.database)}${conn.protected ? ', protected' : ''})`);
    });

  cmd.command('list')
    .description('list registered databases')
    .action(async (_opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      const res = await withClient(g, (client) => client.unary('ListConnections', {}));
      if (g.json) return printJson(res);
      const conns = [...(res.connections ?? [])].sort((a, b) => a.name.localeCompare(b.name));
      if (!conns.length) return println('no connections (add one with: syncflow connection add NAME --url URL --group GROUP)');
      printTable(
        [{ header: 'NAME' }, { header: 'GROUP' }, { header: 'DATABASE' }, { header: 'PROTECTED' }, { header: 'CREATED' }],
        conns.map((x) => [x.name, x.group, dash(x.database), x.protected ? 'yes' : 'no', dash(x.created_at)]),
      );
    });

  cmd.command('remove')
    .alias('rm')
    .description('forget a registered database (the database itself is not touched)')
    .argument('<name>', 'connection name')
    .action(async (name: string, _opts: unknown, c: Command) => {
      const g = c.optsWithGlobals<Globals>();
      checkName('connection', name);
      const res = await withClient(g, (client) => client.unary('DeleteConnection', { name }));
      if (g.json) return printJson(res);
      println(res.deleted ? `connection ${name} removed` : `connection ${name} was not registered`);
    });
}

async function readStdinLine(): Promise<string> {
  if (process.stdin.isTTY) throw usageError('--url -: pipe the URL on stdin (e.g. from a secret store)');
  let data = '';
  for await (const chunk of process.stdin) data += chunk;
  const line = data.split(/\r?\n/).find((l) => l.trim());
  if (!line) throw usageError('--url -: nothing on stdin');
  return line.trim();
}
