// The PROXY protocol header parser (src/net/proxyProtocol.ts): v1 and v2 as HAProxy sends
// them, cut at every byte (a header split across TCP segments), followed by the startup
// packet in the same segment, with TLVs, and malformed or hostile input.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkTrustedEntry, isProxyTrusted, parseProxyHeader, V1_MAX_BYTES, V2_MAX_BODY_BYTES } from '../../src/net/proxyProtocol.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');
const STARTUP = Buffer.from('0000000800030000', 'hex');

function v2(command: number, famProto: number, body: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head[0] = 0x20 | command;
  head[1] = famProto;
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIG, head, body]);
}

function inet(src: number[], dst: number[], srcPort: number, dstPort: number): Buffer {
  const b = Buffer.alloc(12);
  b.set(src, 0);
  b.set(dst, 4);
  b.writeUInt16BE(srcPort, 8);
  b.writeUInt16BE(dstPort, 10);
  return b;
}

function inet6(src: string, dst: string, srcPort: number, dstPort: number): Buffer {
  const b = Buffer.alloc(36);
  Buffer.from(src, 'hex').copy(b, 0);
  Buffer.from(dst, 'hex').copy(b, 16);
  b.writeUInt16BE(srcPort, 32);
  b.writeUInt16BE(dstPort, 34);
  return b;
}

const tlv = (type: number, value: Buffer): Buffer => Buffer.concat([Buffer.from([type, value.length >> 8, value.length & 0xff]), value]);

const V1_TCP4 = Buffer.from('PROXY TCP4 10.1.2.3 192.168.0.1 56324 6432\r\n');
const V2_TCP4 = v2(1, 0x11, inet([10, 1, 2, 3], [192, 168, 0, 1], 56324, 6432));

describe('PROXY protocol v1', () => {
  it('TCP4 carries the source address and port', () => {
    expect(parseProxyHeader(V1_TCP4)).toEqual({ kind: 'proxied', length: V1_TCP4.length, address: '10.1.2.3', port: 56324 });
  });

  it('TCP6 carries the IPv6 source', () => {
    const h = Buffer.from('PROXY TCP6 2001:DB8::1 2001:db8::2 4000 6432\r\n');
    expect(parseProxyHeader(h)).toEqual({ kind: 'proxied', length: h.length, address: '2001:db8::1', port: 4000 });
  });

  it('UNKNOWN (a health check) keeps the sender address, whatever follows on the line', () => {
    for (const line of ['PROXY UNKNOWN\r\n', 'PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n']) {
      expect(parseProxyHeader(Buffer.from(line))).toEqual({ kind: 'local', length: line.length });
    }
  });

  it('the startup packet in the same segment is left after the header', () => {
    const r = parseProxyHeader(Buffer.concat([V1_TCP4, STARTUP]));
    expect(r).toMatchObject({ kind: 'proxied', length: V1_TCP4.length });
  });

  it('a line of 107 bytes without CRLF is refused, shorter ones wait', () => {
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4')).kind).toBe('incomplete');
    expect(parseProxyHeader(Buffer.from('PROXY ' + 'x'.repeat(V1_MAX_BYTES)))).toMatchObject({ kind: 'invalid', problem: expect.stringContaining('longer than 107') });
  });

  it.each([
    ['PROXY TCP4 10.1.2.3 192.168.0.1 56324\r\n', 'two ports'],
    ['PROXY TCP5 10.1.2.3 192.168.0.1 1 2\r\n', 'not TCP4'],
    ['PROXY TCP4 ::1 ::1 1 2\r\n', 'not TCP4 addresses'],
    ['PROXY TCP6 10.1.2.3 10.1.2.3 1 2\r\n', 'not TCP6 addresses'],
    ['PROXY TCP4 10.1.2.3 192.168.0.1 65536 1\r\n', 'ports'],
    ['PROXY TCP4 10.1.2.3 192.168.0.1 -1 1\r\n', 'ports'],
    ['PROXY TCP4 10.1.2.3 192.168.0.1 1 2\n', 'CRLF'],
    ['PROXY TCP4  10.1.2.3 192.168.0.1 1 2\r\n', 'two ports'],
  ])('refuses %j', (line, problem) => {
    expect(parseProxyHeader(Buffer.from(line))).toMatchObject({ kind: 'invalid', problem: expect.stringContaining(problem) });
  });
});

