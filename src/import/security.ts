// The importer's security check: what the source configuration refused or required, against
// what the produced pgmux configuration would do. Each importer describes its source (it knows
// that format's meaning); the result is read from the emitted keys only, so a mapping mistake
// anywhere in pgbouncer.ts / pgpool.ts still shows up here as a weakening.

/**
 * How a client proves who it is, weakest first. `any` accepts every user name without a
 * password (pgmux's trust); `listed` accepts only known user names without a password
 * (PgBouncer's trust: the name must be in auth_file); `relay` means the nodes check the
 * password themselves (Pgpool-II without pool_passwd or pool_hba).
 */
export type ClientAuthLevel = 'any' | 'listed' | 'relay' | 'password' | 'md5' | 'scram-sha-256' | 'pam' | 'cert';

const AUTH_RANK: Record<ClientAuthLevel, number> = {
  any: 0, listed: 1, relay: 2, password: 2, pam: 2, md5: 3, 'scram-sha-256': 4, cert: 5,
};

/** TLS from clients: 3 = TLS and a verified client certificate required. */
export const CLIENT_TLS_RANK = { disable: 0, allow: 1, require: 2, verified: 3 } as const;
export type ClientTlsLevel = keyof typeof CLIENT_TLS_RANK;
export const SERVER_TLS_RANK: Record<string, number> = { disable: 0, allow: 1, prefer: 1, require: 2, 'verify-ca': 3, 'verify-full': 4 };

export interface SourceSecurity {
  /** The setting that says how clients authenticate, for messages ("auth_type = hba"). */
  authFrom: string;
  auth: ClientAuthLevel;
  /** The HBA file that decides per connection (null = none). */
  hbaFile: string | null;
  clientTls: ClientTlsLevel;
  clientTlsFrom: string;
  serverTls: string;
  /** Database names a client may ask for; null = any name. */
  databases: string[] | null;
  adminUsers: string[] | null;
  statsUsers: string[] | null;
}

export function defaultSourceSecurity(): SourceSecurity {
  return {
    authFrom: 'auth', auth: 'any', hbaFile: null, clientTls: 'disable', clientTlsFrom: 'client TLS', serverTls: 'disable',
    databases: null, adminUsers: null, statsUsers: null,
  };
}

/** The imported keys -> what pgmux would do with them (pgmux's defaults where a key is absent). */
function resultSecurity(values: ReadonlyMap<string, unknown>) {
  const auth = (values.get('auth') as string | undefined) ?? 'trust';
  const dbs = values.get('databases') as Record<string, unknown> | undefined;
  return {
    auth: (auth === 'trust' ? 'any' : auth) as ClientAuthLevel,
    hbaFile: (values.get('hba_file') as string | undefined) ?? null,
    clientTls: (values.get('client_tls') as ClientTlsLevel | undefined) ?? 'disable',
    serverTls: (values.get('server_tls') as string | undefined) ?? 'disable',
    // An empty map is read as "no section" (every name passes): the conservative reading.
    databases: dbs === undefined || Object.keys(dbs).length === 0 ? null : Object.keys(dbs),
    adminUsers: (values.get('admin_users') as string[] | undefined) ?? [],
    statsUsers: (values.get('stats_users') as string[] | undefined) ?? [],
    // Passwords pgmux could log in to the nodes with on a client's behalf.
    hasServerCredentials: values.has('server_password') || values.has('auth_file') || (dbs !== undefined && Object.values(dbs).some((e) => typeof e === 'object' && e !== null && 'password' in e)),
  };
}

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x) => b.includes(x));

/** Each way the result would accept a login the source refused, or drop TLS the source required. */
export function weakenings(
  src: SourceSecurity,
  values: ReadonlyMap<string, unknown>,
  generatedHba: { path: string; auth: ClientAuthLevel } | null = null,
): string[] {
  const res = resultSecurity(values);
  const out: string[] = [];
  // An HBA file the importer wrote itself enforces a known rule: compare that rule. Any other
  // hba_file in the result is the source's own, carried.
  if (generatedHba !== null && res.hbaFile === generatedHba.path) {
    res.hbaFile = null;
    res.auth = generatedHba.auth;
  }

  if (src.hbaFile !== null) {
    if (res.hbaFile === null) {
      out.push(`${src.authFrom}: HBA rules (${src.hbaFile}) dropped: the result would let every address, database and user try to log in`);
    }
  } else if (res.hbaFile === null) {
    // No HBA on either side: `auth` decides every login. (An HBA file only in the result is
    // one the importer wrote, handled above; the importers add no other.)
    const relayOk = src.auth === 'relay' && res.auth === 'any' && !res.hasServerCredentials;
    if (AUTH_RANK[res.auth] < AUTH_RANK[src.auth] && !relayOk) {
      const what: Record<ClientAuthLevel, string> = {
        any: 'accepts every user name without a password',
        listed: 'accepts only the user names in auth_file (or found by auth_query), without a password',
        relay: 'leaves the password check to the PostgreSQL nodes',
        password: 'checks a password',
        pam: 'checks passwords with PAM',
        md5: 'checks md5 passwords',
        'scram-sha-256': 'checks SCRAM-SHA-256 passwords',
        cert: 'requires a verified TLS client certificate naming the user',
      };
      out.push(`${src.authFrom}: the source ${what[src.auth]}; the result (auth ${res.auth === 'any' ? 'trust' : res.auth}) ${what[res.auth]}`);
    }
  }

  if (CLIENT_TLS_RANK[res.clientTls] < CLIENT_TLS_RANK[src.clientTls] && src.clientTls !== 'allow') {
    out.push(
      src.clientTls === 'verified' && res.clientTls === 'require'
        ? `${src.clientTlsFrom}: the source requires a verified client certificate; pgmux only checks a certificate a client chooses to present`
        : `${src.clientTlsFrom}: the source requires TLS from clients; the result (client_tls ${res.clientTls}) accepts plaintext`,
    );
  }
  // prefer is opportunistic on both sides: only a TLS the source insisted on counts.
  if ((SERVER_TLS_RANK[src.serverTls] ?? 0) >= 2 && (SERVER_TLS_RANK[res.serverTls] ?? 0) < (SERVER_TLS_RANK[src.serverTls] ?? 0)) {
    out.push(`server_tls_sslmode = ${src.serverTls}: the result (server_tls ${res.serverTls}) connects to the nodes with less TLS checking`);
  }

  if (src.databases !== null) {
    const extra = res.databases === null ? null : res.databases.filter((d) => !src.databases!.includes(d));
    if (extra === null || extra.length > 0) {
      const served = src.databases.length === 0 ? 'no database ([databases] is empty)' : `only ${src.databases.join(', ')}`;
      out.push(`[databases]: the source serves ${served}; the result would also accept ${extra === null ? 'every other database name' : extra.join(', ')}`);
    }
  }

  for (const [key, srcList, resList] of [['admin_users', src.adminUsers, res.adminUsers], ['stats_users', src.statsUsers, res.statsUsers]] as const) {
    if (srcList === null) {
      if (resList.length > 0) out.push(`${key}: not set in the source; the result names ${resList.join(', ')}`);
    } else if (!sameSet(srcList, resList)) {
      out.push(`${key} = ${srcList.join(', ')}: the result has ${resList.length === 0 ? 'none' : resList.join(', ')}; admin console rights must be carried exactly`);
    }
  }
  return out;
}
