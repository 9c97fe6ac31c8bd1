// Frames a byte stream into whole PostgreSQL messages without copying the common case.
//
// Used for the client side (pgmux must see each client message whole: routing needs the
// Query/Parse text, and Terminate must not reach a pooled backend) and for logins on both
// sides. A message that arrives in one read chunk is handed out as a view into that chunk;
// only a message split across chunks costs one concatenation (done once, when the last
// piece arrives, not once per piece).

/** One whole message inside a read chunk, kept by reference (type byte at buf[start]). */
export interface HeldMessage {
  type: number;
  buf: Buffer;
  start: number;
  end: number;
}

/**
 * PostgreSQL's cap on startup-phase packets (MAX_STARTUP_PACKET_LENGTH). A typed message
 * sent where a startup packet belongs reads as a length of at least 16 MiB (its type byte
 * is the high byte), so it fails at once instead of waiting for bytes that never come.
 */
export const MAX_STARTUP_PACKET_BYTES = 10_000;

export enum FrameError {
  None = 0,
  BadLength = 1,
  TooLarge = 2,
}

const EMPTY = Buffer.alloc(0);

export class FrameReader {
  /** Current buffer and read position. Views handed out point into `buf`. */
  private buf: Buffer = EMPTY;
  private pos = 0;
  /** Chunks received while a split message is incomplete; concatenated once it is whole. */
  private parts: Buffer[] = [];
  private partsLen = 0;
  /** Bytes (from `pos`) needed before next() can make progress. */
  private need = 0;

  /** Startup packets have no type byte; everything after them has one. */
  private typed: boolean;
  /** Longest declared length accepted in the current mode. */
  private limit: number;

  // The last message returned by next(): buf[msgStart..end) is the whole message, and
  // buf[bodyStart..end) its body. `type` is 0 for untyped (startup-phase) packets.
  type = 0;
  msg: Buffer = this.buf;
  msgStart = 0;
  bodyStart = 0;
  end = 0;
  error: FrameError = FrameError.None;
  /** Declared length of the message that caused `error`. */
  errorLength = 0;

  constructor(
    private maxMessageBytes: number,
    typed = true,
  ) {
    this.typed = typed;
    this.limit = this.limitFor(typed);
  }

  setTyped(typed: boolean): void {
    this.typed = typed;
    this.limit = this.limitFor(typed);
  }

  private limitFor(typed: boolean): number {
    return typed ? this.maxMessageBytes : Math.min(this.maxMessageBytes, MAX_STARTUP_PACKET_BYTES);
  }

  push(chunk: Buffer): void {
    if (this.pos >= this.buf.length && this.partsLen === 0) {
      this.buf = chunk;
      this.pos = 0;
      return;
    }
    this.parts.push(chunk);
    this.partsLen += chunk.length;
    if (this.buf.length - this.pos + this.partsLen < this.need) return;
    this.parts.unshift(this.buf.subarray(this.pos));
    this.buf = Buffer.concat(this.parts);
    this.pos = 0;
    this.parts = [];
    this.partsLen = 0;
  }

  /** Bytes buffered but not yet returned as messages. */
  get pending(): number {
    return this.buf.length - this.pos + this.partsLen;
  }

  /**
   * Advances to the next whole message. Returns false when more bytes are needed or on a
   * framing error (then `error` is set and the stream must be closed).
   */
  next(): boolean {
    if (this.partsLen > 0 || this.error !== FrameError.None) return false;
    const buf = this.buf;
    const pos = this.pos;
    const avail = buf.length - pos;
    const hdr = this.typed ? 5 : 4;
    if (avail < hdr) {
      this.need = hdr;
      return false;
    }
    const lenOff = this.typed ? 1 : 0;
    const len = buf.readInt32BE(pos + lenOff);
    if (len < 4 || (!this.typed && len < 8)) {
      this.error = FrameError.BadLength;
      this.errorLength = len;
      return false;
    }
    if (len > this.limit) {
      this.error = FrameError.TooLarge;
      this.errorLength = len;
      return false;
    }
    const total = lenOff + len;
    if (avail < total) {
      this.need = total;
      return false;
    }
    this.need = 0;
    this.type = this.typed ? buf[pos]! : 0;
    this.msg = buf;
    this.msgStart = pos;
    this.bodyStart = pos + hdr;
    this.end = pos + total;
    this.pos = pos + total;
    return true;
  }

  /**
   * Copies what it still holds from `memory` (a read buffer the next read overwrites):
   * the unread tail and the pieces of a split message, each once, so a message arriving
   * over many reads is still copied O(n) times in all, as on the standard path.
   */
  keepOutOf(memory: ArrayBufferLike): void {
    if (this.msg.buffer === memory) this.msg = EMPTY; // valid only right after next()
    if (this.buf.buffer === memory) {
      this.buf = this.pos >= this.buf.length ? EMPTY : Buffer.from(this.buf.subarray(this.pos));
      this.pos = 0;
    }
    const parts = this.parts;
    for (let i = 0; i < parts.length; i++) if (parts[i]!.buffer === memory) parts[i] = Buffer.from(parts[i]!);
  }

  /** Hands back the unread bytes (e.g. when a stream changes owner) and empties the reader. */
  takeRemaining(): Buffer | null {
    const rest = this.pending === 0 ? null : Buffer.concat([this.buf.subarray(this.pos), ...this.parts]);
    this.buf = Buffer.alloc(0);
    this.pos = 0;
    this.parts = [];
    this.partsLen = 0;
    this.need = 0;
    return rest;
  }
}