describe('PROXY protocol v2', () => {
  it('PROXY over AF_INET carries the source address and port', () => {
    expect(parseProxyHeader(V2_TCP4)).toEqual({ kind: 'proxied', length: 28, address: '10.1.2.3', port: 56324 });
  });

  it('PROXY over AF_INET6 carries the source in RFC 5952 form', () => {
    const h = v2(1, 0x21, inet6('20010db8000000000000000000000001', '20010db8000000000000000000000002', 5000, 6432));
    expect(parseProxyHeader(h)).toEqual({ kind: 'proxied', length: 52, address: '2001:db8::1', port: 5000 });
    const mapped = v2(1, 0x21, inet6('00000000000000000000ffff0a010203', '00000000000000000000ffff7f000001', 1, 2));
    expect(parseProxyHeader(mapped)).toMatchObject({ address: '::ffff:10.1.2.3' });
    const noRun = v2(1, 0x21, inet6('20010db8000100020003000400050006', '00000000000000000000000000000001', 1, 2));
    expect(parseProxyHeader(noRun)).toMatchObject({ address: '2001:db8:1:2:3:4:5:6' });
    const twoRuns = v2(1, 0x21, inet6('20010000000000010000000000000001', '00000000000000000000000000000001', 1, 2));
    expect(parseProxyHeader(twoRuns)).toMatchObject({ address: '2001:0:0:1::1' });
  });

  it('LOCAL (a health check) keeps the sender address and skips its block', () => {
    expect(parseProxyHeader(v2(0, 0x00, Buffer.alloc(0)))).toEqual({ kind: 'local', length: 16 });
    expect(parseProxyHeader(v2(0, 0x11, inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)))).toEqual({ kind: 'local', length: 28 });
  });

  it('UNSPEC and AF_UNIX carry no IP address: the sender address stays', () => {
    expect(parseProxyHeader(v2(1, 0x00, Buffer.alloc(0)))).toEqual({ kind: 'local', length: 16 });
    expect(parseProxyHeader(v2(1, 0x31, Buffer.alloc(216)))).toEqual({ kind: 'local', length: 232 });
  });

  it('TLVs after the addresses are skipped', () => {
    const body = Buffer.concat([inet([10, 1, 2, 3], [127, 0, 0, 1], 7, 8), tlv(0x05, Buffer.from('unique-id-123')), tlv(0x04, Buffer.alloc(0))]);
    const h = v2(1, 0x11, body);
    expect(parseProxyHeader(Buffer.concat([h, STARTUP]))).toEqual({ kind: 'proxied', length: h.length, address: '10.1.2.3', port: 7 });
  });

  it.each([
    ['version 1', Buffer.concat([SIG, Buffer.from([0x11, 0x11, 0, 12]), Buffer.alloc(12)]), 'version'],
    ['command 2', Buffer.concat([SIG, Buffer.from([0x22, 0x11, 0, 12]), Buffer.alloc(12)]), 'command'],
    ['family 4', v2(1, 0x41, Buffer.alloc(12)), 'family'],
    ['datagram', v2(1, 0x12, Buffer.alloc(12)), 'datagram'],
    ['short AF_INET block', v2(1, 0x11, Buffer.alloc(8)), 'shorter than 12'],
    ['short AF_INET6 block', v2(1, 0x21, Buffer.alloc(20)), 'shorter than 36'],
    ['short AF_UNIX block', v2(1, 0x31, Buffer.alloc(100)), 'shorter than 216'],
    ['too long', Buffer.concat([SIG, Buffer.from([0x21, 0x11, 0xff, 0xff])]), 'exceeds'],
  ])('refuses %s', (_name, bytes, problem) => {
    expect(parseProxyHeader(bytes)).toMatchObject({ kind: 'invalid', problem: expect.stringContaining(problem) });
  });

  it('a body just within the bound is read', () => {
    const h = v2(1, 0x11, Buffer.concat([inet([1, 1, 1, 1], [2, 2, 2, 2], 1, 2), Buffer.alloc(V2_MAX_BODY_BYTES - 12)]));
    expect(parseProxyHeader(h)).toMatchObject({ kind: 'proxied', length: 16 + V2_MAX_BODY_BYTES });
  });
});

