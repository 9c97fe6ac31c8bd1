import { describe, expect, it } from 'vitest';
import type { AuthEntry } from '../../src/auth/authFile.js';
import { healthCheckLogin, sameLogin } from '../../src/cluster/healthCheckLogin.js';
import { DEFAULTS } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';

const MD5 = 'md5' + '0'.repeat(32);
const SCRAM = 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy';

function entries(...list: Array<[string, string, AuthEntry['kind']]>): Map<string, AuthEntry> {
  return new Map(list.map(([user, secret, kind]) => [user, { user, secret, kind }]));
}
const cfg = (over: Partial<Config>): Config => ({ ...DEFAULTS, ...over });

describe('healthCheckLogin: which login the health checks use', () => {
  const file = entries(['admin', 'console', 'plain'], ['hashed', MD5, 'md5'], ['app', 'apppw', 'plain'], ['auth', MD5, 'md5']);

  it('health_check_user set: its password, else its auth-file entry (plain or md5), else none', () => {
    expect(healthCheckLogin(cfg({ healthCheckUser: 'mon', healthCheckPassword: 'pw' }), file)).toEqual({ user: 'mon', database: 'postgres', credentials: { password: 'pw' }, source: 'health_check_user' });
    expect(healthCheckLogin(cfg({ healthCheckUser: 'app' }), file).credentials).toEqual({ password: 'apppw' });
    expect(healthCheckLogin(cfg({ healthCheckUser: 'hashed' }), file).credentials).toEqual({ md5Secret: MD5 });
    expect(healthCheckLogin(cfg({ healthCheckUser: 'v' }), entries(['v', SCRAM, 'scram'])).credentials).toEqual({});
    expect(healthCheckLogin(cfg({ healthCheckUser: 'nobody', authUser: 'auth' }), file)).toMatchObject({ user: 'nobody', credentials: {} });
  });

  it('unset: auth_user (auth_user_password, else its entry, else none) before the auth file', () => {
    expect(healthCheckLogin(cfg({ authUser: 'auth', authUserPassword: 'apw' }), file)).toMatchObject({ user: 'auth', credentials: { password: 'apw' }, source: 'auth_user' });
    expect(healthCheckLogin(cfg({ authUser: 'auth' }), file)).toMatchObject({ user: 'auth', credentials: { md5Secret: MD5 }, source: 'auth_user' });
    expect(healthCheckLogin(cfg({ authUser: 'trusted' }), file)).toMatchObject({ user: 'trusted', credentials: {}, source: 'auth_user' });
  });

  it('unset, no auth_user: the first plain-text user not in admin_users / stats_users, else postgres', () => {
    expect(healthCheckLogin(cfg({ adminUsers: ['admin'] }), file)).toMatchObject({ user: 'app', credentials: { password: 'apppw' }, source: 'auth_file' });
    expect(healthCheckLogin(cfg({}), file)).toMatchObject({ user: 'admin', source: 'auth_file' });
    expect(healthCheckLogin(cfg({ statsUsers: ['admin', 'app'] }), file)).toMatchObject({ user: 'postgres', credentials: {}, source: 'default' });
    expect(healthCheckLogin(cfg({ healthCheckDatabase: 'monitor' }), new Map())).toEqual({ user: 'postgres', database: 'monitor', credentials: {}, source: 'default' });
  });

  it('sameLogin compares user, database and secret', () => {
    const a = healthCheckLogin(cfg({ healthCheckUser: 'mon', healthCheckPassword: 'pw' }), file);
    expect(sameLogin(a, healthCheckLogin(cfg({ healthCheckUser: 'mon', healthCheckPassword: 'pw' }), file))).toBe(true);
    expect(sameLogin(a, healthCheckLogin(cfg({ healthCheckUser: 'mon', healthCheckPassword: 'pw2' }), file))).toBe(false);
    expect(sameLogin(a, healthCheckLogin(cfg({ healthCheckUser: 'mon', healthCheckPassword: 'pw', healthCheckDatabase: 'x' }), file))).toBe(false);
  });
});
