import { describe, expect, it } from 'vitest';
import { FrameError, FrameReader, MAX_STARTUP_PACKET_BYTES } from '../../src/protocol/framer.js';
import { BackendScanner, type ScanSink } from '../../src/protocol/backendScanner.js';
import { errorResponse, parameterStatus, queryMessage, readyForQuery, startupMessage } from '../../src/protocol/messages.js';

function typed(type: string, body: Buffer): Buffer {
  const b = Buffer.alloc(5 + body.length);
  b[0] = type.charCodeAt(0);
  b.writeInt32BE(4 + body.length, 1);
  body.copy(b, 5);
  return b;
}

function dataRow(i: number): Buffer {
  const v = Buffer.from(`value-${i}`);
  const body = Buffer.alloc(2 + 4 + v.length);
  body.writeInt16BE(1, 0);
  body.writeInt32BE(v.length, 2);
  v.copy(body, 6);
  return typed('D', body);
}

/** Feeds `stream` to `feed` cut at `cuts`. */
function feedSplit(stream: Buffer, cuts: number[], feed: (b: Buffer) => void): void {
  let prev = 0;
  for (const c of [...cuts, stream.length]) {
    if (c > prev) feed(Buffer.from(stream.subarray(prev, c)));
    prev = c;
  }
}

describe('FrameReader', () => {
  const msgs = [queryMessage('SELECT 1'), typed('S', Buffer.alloc(0)), queryMessage('SELECT ' + 'x'.repeat(300)), typed('X', Buffer.alloc(0))];
  const stream = Buffer.concat(msgs);

  it('returns the same messages wherever the stream is split (every byte boundary, and in two places)', () => {
    for (let a = 0; a <= stream.length; a++) {
      for (const b of a % 7 === 0 ? [a, Math.min(stream.length, a + 3), Math.min(stream.length, a + 311)] : [a]) {
        const r = new FrameReader(1 << 20);
        const got: Buffer[] = [];
        feedSplit(stream, [a, b], (chunk) => {
          r.push(chunk);
          while (r.next()) got.push(Buffer.from(r.msg.subarray(r.msgStart, r.end)));
        });
        expect(got).toEqual(msgs);
        expect(r.pending).toBe(0);
      }
    }
  });

  it('hands out views, not copies, when a message is inside one chunk', () => {
    const r = new FrameReader(1 << 20);
    r.push(stream);
    expect(r.next()).toBe(true);
    expect(r.msg).toBe(stream);
    expect(r.type).toBe('Q'.charCodeAt(0));
    expect(r.msg.toString('utf8', r.bodyStart, r.end - 1)).toBe('SELECT 1');
  });

  it('frames untyped startup packets, then typed messages', () => {
    const r = new FrameReader(1 << 20, false);
    r.push(Buffer.concat([startupMessage({ user: 'u' }), queryMessage('SELECT 1')]));
    expect(r.next()).toBe(true);
    expect(r.type).toBe(0);
    expect(r.msg.readInt32BE(r.msgStart + 4)).toBe(196608);
    r.setTyped(true);
    expect(r.next()).toBe(true);
    expect(String.fromCharCode(r.type)).toBe('Q');
  });

  it('flags a length below 4 and a message above the limit', () => {
    const bad = new FrameReader(1 << 20);
    bad.push(Buffer.from([0x51, 0, 0, 0, 3]));
    expect(bad.next()).toBe(false);
    expect(bad.error).toBe(FrameError.BadLength);

    const big = new FrameReader(1024);
    const hdr = Buffer.from([0x51, 0, 0, 0, 0]);
    hdr.writeInt32BE(10 * 1024 * 1024, 1);
    big.push(hdr);
    expect(big.next()).toBe(false);
    expect(big.error).toBe(FrameError.TooLarge);
    expect(big.errorLength).toBe(10 * 1024 * 1024);
  });

  it('caps startup-phase packets at PostgreSQL\'s limit, so a typed message there fails at once', () => {
    const r = new FrameReader(1 << 30, false);
    // Terminate where a startup packet belongs: 'X' 0 0 0 reads as a length of 0x58000000.
    r.push(Buffer.concat([typed('X', Buffer.alloc(0)), startupMessage({ user: 'u' })]));
    expect(r.next()).toBe(false);
    expect(r.error).toBe(FrameError.TooLarge);
    expect(r.errorLength >>> 24).toBe('X'.charCodeAt(0));

    const after = new FrameReader(1 << 20, false);
    after.push(startupMessage({ user: 'u' }));
    expect(after.next()).toBe(true);
    after.setTyped(true);
    after.push(queryMessage('SELECT ' + 'x'.repeat(MAX_STARTUP_PACKET_BYTES)));
    expect(after.next()).toBe(true);
  });
});

