// The PROXY protocol header (HAProxy's spec, v1 text and v2 binary) a load balancer sends
// before the client's first byte, and which senders may send one (proxy_protocol_trusted).
// Pure: bytes in, the client's real address out; the session decides what to do with it.

import { BlockList, isIP } from 'node:net';

/** v2's 12-byte signature: cannot begin a startup packet (its length would be 218 MB). */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** The spec's bound for a v1 line, CRLF included. */
export const V1_MAX_BYTES = 107;
/**
 * Bound on v2's address block and TLVs. The spec's fixed part is at most 216 bytes (AF_UNIX);
 * TLVs (unique id, TLS facts, a cloud endpoint id) add a few hundred at most. Past this a
 * sender is not a load balancer.
 */
export const V2_MAX_BODY_BYTES = 2048;

/** The first 4 bytes of a PROXY header read as a startup packet's length ("PROX", "\r\n\r\n"). */
export const PROXY_HEADER_AS_LENGTH: readonly number[] = [V1_PREFIX.readInt32BE(0), V2_SIGNATURE.readInt32BE(0)];

export type ProxyHeader =
  /** More bytes needed. */
  | { kind: 'incomplete' }
  /** The bytes are not a PROXY header at all. */
  | { kind: 'absent' }
  | { kind: 'invalid'; problem: string }
  /** The client's address and port, as the load balancer accepted it; `length` bytes of header. */
  | { kind: 'proxied'; length: number; address: string; port: number }
  /**
   * The balancer speaks for itself (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC or AF_UNIX): its health
   * checks. The connection keeps the sender's own address.
   */
  | { kind: 'local'; length: number };

const INCOMPLETE: ProxyHeader = { kind: 'incomplete' };
const ABSENT: ProxyHeader = { kind: 'absent' };

/** Reads a PROXY header at the start of `buf` (all bytes received so far). */
export function parseProxyHeader(buf: Buffer): ProxyHeader {
  if (startsWith(buf, V2_SIGNATURE)) return buf.length < V2_SIGNATURE.length ? INCOMPLETE : parseV2(buf);
  if (startsWith(buf, V1_PREFIX)) return buf.length < V1_PREFIX.length ? INCOMPLETE : parseV1(buf);
  return ABSENT;
}

/** `buf` is a prefix of `sig` or begins with it (an empty buffer is incomplete, not absent). */
function startsWith(buf: Buffer, sig: Buffer): boolean {
  const n = Math.min(buf.length, sig.length);
  for (let i = 0; i < n; i++) if (buf[i] !== sig[i]) return false;
  return true;
}

function invalid(problem: string): ProxyHeader {
  return { kind: 'invalid', problem };
}

function parseV1(buf: Buffer): ProxyHeader {
  const scan = Math.min(buf.length, V1_MAX_BYTES);
  let lf = -1;
  for (let i = V1_PREFIX.length; i < scan; i++) {
    if (buf[i] === 0x0a) {
      lf = i;
      break;
    }
  }
  if (lf < 0) return buf.length >= V1_MAX_BYTES ? invalid(`v1 header longer than ${V1_MAX_BYTES} bytes`) : INCOMPLETE;
  if (buf[lf - 1] !== 0x0d) return invalid('v1 header does not end with CRLF');
  const length = lf + 1;
  const fields = buf.toString('latin1', V1_PREFIX.length, lf - 1).split(' ');
  // UNKNOWN: the rest of the line is to be ignored (the spec).
  if (fields[0] === 'UNKNOWN') return { kind: 'local', length };
  if (fields.length !== 5) return invalid('v1 header needs protocol, source, destination and two ports');
  const [proto, src, dst, srcPort, dstPort] = fields as [string, string, string, string, string];
  const family = proto === 'TCP4' ? 4 : proto === 'TCP6' ? 6 : 0;
  if (family === 0) return invalid(`v1 protocol "${proto.slice(0, 16)}" is not TCP4, TCP6 or UNKNOWN`);
  if (!isPlainAddress(src, family) || !isPlainAddress(dst, family)) return invalid(`v1 addresses are not ${proto} addresses`);
  const port = parsePort(srcPort);
  if (port === null || parsePort(dstPort) === null) return invalid('v1 ports are not 0..65535');
  return { kind: 'proxied', length, address: family === 6 ? src.toLowerCase() : src, port };
}

function isPlainAddress(s: string, family: 4 | 6): boolean {
  return isIP(s) === family && !s.includes('%');
}

