// The secrets logins use, both ways: the auth file and auth_query (cached) say what a
// client must prove; what clients proved (cleartext passwords, SCRAM keys; memory only) and
// the file's secrets say how pgmux logs in to backends as that user.

import pg from 'pg';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { BackendCredentials, NodeAddress } from '../pool/backend.js';
import { backendTlsFor, pgClientSsl } from '../net/tls.js';
import { loadAuthFile, secretKind, type AuthEntry } from './authFile.js';

/** How long an auth_query result is reused. */
const AUTH_QUERY_CACHE_MS = 30_000;

/** What a client session asks while it authenticates a client. */
export interface ClientAuth {
  authEntry(user: string): AuthEntry | undefined;
  /** Remembers a cleartext password a client proved, for logging in to backends as that user. */
  learnPassword(user: string, password: string): void;
  /** Remembers the SCRAM keys a client proved against a stored verifier (pass-through login). */
  learnScramKeys(user: string, clientKey: Buffer, serverKey: Buffer): void;
  /**
   * auth_query: the stored secret of a user not in the auth file, looked up on the primary
   * (cached). undefined = no such user; rejects when the lookup cannot be done.
   */
  lookupAuthEntry(user: string): Promise<AuthEntry | undefined>;
}

export class AuthStore implements ClientAuth {
  private entries: Map<string, AuthEntry>;
  private readonly learnedPasswords = new Map<string, string>();
  /** SCRAM pass-through keys clients proved (memory only). */
  private readonly learnedScramKeys = new Map<string, { clientKey: Buffer; serverKey: Buffer }>();
  /** auth_query results (entry or undefined for an unknown user), with when they expire. */
  private readonly authQueryCache = new Map<string, { entry: AuthEntry | undefined; expires: number }>();
  private readonly authQueryInFlight = new Map<string, Promise<AuthEntry | undefined>>();
  /** Lookups that went to the database (for tests and SHOW-style stats). */
  authQueryLookups = 0;

  constructor(
    private readonly config: () => Config,
    /** A node to run auth_query on (any that logins may use), waiting up to timeoutMs. */
    private readonly loginNode: (timeoutMs: number) => Promise<NodeAddress | null>,
    private readonly logger: Logger,
  ) {
    this.entries = AuthStore.load(config());
  }

  /** The auth file `cfg` names (read now, so a bad one fails the start or the reload). */
  static load(cfg: Config): Map<string, AuthEntry> {
    return cfg.authFile ? loadAuthFile(cfg.authFile) : new Map();
  }

  /** RELOAD: the auth file as it is now. */
  setEntries(entries: Map<string, AuthEntry>): void {
    this.entries = entries;
  }

  /** The auth file's entries (the health check logs in with them too). */
  fileEntries(): Map<string, AuthEntry> {
    return this.entries;
  }

  authEntry(user: string): AuthEntry | undefined {
    return this.entries.get(user);
  }

  learnPassword(user: string, password: string): void {
    this.learnedPasswords.set(user, password);
  }

  learnScramKeys(user: string, clientKey: Buffer, serverKey: Buffer): void {
    this.learnedScramKeys.set(user, { clientKey, serverKey });
  }

  /**
   * auth_query: the user's stored secret, looked up on the primary as auth_user. Results
   * (including "no such user") are cached for AUTH_QUERY_CACHE_MS; concurrent logins of
   * one user share one lookup. Rejects when the lookup itself fails.
   */
  async lookupAuthEntry(user: string): Promise<AuthEntry | undefined> {
    const cached = this.authQueryCache.get(user);
    if (cached && cached.expires > Date.now()) return cached.entry;
    let p = this.authQueryInFlight.get(user);
    if (!p) {
      p = this.runAuthQuery(user).finally(() => this.authQueryInFlight.delete(user));
      this.authQueryInFlight.set(user, p);
    }
    return p;
  }

  private async runAuthQuery(user: string): Promise<AuthEntry | undefined> {
    const cfg = this.config();
    const authUser = cfg.authUser;
    if (authUser === null) return undefined;
    // pg_authid / pg_shadow are readable on a replica too: no need to wait for a primary.
    const node = await this.loginNode(cfg.serverConnectTimeoutMs);
    if (node === null) throw new Error('no primary or replica is available to run auth_query');
    const fileEntry = this.entries.get(authUser);
    const password = cfg.authUserPassword ?? (fileEntry?.kind === 'plain' ? fileEntry.secret : undefined);
    this.authQueryLookups++;
    const client = new pg.Client({
      host: node.host,
      port: node.port,
      user: authUser,
      password,
      database: cfg.authDbname,
      application_name: 'pgmux-auth-query',
      connectionTimeoutMillis: cfg.serverConnectTimeoutMs || undefined,
      query_timeout: cfg.serverConnectTimeoutMs || undefined,
      ssl: pgClientSsl(backendTlsFor(cfg)),
    });
    client.on('error', () => {});
    let entry: AuthEntry | undefined;
    try {
      await client.connect();
      const r = await client.query({ text: cfg.authQuery, values: [user], rowMode: 'array' });
      const row = r.rows[0] as unknown[] | undefined;
      const secret = row?.[1];
      if (typeof secret === 'string' && secret !== '') {
        const kind = secretKind(secret);
        entry = { user, secret: kind === 'md5' ? secret.toLowerCase() : secret, kind };
      }
    } catch (err) {
      // Never log the secret: only the error text of the lookup.
      this.logger.warn({ user, node: node.name, err: (err as Error).message }, 'auth_query failed');
      throw err;
    } finally {
      client.end().catch(() => {});
    }
    if (this.authQueryCache.size >= 10_000) {
      // Unknown names are not worth keeping: drop the expired ones (secrets stay for credentialsFor).
      const now = Date.now();
      for (const [k, v] of this.authQueryCache) if (v.entry === undefined && v.expires <= now) this.authQueryCache.delete(k);
    }
    this.authQueryCache.set(user, { entry, expires: Date.now() + AUTH_QUERY_CACHE_MS });
    return entry;
  }

  /** How pgmux logs in to a backend as `user`: a secret it holds, else what the client proved, else server_password. */
  credentialsFor(user: string): BackendCredentials {
    const e = this.entries.get(user) ?? this.authQueryCache.get(user)?.entry;
    if (e?.kind === 'plain') return { password: e.secret };
    const learned = this.learnedPasswords.get(user) ?? this.config().serverPassword;
    if (e?.kind === 'md5') return { md5Secret: e.secret, password: learned };
    const keys = this.learnedScramKeys.get(user);
    return keys ? { password: learned, scramKeys: keys } : { password: learned };
  }
}
