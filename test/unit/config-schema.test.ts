// The settings schema (src/config/schema.ts) against what is derived from it and against
// docs/configuration.md: a setting added, renamed or re-defaulted in one place and not the
// other fails here. The docs checks read only the settings tables (key, alias, default, env,
// flag and the PgBouncer / Pgpool-II columns) and the Commands paragraph, so prose can change
// freely.

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULTS, configToObject, parseConfigObject } from '../../src/config/load.js';
import { RESTART_ONLY_KEYS, SETTINGS, envName, flagProp, settingRank, type Setting } from '../../src/config/schema.js';
import { CONFIG_OPTIONS, buildProgram } from '../../src/cli.js';
import { importConfig } from '../../src/import/importConfig.js';
import { configRows } from '../../src/admin/console.js';

const DOCS = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');

interface DocRow {
  section: string;
  line: number;
  /** Header name (lower case) -> cell text. */
  cells: Map<string, string>;
}

/** Every row of every table whose first column is `key`, with the "### " section it is under. */
function settingsTables(md: string): DocRow[] {
  const rows: DocRow[] = [];
  let section = '';
  let header: string[] | null = null;
  const split = (line: string) => line.trim().replace(/^\||\|$/g, '').split(/(?<!\\)\|/).map((c) => c.trim());
  md.split('\n').forEach((line, i) => {
    if (line.startsWith('#')) {
      if (line.startsWith('### ')) section = line.slice(4).trim();
      else if (line.startsWith('## ')) section = '';
      header = null;
      return;
    }
    if (!line.startsWith('|')) {
      header = null;
      return;
    }
    const cells = split(line);
    if (header === null) {
      if (cells[0] === 'key') header = cells.map((c) => c.toLowerCase());
      return;
    }
    if (cells.every((c) => /^-+$/.test(c))) return;
    rows.push({ section, line: i + 1, cells: new Map(header.map((h, j) => [h, cells[j] ?? ''])) });
  });
  return rows;
}

const ticked = (cell: string): string[] => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

const DOC_ROWS = settingsTables(DOCS);
const docRowOf = (key: string) => DOC_ROWS.filter((r) => ticked(r.cells.get('key')!)[0] === key);
const longFlag = (s: Setting) => /^--[a-z-]+/.exec(s.flag!.name)![0];

