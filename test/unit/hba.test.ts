import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HbaError, hbaRefusal, loadHbaFile, matchHba, parseHba, type HbaQuery, type HbaRule } from '../../src/auth/hba.js';

const q = (o: Partial<HbaQuery> = {}): HbaQuery => ({ ssl: false, database: 'app', user: 'alice', address: '127.0.0.1', ...o });

/** Line number of the matching rule, or null. */
function lineOf(rules: HbaRule[], query: Partial<HbaQuery>): number | null {
  return matchHba(rules, q(query), { localAddresses: () => LOCAL })?.line ?? null;
}

const LOCAL = [
  { address: '127.0.0.1', cidr: '127.0.0.1/8' },
  { address: '10.1.2.3', cidr: '10.1.2.3/16' },
  { address: 'fe80::1', cidr: 'fe80::1/64' },
];

function parseError(text: string): HbaError {
  try {
    parseHba(text, 'pgmux_hba.conf');
  } catch (err) {
    expect(err).toBeInstanceOf(HbaError);
    return err as HbaError;
  }
  throw new Error(`parsed without error: ${text}`);
}

describe('parseHba', () => {
  it('reads the usual pg_hba.conf lines, skipping comments and blank lines', () => {
    const rules = parseHba(
      [
        '# TYPE  DATABASE  USER  ADDRESS  METHOD',
        '',
        'local   all       all            trust',
        'host    all       all   127.0.0.1/32   scram-sha-256   # loopback',
        'hostssl app,other alice,bob ::1/128 md5',
        'hostnossl all     all   0.0.0.0/0      reject',
        '   ',
      ].join('\n'),
      'x.conf',
    );
    expect(rules.map((r) => [r.line, r.type, r.method])).toEqual([
      [3, 'local', 'trust'],
      [4, 'host', 'scram-sha-256'],
      [5, 'hostssl', 'md5'],
      [6, 'hostnossl', 'reject'],
    ]);
    expect(rules[0]!.address).toBeNull();
    expect(rules[2]!.databases).toEqual([{ kind: 'name', name: 'app' }, { kind: 'name', name: 'other' }]);
    expect(rules[2]!.users).toEqual([{ kind: 'name', name: 'alice' }, { kind: 'name', name: 'bob' }]);
    expect(rules[1]!.text).toBe('host all all 127.0.0.1/32 scram-sha-256');
    expect(rules[1]!.file).toBe('x.conf');
  });

  it('lists may have blanks after commas; quotes protect keywords, blanks, commas and #', () => {
    const [r] = parseHba('host "all", "my db", "a,b" "sam""s #1" all password');
    expect(r!.databases).toEqual([
      { kind: 'name', name: 'all' },
      { kind: 'name', name: 'my db' },
      { kind: 'name', name: 'a,b' },
    ]);
    expect(r!.users).toEqual([{ kind: 'name', name: 'sam"s #1' }]);
    expect(r!.address).toEqual({ kind: 'all' });
  });

  it('joins backslash-continued lines and reports the first line', () => {
    const rules = parseHba('\nhost all \\\n  all 10.0.0.0/8 \\\n  trust\nhost all all all reject\n');
    expect(rules.map((r) => r.line)).toEqual([2, 5]);
    expect(rules[0]!.method).toBe('trust');
  });

  it('takes an address followed by a netmask', () => {
    const [r] = parseHba('host all all 192.168.0.0 255.255.0.0 md5');
    expect(r!.method).toBe('md5');
    expect(lineOf([r!], { address: '192.168.44.1' })).toBe(1);
    expect(lineOf([r!], { address: '192.169.0.1' })).toBeNull();
  });

  it('tolerates CRLF line endings', () => {
    expect(parseHba('host all all all trust\r\nlocal all all reject\r\n').map((r) => r.method)).toEqual(['trust', 'reject']);
  });

  const refused: Array<[string, RegExp]> = [
    ['hostx all all all trust', /invalid connection type "hostx"/],
    ['hostgssenc all all all trust', /GSSAPI encryption/],
    ['include other.conf', /"include" directives are not supported/],
    ['host all +admins all trust', /group membership \(\+role\) is not supported/],
    ['host @dbs all all trust', /@file inclusion is not supported/],
    ['host samerole all all trust', /"samerole" is not supported/],
    ['host all all all cert', /"cert": client certificate authentication is not supported/],
    ['host all all all ldap', /LDAP/],
    ['host all all all frob', /invalid authentication method "frob"/],
    ['host all all all md5 clientcert=verify-full', /authentication options are not supported.*clientcert=verify-full/],
    ['host all all 10.0.0.1 trust', /address "10.0.0.1" has no mask.*10.0.0.1\/32/],
    ['host all all 10.0.0.0/33 trust', /invalid CIDR mask "\/33"/],
    ['host all all ::1/129 trust', /invalid CIDR mask "\/129"/],
    ['host all all 10.0.0.0/x trust', /invalid CIDR mask/],
    ['host all all 300.0.0.0/8 trust', /"300.0.0.0" is not an IP address/],
    ['host all all db.example.com trust', /host names are not supported/],
    ['host all all 10.0.0.0 ffff::0 trust', /not of the same address family/],
    ['host all all', /missing address field/],
    ['host all all all', /missing authentication method/],
    ['local all', /missing user field/],
    ['host "all all all trust', /unterminated quoted string/],
    ['host a,,b all all trust', /empty item/],
    ['host a, all', /missing|ends with a comma/],
    ['host all all all "trust"', /invalid authentication method/],
    ['host all all 10.0.0.0/8,10.1.0.0/16 trust', /address field must be a single value/],
    ['host /a( all all trust', /invalid regular expression/],
  ];
  for (const [line, re] of refused) {
    it(`refuses ${JSON.stringify(line)} naming the file and line`, () => {
      const err = parseError(`# header\n${line}\n`);
      expect(err.message).toMatch(/^pgmux_hba\.conf:2: /);
      expect(err.message).toMatch(re);
      expect(err.line).toBe(2);
      expect(err.file).toBe('pgmux_hba.conf');
    });
  }

  it('loadHbaFile reads a file and names it in errors', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgmux-hba-'));
    try {
      const f = join(dir, 'hba.conf');
      writeFileSync(f, 'host all all all trust\nhost all all all nope\n');
      expect(() => loadHbaFile(f)).toThrow(`${f}:2: invalid authentication method "nope"`);
      writeFileSync(f, 'host all all all trust\n');
      expect(loadHbaFile(f)[0]!.file).toBe(f);
      expect(() => loadHbaFile(join(dir, 'missing.conf'))).toThrow(/missing\.conf:0: cannot read the HBA file: no such file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('matchHba', () => {
  it('first match wins; no match is null', () => {
    const rules = parseHba(['host app alice 127.0.0.1/32 reject', 'host all all 127.0.0.0/8 md5', 'host all all ::1/128 trust'].join('\n'));
    expect(lineOf(rules, {})).toBe(1);
    expect(lineOf(rules, { user: 'bob' })).toBe(2);
    expect(lineOf(rules, { database: 'other' })).toBe(2);
    expect(lineOf(rules, { address: '127.9.9.9' })).toBe(2);
    expect(lineOf(rules, { address: '::1' })).toBe(3);
    expect(lineOf(rules, { address: '10.0.0.1' })).toBeNull();
    expect(matchHba([], q())).toBeNull();
  });

  it('hostssl only matches TLS connections, hostnossl only plaintext, host and hostnogssenc both', () => {
    const rules = parseHba('hostssl all all all md5\nhostnossl all all all reject\n');
    expect(lineOf(rules, { ssl: true })).toBe(1);
    expect(lineOf(rules, { ssl: false })).toBe(2);
    const host = parseHba('host all all all md5\nhostnogssenc all all all trust');
    expect(lineOf(host, { ssl: true })).toBe(1);
    expect(lineOf(host.slice(1), { ssl: true })).toBe(2);
    expect(lineOf(host.slice(1), { ssl: false })).toBe(2);
  });

  it('local rules match only Unix-socket connections, host rules only TCP', () => {
    const rules = parseHba('local all all trust\nhost all all all reject');
    expect(lineOf(rules, { address: null })).toBe(1);
    expect(lineOf(rules, {})).toBe(2);
    expect(lineOf(parseHba('host all all all trust'), { address: null })).toBeNull();
  });

  it('database keywords: sameuser, replication, quoted keywords are names', () => {
    const rules = parseHba('host sameuser all all trust\nhost replication all all trust\nhost "all" all all md5');
    expect(lineOf(rules, { database: 'alice', user: 'alice' })).toBe(1);
    expect(lineOf(rules, { database: 'app' })).toBeNull();
    expect(lineOf(rules, { database: 'replication' })).toBeNull();
    expect(lineOf(rules, { database: 'all' })).toBe(3);
    expect(lineOf(parseHba('host all "all" all md5'), { user: 'all' })).toBe(1);
    expect(lineOf(parseHba('host all "all" all md5'), { user: 'bob' })).toBeNull();
  });

  it('names match exactly (case-sensitive); regexes match anywhere unless anchored', () => {
    const rules = parseHba('host App all all trust\nhost /^test_ /^svc all trust');
    expect(lineOf(rules, { database: 'app' })).toBeNull();
    expect(lineOf(rules, { database: 'App' })).toBe(1);
    expect(lineOf(rules, { database: 'test_1', user: 'svc_a' })).toBe(2);
    expect(lineOf(rules, { database: 'my_test_1', user: 'svc_a' })).toBeNull();
  });

  it('IPv4 rules match IPv4-mapped IPv6 clients; IPv6 networks match IPv6 clients', () => {
    const v4 = parseHba('host all all 10.0.0.0/8 trust');
    expect(lineOf(v4, { address: '::ffff:10.2.3.4' })).toBe(1);
    expect(lineOf(v4, { address: '::ffff:11.2.3.4' })).toBeNull();
    expect(lineOf(v4, { address: '::1' })).toBeNull();
    const v6 = parseHba('host all all fd00::/8 trust\nhost all all ::/0 md5');
    expect(lineOf(v6, { address: 'fd12:3456::1' })).toBe(1);
    expect(lineOf(v6, { address: 'fe80::1%eth0' })).toBe(2);
    expect(lineOf(v6, { address: '10.0.0.1' })).toBeNull();
    expect(lineOf(parseHba('host all all 0.0.0.0/0 trust'), { address: '203.0.113.9' })).toBe(1);
  });

  it('samehost and samenet use the machine\'s own addresses', () => {
    const rules = parseHba('host all all samehost trust\nhost all all samenet md5');
    expect(lineOf(rules, { address: '10.1.2.3' })).toBe(1);
    expect(lineOf(rules, { address: '::ffff:10.1.2.3' })).toBe(1);
    expect(lineOf(rules, { address: '10.1.99.99' })).toBe(2);
    expect(lineOf(rules, { address: 'fe80::abcd' })).toBe(2);
    expect(lineOf(rules, { address: '10.2.0.1' })).toBeNull();
    // Without an injected list, the real interfaces: loopback is always this host.
    expect(matchHba(rules, q({ address: '127.0.0.1' }))?.line).toBe(1);
  });

  it('an unparsable client address matches only "all"', () => {
    const rules = parseHba('host all all 0.0.0.0/0 trust\nhost all all all md5');
    expect(lineOf(rules, { address: 'garbage' })).toBe(2);
  });

  it('hbaRefusal words it like PostgreSQL', () => {
    const rules = parseHba('host all all all reject');
    expect(hbaRefusal(null, q())).toBe('no pg_hba.conf entry for host "127.0.0.1", user "alice", database "app", no encryption');
    expect(hbaRefusal(rules[0]!, q({ ssl: true }))).toBe('pg_hba.conf rejects connection for host "127.0.0.1", user "alice", database "app", SSL encryption');
  });
});

describe('addresses', () => {
  it('rule addresses: IPv4, IPv6 compression, embedded IPv4; junk is refused', () => {
    for (const ok of ['1.2.3.4/32', '::1/128', '::/0', '1::/16', '::ffff:1.2.3.4/128', '1:2:3:4:5:6:7:8/128']) {
      expect(parseHba(`host all all ${ok} trust`)[0]!.address, ok).toMatchObject({ kind: 'net', text: ok });
    }
    // 010.0.0.0 is refused: PostgreSQL (getaddrinfo) would read 010 as octal 8.
    for (const bad of ['1.2.3/8', '1.2.3.4.5/8', '256.1.1.1/8', '1::2::3/64', '1:2:3:4:5:6:7:8:9/64', '12345::/16', 'g::1/64', '010.0.0.0/8', 'localhost/8']) {
      expect(() => parseHba(`host all all ${bad} trust`), bad).toThrow(/is not an IP address/);
    }
  });

  it('host bits past the prefix are ignored; odd prefixes split a byte', () => {
    const host = parseHba('host all all 192.168.1.77/24 trust');
    expect(lineOf(host, { address: '192.168.1.5' })).toBe(1);
    expect(lineOf(host, { address: '192.168.2.5' })).toBeNull();
    const odd = parseHba('host all all 10.255.0.0/9 trust');
    expect(lineOf(odd, { address: '10.128.0.1' })).toBe(1);
    expect(lineOf(odd, { address: '10.127.255.255' })).toBeNull();
    expect(lineOf(parseHba('host all all 0.0.0.0/0 trust'), { address: '255.255.255.255' })).toBe(1);
    expect(lineOf(parseHba('host all all 10.0.0.1/32 trust'), { address: '10.0.0.2' })).toBeNull();
  });

  it('netmask fields: IPv4 and IPv6, contiguous only', () => {
    const v6 = parseHba('host all all fd00:: ffff:ff00:: trust');
    expect(lineOf(v6, { address: 'fd00:12::1' })).toBe(1);
    expect(lineOf(v6, { address: 'fd01::1' })).toBeNull();
    expect(lineOf(parseHba('host all all 10.1.0.0 255.255.0.0 trust'), { address: '::ffff:10.1.9.9' })).toBe(1);
    expect(lineOf(parseHba('host all all 0.0.0.0 0.0.0.0 trust'), { address: '203.0.113.9' })).toBe(1);
    for (const mask of ['255.0.255.0', '0.255.255.255', 'ff00:ff00::']) {
      const net = mask.includes(':') ? 'fd00::' : '10.0.0.0';
      expect(() => parseHba(`host all all ${net} ${mask} trust`), mask).toThrow(/is not contiguous/);
    }
  });

  it('IPv4-mapped IPv6 clients: IPv4 rules take them; IPv6 rules never take plain IPv4 clients', () => {
    // A listener on "::" reports an IPv4 client as ::ffff:a.b.c.d; PostgreSQL sees it as IPv4.
    expect(lineOf(parseHba('host all all 0.0.0.0/0 trust'), { address: '::ffff:1.2.3.4' })).toBe(1);
    expect(lineOf(parseHba('host all all 0.0.0.0/0 trust'), { address: '::1' })).toBeNull();
    expect(lineOf(parseHba('host all all 10.0.0.0/8 trust'), { address: '::ffff:a00:1' })).toBe(1);
    for (const rule of ['::/0', '::ffff:0:0/96', '::ffff:10.0.0.0/104']) {
      const rules = parseHba(`host all all ${rule} trust`);
      expect(lineOf(rules, { address: '10.0.0.1' }), rule).toBeNull();
      expect(lineOf(rules, { address: '::ffff:10.0.0.1' }), rule).toBe(1);
    }
  });

  it('samehost and samenet with IPv6 interfaces, and interfaces without a network', () => {
    const rules = parseHba('host all all samehost trust\nhost all all samenet md5');
    const local = () => [{ address: 'fd00::5', cidr: 'fd00::5/64' }, { address: '192.0.2.1', cidr: null }];
    const line = (address: string) => matchHba(rules, q({ address }), { localAddresses: local })?.line ?? null;
    expect(line('fd00::5')).toBe(1);
    expect(line('fd00::6')).toBe(2);
    expect(line('fd00:1::6')).toBeNull();
    expect(line('192.0.2.1')).toBe(1);
    expect(line('::ffff:192.0.2.1')).toBe(1);
    expect(line('192.0.2.2')).toBeNull();
  });
});
