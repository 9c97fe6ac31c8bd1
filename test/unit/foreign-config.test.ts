// A PgBouncer or Pgpool-II config file (or any key = value file) passed as the pgmux config:
// one line saying what it looks like and the import command, never the file's text.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { importConfig } from '../../src/import/importConfig.js';

const dir = mkdtempSync(join(tmpdir(), 'pgmux-foreign-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

// Shapes of PgBouncer's and Pgpool-II's sample configs; SECRET marks text that must not be echoed.
const PGBOUNCER_INI = `;; database name = connect string
[databases]
appdb = host=127.0.0.1 port=5432 dbname=appdb password=SECRET

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt
`;
const PGPOOL_CONF = `backend_clustering_mode = 'streaming_replication'
listen_addresses = '*'
port = 9999
backend_hostname0 = 'db1'
backend_port0 = 5432
sr_check_password = 'SECRET'
`;

async function run(argv: string[]): Promise<{ code: number; err: string }> {
  let err = '';
  const code = await main(argv, { out: () => {}, err: (s) => void (err += s), env: {} });
  return { code, err };
}

describe('--config with a file in another format', () => {
  it('a pgbouncer.ini: one line naming pgmux import, no file contents', async () => {
    const p = file('pgbouncer.ini', PGBOUNCER_INI);
    const r = await run(['check-config', '--config', p]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(`pgmux: --config: ${p} looks like a pgbouncer.ini, not pgmux YAML; convert it with: pgmux import ${p} > pgmux.yaml\n`);
    // The command it names works on the file.
    expect(importConfig(PGBOUNCER_INI).yaml).toMatch(/^listen: /m);
  });

  it('a pgpool.conf, with and without backend_hostname0 (then with --kind pgpool)', async () => {
    const p = file('pgpool.conf', PGPOOL_CONF);
    const r = await run(['start', '--config', p]);
    expect(r.code).toBe(2);
    expect(r.err).toBe(`pgmux: --config: ${p} looks like a pgpool.conf, not pgmux YAML; convert it with: pgmux import ${p} > pgmux.yaml\n`);
    const q = file('pgpool-nobackend.conf', "num_init_children = 32\npcp_port = 9898\nsr_check_password = 'SECRET'\n");
    expect((await run(['check-config', '--config', q])).err).toBe(
      `pgmux: --config: ${q} looks like a pgpool.conf, not pgmux YAML; convert it with: pgmux import --kind pgpool ${q} > pgmux.yaml\n`,
    );
  });

  it('any other key = value file: one line, not its text', async () => {
    const p = file('postgresql.conf', "listen_addresses = '*'\nmax_connections = 100\npassword_encryption = SECRET\n");
    const r = await run(['check-config', '--config', p]);
    expect(r.code).toBe(2);
    expect(r.err.split('\n')).toHaveLength(2);
    expect(r.err).toMatch(/has "key = value" lines \(an INI or \.conf file\), not pgmux YAML/);
    expect(r.err).not.toContain('SECRET');
  });

  it('JSON is YAML: a JSON config loads', async () => {
    const p = file('pgmux.json', JSON.stringify({ nodes: ['db1:5432'], pool_size: 4 }));
    let out = '';
    const code = await main(['check-config', '--config', p], { out: (s) => void (out += s), err: () => {}, env: {} });
    expect(code).toBe(0);
    expect(out).toMatch(/^pool_size: 4$/m);
  });
});