class RecordingSink implements ScanSink {
  out: Buffer[] = [];
  events: string[] = [];
  hideUntilRfq = 0;
  forward(buf: Buffer, start: number, end: number): void {
    this.out.push(Buffer.from(buf.subarray(start, end)));
  }
  hiding(): boolean {
    return this.hideUntilRfq > 0;
  }
  onReadyForQuery(status: number, hidden: boolean): void {
    this.events.push(`Z${String.fromCharCode(status)}${hidden ? '(hidden)' : ''}`);
    if (hidden) this.hideUntilRfq--;
  }
  onParameterStatus(name: string, value: string, hidden: boolean): void {
    this.events.push(`S ${name}=${value}${hidden ? '(hidden)' : ''}`);
  }
  onErrorResponse(fields: Map<string, string>, hidden: boolean): void {
    this.events.push(`E ${fields.get('C')}${hidden ? '(hidden)' : ''}`);
  }
}

describe('BackendScanner', () => {
  const rowDesc = typed('T', Buffer.alloc(30, 1));
  const rows = Array.from({ length: 5 }, (_, i) => dataRow(i));
  const visible = Buffer.concat([
    rowDesc,
    ...rows,
    typed('C', Buffer.from('SELECT 5\0')),
    parameterStatus('TimeZone', 'UTC'),
    errorResponse({ severity: 'ERROR', code: '22012', message: 'division by zero' }),
    readyForQuery('T'),
  ]);
  const hiddenPart = Buffer.concat([parameterStatus('application_name', 'x'), typed('C', Buffer.from('SELECT 1\0')), readyForQuery('I')]);

  it('forwards every byte and reports the decoded messages wherever the stream is split', () => {
    for (let a = 0; a <= visible.length; a++) {
      const sink = new RecordingSink();
      const s = new BackendScanner(sink);
      feedSplit(visible, [a], (c) => s.scan(c));
      expect(Buffer.concat(sink.out)).toEqual(visible);
      expect(sink.events).toEqual(['S TimeZone=UTC', 'E 22012', 'ZT']);
      expect(s.atBoundary).toBe(true);
    }
  });

  it('drops hidden responses and forwards the rest, at every split', () => {
    const stream = Buffer.concat([hiddenPart, visible]);
    for (let a = 0; a <= stream.length; a++) {
      for (const b of [a, Math.min(stream.length, a + 9)]) {
        const sink = new RecordingSink();
        sink.hideUntilRfq = 1;
        const s = new BackendScanner(sink);
        feedSplit(stream, [a, b], (c) => s.scan(c));
        expect(Buffer.concat(sink.out)).toEqual(visible);
        expect(sink.events).toEqual(['S application_name=x(hidden)', 'ZI(hidden)', 'S TimeZone=UTC', 'E 22012', 'ZT']);
      }
    }
  });

  it('flushes forwarded bytes before acting on ReadyForQuery', () => {
    const order: string[] = [];
    const sink: ScanSink = {
      forward: (buf, s, e) => order.push(`fwd ${e - s}`),
      hiding: () => false,
      onReadyForQuery: () => order.push('rfq'),
      onParameterStatus: () => {},
      onErrorResponse: () => {},
    };
    const s = new BackendScanner(sink);
    const cc = typed('C', Buffer.from('SELECT 1\0'));
    s.scan(Buffer.concat([cc, readyForQuery('I'), cc]));
    expect(order).toEqual([`fwd ${cc.length + 6}`, 'rfq', `fwd ${cc.length}`]);
  });
});
