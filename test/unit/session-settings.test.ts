import { describe, expect, it } from 'vitest';
import { parseOptions, parseStartup, splitOptions, StartupParamError } from '../../src/session/startupParams.js';
import { buildSyncSql, ClientSettings, quoteGucName } from '../../src/session/paramSync.js';

describe('startup parameters', () => {
  it('splits options like the PostgreSQL backend (backslash escapes)', () => {
    expect(splitOptions('-c a=1  -c b=two\\ words')).toEqual(['-c', 'a=1', '-c', 'b=two words']);
  });

  it('accepts -c name=value, -cname=value and --name=value', () => {
    expect(parseOptions('-c statement_timeout=5s -csearch_path=a,b --work-mem=64MB')).toEqual([
      ['statement_timeout', '5s'],
      ['search_path', 'a,b'],
      ['work_mem', '64MB'],
    ]);
  });

  it('rejects options it cannot apply, with a message saying what is accepted', () => {
    expect(() => parseOptions('-x')).toThrow(StartupParamError);
    expect(() => parseOptions('-c noequals')).toThrow(/name=value/);
  });

  it('splits user/database from settings; reported names become canonical', () => {
    const r = parseStartup(
      new Map([
        ['user', 'alice'],
        ['datestyle', 'ISO, DMY'],
        ['TIMEZONE', 'Asia/Tokyo'],
        ['application_name', 'app'],
        ['options', '-c statement_timeout=100 -c myapp.tenant=7'],
        ['_pq_.compression', 'on'],
      ]),
    );
    expect(r.user).toBe('alice');
    expect(r.database).toBe('alice'); // defaults to the user name, like PostgreSQL
    expect([...r.settings]).toEqual([
      ['DateStyle', 'ISO, DMY'],
      ['TimeZone', 'Asia/Tokyo'],
      ['application_name', 'app'],
      ['statement_timeout', '100'],
      ['myapp.tenant', '7'],
    ]);
    expect(r.protocolOptions).toEqual(['_pq_.compression']);
  });
});

describe('buildSyncSql', () => {
  it('returns null when the backend already carries the client settings', () => {
    const applied = new Map([['statement_timeout', '100']]);
    expect(
      buildSyncSql(
        { reported: new Map([['TimeZone', 'UTC']]), settings: new Map([['statement_timeout', '100']]) },
        { params: new Map([['TimeZone', 'UTC']]), applied },
      ),
    ).toBeNull();
  });

  it('sets differing reported parameters and missing settings, resets settings of a previous client', () => {
    const applied = new Map([['lock_timeout', '1s']]);
    const sql = buildSyncSql(
      {
        reported: new Map([
          ['TimeZone', "Asia/Tokyo"],
          ['server_version', '15.0'], // reported but not settable: never SET
          ['application_name', "o'neil"],
        ]),
        settings: new Map([['search_path', 'a, b']]),
      },
      { params: new Map([['TimeZone', 'UTC'], ['server_version', '15.18'], ['application_name', '']]), applied },
    );
    expect(sql).toBe(
      "SELECT set_config('TimeZone', 'Asia/Tokyo', false), set_config('application_name', 'o''neil', false), set_config('search_path', 'a, b', false); RESET \"lock_timeout\"; ",
    );
    expect([...applied]).toEqual([['search_path', 'a, b']]);
  });

  it('quotes dotted custom GUC names per part', () => {
    expect(quoteGucName('myapp.tenant')).toBe('"myapp"."tenant"');
  });
});

describe('ClientSettings fingerprint', () => {
  it('names equal settings equally and changes only when the settings do', () => {
    const a = new ClientSettings();
    a.welcome([['TimeZone', 'UTC'], ['DateStyle', 'ISO, MDY']]);
    a.settings.set('search_path', 'app');
    const b = new ClientSettings();
    b.welcome([['TimeZone', 'UTC'], ['DateStyle', 'ISO, MDY']]);
    b.settings.set('search_path', 'app');
    expect(a.fingerprint).toBe(b.fingerprint);

    const before = a.fingerprint;
    a.report('TimeZone', 'UTC'); // same value: still the same settings
    expect(a.fingerprint).toBe(before);
    a.report('TimeZone', 'Europe/Paris');
    expect(a.fingerprint).not.toBe(before);

    // A read-back changes the map in place: the cached fingerprint is stale until told.
    const afterReport = a.fingerprint;
    a.settings.set('search_path', 'other');
    expect(a.fingerprint).toBe(afterReport);
    a.changed();
    expect(a.fingerprint).not.toBe(afterReport);
  });
});
