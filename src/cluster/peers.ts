// Peering: the other pgmux instances behind the same load balancer. Owns where a cancel key
// says its client lives, forwarding a CancelRequest for another instance's key, and which
// peers are alive (peer_budgets divides the limits by that count).
//
// Cancel key layout with peer_id set (PgBouncer 1.19+ spends bits of its 8-byte key the same
// way: 16 bits of peer id and a 2-bit TTL that allows 3 hops). pgmux keeps the pid as it is
// (the worker index lives in its top bits, and the pid is the local lookup key, whose random
// bits keep collisions rare) and spends bits of the secret instead:
//
//   secret bits 31..20  peer id (0..4095)
//   secret bit  19      FORWARDABLE: set in every key handed out, cleared on the copy an
//                       instance forwards. A 1-bit TTL: a key reaches its owner in one hop
//                       (peers are listed directly, there is no relaying), so a cleared bit
//                       means "already forwarded": never forwarded again, which rules out
//                       loops when two instances' peer lists disagree.
//   secret bits 18..0   random
//
// That leaves 19 random bits of the secret plus the pid's random bits (25 with --workers):
// 44+ bits an attacker must guess, as PgBouncer's 45. With peer_id unset the key is as before.

import { lookup } from 'node:dns/promises';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import type { Config, PeerEntry } from '../config/types.js';
import { cancelRequest } from '../protocol/messages.js';

const PEER_SHIFT = 20;
const PEER_MASK = 0xfff;
const FORWARDABLE = 1 << 19;
const RANDOM_MASK = FORWARDABLE - 1;
/** A peer that has not answered a probe for this many health check periods is not live. */
const LIVE_PERIODS = 3;

export interface CancelKey {
  pid: number;
  secret: number;
}

interface PeerAddress {
  host: string;
  port: number;
}

export interface PeerCounters {
  /** CancelRequests sent to a peer (one per address reached for). */
  cancelsForwarded: number;
  /** Cancels for another instance's key not forwarded: already forwarded once, or an unknown peer id. */
  cancelsDropped: number;
}

export class PeerDirectory {
  readonly counters: PeerCounters = { cancelsForwarded: 0, cancelsDropped: 0 };
  /** The real listen port (port 0 resolves at listen): a dns: peer list leaves out our own address. */
  listenPort = 0;
  /** Last successful probe per "host:port". */
  private readonly lastAliveAt = new Map<string, number>();
  private probeTimer: NodeJS.Timeout | null = null;
  /** peer_id is read once: the keys already handed out carry it. */
  private readonly selfId: number | null;

  constructor(
    private readonly config: () => Config,
    private readonly logger: Logger,
  ) {
    this.selfId = config().peerId;
  }

  /** A fresh key's secret: this instance's id and the forwardable marker, when peering is on. */
  stampSecret(random: number): number {
    if (this.selfId === null) return random;
    return ((this.selfId << PEER_SHIFT) | FORWARDABLE | (random & RANDOM_MASK)) | 0;
  }

  /** The peer id a key was issued by; null when peering is off here. */
  ownerOf(key: CancelKey): number | null {
    if (this.selfId === null) return null;
    return (key.secret >>> PEER_SHIFT) & PEER_MASK;
  }

  /**
   * A CancelRequest that arrived here: the secret to look up among this instance's clients
   * (marker restored, as the key was handed out), or null when the key is another peer's
   * (forwarded to it unless that already happened) and there is nothing to do locally.
   */
  route(key: CancelKey): number | null {
    const owner = this.ownerOf(key);
    if (owner === null) return key.secret;
    if (owner === this.selfId) return key.secret | FORWARDABLE;
    if ((key.secret & FORWARDABLE) === 0) {
      this.counters.cancelsDropped++;
      this.logger.debug({ peer: owner, cancelPid: key.pid }, 'cancel for another peer arrived already forwarded: dropped');
      return null;
    }
    void this.forward(owner, key);
    return null;
  }