describe('split reads and non-headers', () => {
  it('every prefix of a header is incomplete; the whole is read (v1 and v2)', () => {
    for (const h of [V1_TCP4, V2_TCP4, v2(1, 0x11, Buffer.concat([inet([10, 1, 2, 3], [1, 1, 1, 1], 1, 2), tlv(1, Buffer.from('h2'))]))]) {
      for (let cut = 0; cut < h.length; cut++) expect(parseProxyHeader(h.subarray(0, cut)).kind).toBe('incomplete');
      expect(parseProxyHeader(h).kind).toBe('proxied');
    }
  });

  it('a startup packet, an SSLRequest or a TLS hello is absent at its first byte', () => {
    expect(parseProxyHeader(STARTUP).kind).toBe('absent');
    expect(parseProxyHeader(Buffer.from('0000000804d2162f', 'hex')).kind).toBe('absent');
    expect(parseProxyHeader(Buffer.from([0x16, 0x03, 0x01])).kind).toBe('absent');
    expect(parseProxyHeader(Buffer.from('PROXX')).kind).toBe('absent');
    expect(parseProxyHeader(Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x01])).kind).toBe('absent');
  });

  it('never throws and never claims more bytes than it has (fast-check)', () => {
    const prefixed = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
      fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.concat([Buffer.from('PROXY '), Buffer.from(b)])),
      fc.tuple(fc.constantFrom('TCP4', 'TCP6', 'UNKNOWN', ''), fc.array(fc.constantFrom('1.2.3.4', '::1', '65535', '0', ' ', 'x', '\r', '\n', '\r\n'), { maxLength: 8 }))
        .map(([p, parts]) => Buffer.from(`PROXY ${p} ${parts.join(' ')}`)),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([SIG, Buffer.from(b)])),
      fc.tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 300 }))
        .map(([vc, fam, b]) => v2(0, 0, Buffer.from(b)).fill(vc, 12, 13).fill(fam, 13, 14)),
    );
    fc.assert(
      fc.property(prefixed, (buf) => {
        const r = parseProxyHeader(buf);
        if (r.kind === 'proxied' || r.kind === 'local') {
          expect(r.length).toBeLessThanOrEqual(buf.length);
          expect(r.length).toBeGreaterThanOrEqual(15); // "PROXY UNKNOWN\r\n", the shortest header
        }
        if (r.kind === 'proxied') expect(r.address.length).toBeGreaterThan(0);
        if (r.kind === 'incomplete') expect(buf.length).toBeLessThan(16 + V2_MAX_BODY_BYTES);
      }),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 10_000) },
    );
  });
});

describe('proxy_protocol_trusted', () => {
  it('matches addresses and CIDRs of both families; empty means off', () => {
    const trusted = ['10.0.0.7', '192.168.0.0/16', 'fd00::/8'];
    expect(isProxyTrusted(trusted, '10.0.0.7')).toBe(true);
    expect(isProxyTrusted(trusted, '10.0.0.8')).toBe(false);
    expect(isProxyTrusted(trusted, '192.168.44.1')).toBe(true);
    expect(isProxyTrusted(trusted, '::ffff:192.168.44.1')).toBe(true);
    expect(isProxyTrusted(trusted, 'fd12::1')).toBe(true);
    expect(isProxyTrusted(trusted, 'fe80::1')).toBe(false);
    expect(isProxyTrusted(trusted, null)).toBe(false);
    expect(isProxyTrusted([], '10.0.0.7')).toBe(false);
  });
});

describe('proxy_protocol_trusted entries', () => {
  it('accepts addresses and CIDRs, refuses names, zones and bad masks with a reason', () => {
    expect(checkTrustedEntry('10.0.0.7')).toEqual({ address: '10.0.0.7', family: 4, prefix: 32 });
    expect(checkTrustedEntry('fd00::/8')).toEqual({ address: 'fd00::', family: 6, prefix: 8 });
    expect(checkTrustedEntry('lb.internal')).toMatch(/is not an IP address/);
    expect(checkTrustedEntry('fe80::1%eth0')).toMatch(/is not an IP address/);
    expect(checkTrustedEntry('10.0.0.0/33')).toMatch(/invalid CIDR mask "\/33"/);
    expect(checkTrustedEntry('::/129')).toMatch(/expected 0..128/);
    expect(checkTrustedEntry('10.0.0.0/')).toMatch(/invalid CIDR mask/);
  });
});