function parsePort(s: string): number | null {
  if (!/^(0|[1-9][0-9]{0,4})$/.test(s)) return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

const AF_UNSPEC = 0;
const AF_INET = 1;
const AF_INET6 = 2;
const AF_UNIX = 3;
const PROTO_DGRAM = 2;

function parseV2(buf: Buffer): ProxyHeader {
  if (buf.length < 16) return INCOMPLETE;
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return invalid(`v2 version ${verCmd >> 4} is not 2`);
  const command = verCmd & 0x0f;
  if (command > 1) return invalid(`v2 command ${command} is neither LOCAL nor PROXY`);
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  const bodyLength = buf.readUInt16BE(14);
  if (bodyLength > V2_MAX_BODY_BYTES) return invalid(`v2 header of ${bodyLength} bytes exceeds ${V2_MAX_BODY_BYTES}`);
  const length = 16 + bodyLength;
  if (buf.length < length) return INCOMPLETE;
  // LOCAL: the balancer's own connection (health check); the address block is to be ignored.
  if (command === 0) return { kind: 'local', length };
  if (family > AF_UNIX || transport > PROTO_DGRAM) return invalid(`v2 address family ${family} / transport ${transport} unknown`);
  if (transport === PROTO_DGRAM) return invalid('v2 header describes a datagram connection');
  if (family === AF_UNSPEC || family === AF_UNIX) {
    // No IP address to carry: the spec says to use the connection's own endpoints.
    if (family === AF_UNIX && bodyLength < 216) return invalid('v2 AF_UNIX address block shorter than 216 bytes');
    return { kind: 'local', length };
  }
  if (family === AF_INET) {
    if (bodyLength < 12) return invalid('v2 AF_INET address block shorter than 12 bytes');
    return { kind: 'proxied', length, address: `${buf[16]}.${buf[17]}.${buf[18]}.${buf[19]}`, port: buf.readUInt16BE(24) };
  }
  if (bodyLength < 36) return invalid('v2 AF_INET6 address block shorter than 36 bytes');
  return { kind: 'proxied', length, address: formatIpv6(buf, 16), port: buf.readUInt16BE(48) };
}

/** RFC 5952 text of 16 bytes at `at` (as node reports remoteAddress, ::ffff:a.b.c.d included). */
export function formatIpv6(buf: Buffer, at: number): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(at + 2 * i));
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${buf[at + 12]}.${buf[at + 13]}.${buf[at + 14]}.${buf[at + 15]}`;
  }
  // The longest run of two or more zero groups (the first of equals) becomes "::".
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

// ---- trusted senders ------------------------------------------------------------------

/** proxy_protocol_trusted entries as matchers, made once per configuration list. */
const compiled = new WeakMap<readonly string[], BlockList>();

/**
 * "10.0.0.7", "10.0.0.0/8", "fd00::/8" -> the canonical entry, or a problem text. Host names
 * are refused: a balancer's address is what the socket reports, never a resolved name.
 */
export function checkTrustedEntry(entry: string): string | { address: string; family: 4 | 6; prefix: number } {
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  const family = isIP(address) as 0 | 4 | 6;
  if (family === 0 || address.includes('%')) return `"${address}" is not an IP address (expected an address or a CIDR such as 10.0.0.0/8)`;
  const max = family === 4 ? 32 : 128;
  if (slash < 0) return { address, family, prefix: max };
  const bits = entry.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `invalid CIDR mask "/${bits}" in "${entry}" (expected 0..${max})`;
  return { address, family, prefix: Number(bits) };
}

function matcherFor(trusted: readonly string[]): BlockList {
  let list = compiled.get(trusted);
  if (list === undefined) {
    list = new BlockList();
    for (const entry of trusted) {
      const e = checkTrustedEntry(entry);
      if (typeof e !== 'string') list.addSubnet(e.address, e.prefix, e.family === 4 ? 'ipv4' : 'ipv6');
    }
    compiled.set(trusted, list);
  }
  return list;
}

/**
 * May the sender at `address` send a PROXY header (and so must it)? False at once when the
 * list is empty: no cost per connection with the option off. BlockList matches IPv4 entries
 * against IPv4-mapped IPv6 peers (a listener on "::" reports an IPv4 balancer that way).
 */
export function isProxyTrusted(trusted: readonly string[], address: string | null): boolean {
  if (trusted.length === 0 || address === null || address === '') return false;
  const family = isIP(address);
  if (family === 0) return false;
  return matcherFor(trusted).check(address, family === 4 ? 'ipv4' : 'ipv6');
}