  private async forward(owner: number, key: CancelKey): Promise<void> {
    const msg = cancelRequest(key.pid, key.secret & ~FORWARDABLE);
    const peers = this.config().peers;
    let targets: PeerAddress[];
    if (dnsEntry(peers)) {
      // A headless Service's records: which one is `owner` is unknown, so every one but us
      // gets the key; the others drop it (not theirs, already forwarded).
      targets = await this.resolveDns();
    } else {
      const p = peers.find((x) => 'id' in x && x.id === owner);
      targets = p ? [p as PeerAddress] : [];
    }
    if (targets.length === 0) {
      this.counters.cancelsDropped++;
      this.logger.debug({ peer: owner, cancelPid: key.pid }, 'cancel for a peer id not in peers: dropped');
      return;
    }
    for (const t of targets) {
      this.counters.cancelsForwarded++;
      const s = net.connect({ host: t.host, port: t.port });
      s.on('connect', () => s.end(msg));
      s.on('error', (err) => this.logger.debug({ peer: owner, address: `${t.host}:${t.port}`, err: err.message }, 'forwarding a cancel to a peer failed'));
      s.setTimeout(this.config().serverConnectTimeoutMs, () => s.destroy());
    }
  }

  /** The dns: name's A/AAAA records, our own address left out. */
  private async resolveDns(): Promise<PeerAddress[]> {
    const dns = dnsEntry(this.config().peers);
    if (!dns) return [];
    const port = dns.port ?? this.listenPort;
    let records: { address: string }[];
    try {
      records = await lookup(dns.dns, { all: true });
    } catch (err) {
      this.logger.warn({ peers: dns.dns, err: (err as Error).message }, 'peers: dns lookup failed');
      return [];
    }
    const own = port === this.listenPort ? localAddresses() : new Set<string>();
    const seen = new Set<string>();
    const out: PeerAddress[] = [];
    for (const r of records) {
      if (own.has(r.address) || seen.has(r.address)) continue;
      seen.add(r.address);
      out.push({ host: r.address, port });
    }
    return out;
  }

  /** The other instances as listed now (static entries but our own id, or the dns: records). */
  private async targets(): Promise<PeerAddress[]> {
    const peers = this.config().peers;
    if (dnsEntry(peers)) return this.resolveDns();
    return peers.filter((p): p is PeerEntry & PeerAddress => 'id' in p && p.id !== this.selfId);
  }

  /** This instance plus the peers that answered a probe within the last LIVE_PERIODS periods. */
  livePeers(): number {
    const since = Date.now() - LIVE_PERIODS * this.config().healthCheckPeriodMs;
    let n = 1;
    for (const at of this.lastAliveAt.values()) if (at >= since) n++;
    return n;
  }

  /**
   * Probes the peers every health_check_period: a TCP connect that is closed at once. Every
   * peer listed at start counts as live until it has missed LIVE_PERIODS periods: an instance
   * that (re)starts takes the small share first, so the database never sees more than the
   * budget while the probes settle.
   */
  start(): void {
    if (this.probeTimer || this.selfId === null) return;
    let seeded = false;
    const tick = () => {
      void this.probe(!seeded).then(() => this.noticeLive());
      seeded = true;
      this.noticeLive();
      this.probeTimer = setTimeout(tick, this.config().healthCheckPeriodMs);
      this.probeTimer.unref();
    };
    tick();
  }

  /** Called with the new count when livePeers() changes (peer_budgets re-splits the limits). */
  onLiveChange: ((live: number) => void) | null = null;
  private lastLive = 1;

  private noticeLive(): void {
    const live = this.livePeers();
    if (live === this.lastLive) return;
    this.logger.info({ livePeers: live, was: this.lastLive }, 'live peers changed');
    this.lastLive = live;
    this.onLiveChange?.(live);
  }

  stop(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
  }

  private async probe(seed: boolean): Promise<void> {
    const targets = await this.targets();
    const listed = new Set(targets.map((t) => `${t.host}:${t.port}`));
    // Peers no longer listed (RELOAD, records gone) stop counting at once.
    for (const k of this.lastAliveAt.keys()) if (!listed.has(k)) this.lastAliveAt.delete(k);
    const timeoutMs = this.config().healthCheckTimeoutMs;
    const now = Date.now();
    for (const t of targets) {
      const k = `${t.host}:${t.port}`;
      if (seed) this.lastAliveAt.set(k, now);
      const s = net.connect({ host: t.host, port: t.port });
      s.setTimeout(timeoutMs, () => s.destroy());
      s.on('connect', () => {
        this.lastAliveAt.set(k, Date.now());
        s.destroy();
      });
      s.on('error', () => {});
    }
  }
}

function dnsEntry(peers: readonly PeerEntry[]): { dns: string; port: number | null } | null {
  const p = peers[0];
  return p !== undefined && 'dns' in p ? p : null;
}

function localAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address);
  return out;
}