describe('settings schema', () => {
  it('has one row per key, alias and Config field', () => {
    const names = SETTINGS.flatMap((s) => [s.key, ...(s.aliases ?? [])]);
    expect(new Set(names).size).toBe(names.length);
    expect(SETTINGS.map((s) => s.field).sort()).toEqual(Object.keys(DEFAULTS).sort());
  });

  it('every default reads back from its shown form', () => {
    for (const s of SETTINGS) {
      const shown = configToObject(DEFAULTS, { reveal: true })[s.key];
      expect(parseConfigObject({ [s.key]: shown }, 'x')[s.field], s.key).toEqual(DEFAULTS[s.field]);
    }
  });

  it('masks every password or secret in check-config and SHOW CONFIG', () => {
    const withSecrets = { ...DEFAULTS, serverPassword: 'sekrit1', authUserPassword: 'sekrit2', healthCheckPassword: 'sekrit3' };
    for (const s of SETTINGS) if (/password|secret/.test(s.key)) expect(s.secret, s.key).toBe(true);
    expect(JSON.stringify(configToObject(withSecrets))).not.toContain('sekrit');
    expect(JSON.stringify(configRows(withSecrets))).not.toContain('sekrit');
    expect(configToObject(withSecrets, { reveal: true }).server_password).toBe('sekrit1');
  });

  it('SHOW CONFIG has one row per setting, in the schema order', () => {
    expect(configRows(DEFAULTS).map(([k]) => k)).toEqual(SETTINGS.map((s) => s.key));
  });

  it('RELOAD-proof settings are the listeners, the worker count and the peer id (in handed-out cancel keys)', () => {
    expect(RESTART_ONLY_KEYS).toEqual(['listen', 'http', 'unix_socket_dir', 'unix_socket_mode', 'unix_socket_group', 'workers', 'peer_id']);
  });

  it('start and check-config have exactly the schema flags, with env and default in the help', () => {
    const flagged = SETTINGS.filter((s) => s.flag);
    expect(CONFIG_OPTIONS.map((o) => o.flags)).toEqual(['-c, --config <file>', ...flagged.map((s) => s.flag!.name)]);
    for (const s of flagged) {
      const o = CONFIG_OPTIONS.find((x) => x.flags === s.flag!.name)!;
      expect(o.description).toContain(`(env: ${envName(s.key)}`);
      expect(o.description).toMatch(/; default: [^)]+\)$/);
    }
  });

  it('the loader reads each flag under the name commander stores it', () => {
    const start = buildProgram({}).commands.find((c) => c.name() === 'start')!;
    const stored = new Map(start.options.map((o) => [o.long, o.attributeName()]));
    for (const s of SETTINGS.filter((x) => x.flag)) expect(stored.get(longFlag(s)), s.key).toBe(flagProp(s.flag!));
  });

  it('the importer writes keys in the schema order', () => {
    const r = importConfig(
      '[databases]\napp = host=db1 port=5432\n[pgbouncer]\nlog_min_messages = info\nstats_users = s\nadmin_users = a\n' +
        'server_idle_timeout = 30\nauth_type = md5\nauth_file = /u.txt\ndefault_pool_size = 5\nlisten_port = 6000\n',
      'pgbouncer',
    );
    const keys = r.yaml.split('\n').filter((l) => /^[a-z_]+:/.test(l)).map((l) => l.slice(0, l.indexOf(':')));
    expect(keys.length).toBeGreaterThan(5);
    expect(keys).toEqual([...keys].sort((a, b) => settingRank(a) - settingRank(b)));
  });
});

describe("the schema's PgBouncer / Pgpool-II names and pgmux import", () => {
  // Settings the schema names as equivalents that `pgmux import` does not carry over, by
  // design: a different meaning (max_pool, the failover commands), a different format
  // (pool_passwd: converted into a written userlist when the file is there; reset_query_list),
  // or meaningful only with another setting (auth_hba_file needs auth_type = hba).
  const NOT_CARRIED = [
    'pgpool max_pool', 'pgpool reset_query_list', 'pgpool pool_passwd', 'pgpool failover_command',
    'pgpool follow_primary_command', 'pgbouncer auth_hba_file',
  ];
  // Values in the source's own format where the shown pgmux default would not be one.
  const SAMPLE: Record<string, string> = {
    listen_addr: '127.0.0.1', listen_port: '6000', listen_addresses: '*', port: '9999', auth_type: 'md5', verbose: '1',
    log_min_messages: 'info', connection_life_time: '600', authentication_timeout: '60',
  };
  // Pgpool-II's sr_check login stands in for the health check's only with sr_check_user,
  // and the cache's table lists only with the cache on.
  const cacheOn = 'memory_cache_enabled = on\n';
  const WITH: Record<string, string> = {
    sr_check_password: "sr_check_user = 'u'\n", sr_check_database: "sr_check_user = 'u'\n",
    cache_safe_memqcache_table_list: cacheOn, white_memqcache_table_list: cacheOn, cache_unsafe_memqcache_table_list: cacheOn, black_memqcache_table_list: cacheOn,
  };

  it("imports each equivalent into its row's key, except the listed ones", () => {
    const shown = configToObject(DEFAULTS, { reveal: true });
    const notCarried: string[] = [];
    for (const s of SETTINGS) {
      for (const kind of ['pgbouncer', 'pgpool'] as const) {
        for (const name of s[kind] ?? []) {
          const d = shown[s.key];
          const value = SAMPLE[name] ?? (d === null || (Array.isArray(d) && d.length === 0) ? 'x' : Array.isArray(d) ? d.join(',') : String(d));
          const text = kind === 'pgbouncer' ? `[pgbouncer]\n${name} = ${value}\n` : `${WITH[name] ?? ''}${name} = '${value}'\n`;
          if (!new RegExp(`^${s.key}:`, 'm').test(importConfig(text, kind).yaml)) notCarried.push(`${kind} ${name}`);
        }
      }
    }
    expect(notCarried).toEqual(NOT_CARRIED);
  });
});

describe('docs/configuration.md matches the schema', () => {
  it('finds the settings tables', () => {
    expect(DOC_ROWS.length).toBeGreaterThan(40);
  });

  it('documents every setting once, in the section the schema names', () => {
    for (const s of SETTINGS) {
      const rows = docRowOf(s.key);
      expect(rows.map((r) => r.section), `${s.key}: table rows`).toEqual([s.doc]);
    }
  });

  it('documents no setting that does not exist', () => {
    const known = new Set(SETTINGS.map((s) => s.key));
    for (const r of DOC_ROWS) expect(known, `docs line ${r.line}`).toContain(ticked(r.cells.get('key')!)[0]);
  });

  it('names the aliases, env variables and flags the schema has', () => {
    for (const s of SETTINGS) {
      const cells = docRowOf(s.key)[0]!.cells;
      expect(ticked(cells.get('key')!).slice(1), `${s.key}: aliases`).toEqual([...(s.aliases ?? [])]);
      expect(ticked(cells.get('env')!)[0], `${s.key}: env`).toBe(envName(s.key));
      if (cells.has('flag')) expect(ticked(cells.get('flag')!)[0], `${s.key}: flag`).toBe(s.flag ? longFlag(s) : undefined);
      else expect(s.flag, `${s.key}: has a flag the docs table has no column for`).toBeUndefined();
    }
  });

  it('gives the schema defaults', () => {
    for (const s of SETTINGS) {
      const cell = docRowOf(s.key)[0]!.cells.get('default')!;
      const [first] = ticked(cell);
      if (first === undefined) {
        // "none", "off", "empty", "Node's default": no value set.
        const v = DEFAULTS[s.field];
        expect(v === null || (Array.isArray(v) && v.length === 0), `${s.key}: docs default "${cell}"`).toBe(true);
      } else {
        expect(s.parse(first, '/'), `${s.key}: docs default "${cell}"`).toEqual(DEFAULTS[s.field]);
      }
    }
  });

  it('names only PgBouncer / Pgpool-II settings the schema lists as equivalents', () => {
    for (const s of SETTINGS) {
      const cells = docRowOf(s.key)[0]!.cells;
      for (const [column, names] of [['pgbouncer', s.pgbouncer], ['pgpool-ii', s.pgpool]] as const) {
        if (!cells.has(column)) continue;
        for (const n of ticked(cells.get(column)!)) expect(names ?? [], `${s.key}: ${column} ${n}`).toContain(n);
      }
    }
  });

  it('lists every flag where it lists the flags of start and check-config', () => {
    const paragraph = /`start` and `check-config` accept the same flags:[^]*?\n\n/.exec(DOCS)?.[0] ?? '';
    const documented = ticked(paragraph).flatMap((t) => t.split('/')).filter((t) => t.startsWith('--'));
    expect(documented.sort()).toEqual(['--config', ...SETTINGS.filter((s) => s.flag).map(longFlag)].sort());
  });

  it('says which settings change only on restart', () => {
    for (const key of RESTART_ONLY_KEYS) {
      const section = SETTINGS.find((s) => s.key === key)!.doc;
      const text = DOCS.slice(DOCS.indexOf(`### ${section}\n`)).split(/\n### /)[0]!;
      expect(text, key).toMatch(new RegExp(`\`${key}\`[^.]*only on restart`));
    }
  });
});
