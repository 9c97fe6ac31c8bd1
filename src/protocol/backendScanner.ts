// Walks the backend -> client byte stream by message headers only, forwarding bytes as
// they arrive. This is the hot path: DataRow and RowDescription are skipped by length,
// never parsed or copied. Only ReadyForQuery, ParameterStatus and ErrorResponse bodies are
// read, because pooling decisions depend on them.
//
// Messages may be "dropped" instead of forwarded: responses to queries pgmux itself put
// in front of a client's (e.g. setting the client's session parameters) are hidden from
// the client. The sink says at each message start whether the message is hidden.

import { BackendMsg, parseFields } from './messages.js';

export interface ScanSink {
  /** Forward buf[start..end) to the client. Called at most once per contiguous run. */
  forward(buf: Buffer, start: number, end: number): void;
  /** True if the message starting now (of this type) must not reach the client. */
  hiding(type: number): boolean;
  onReadyForQuery(status: number, hidden: boolean): void;
  onParameterStatus(name: string, value: string, hidden: boolean): void;
  onErrorResponse(fields: Map<string, string>, hidden: boolean): void;
  /** Only while `captureRows` is set, and only for hidden messages. */
  onHiddenDataRow?(body: Buffer, start: number, end: number): void;
}

/** Bodies above this are not captured (an ErrorResponse never comes close). */
const MAX_CAPTURE = 1 << 20;

export class BackendScanner {
  // Header of the current message, possibly split over chunks.
  private hdr = Buffer.alloc(5);
  private hdrFill = 0;
  /** Body bytes of the current message not yet seen. */
  private remaining = 0;
  private type = 0;
  private hidden = false;
  /** Body capture for the few messages we decode when they are split over chunks. */
  private cap: Buffer | null = null;
  private capFill = 0;

  /** Decode DataRow of hidden messages too (pgmux's own queries that return a value). */
  captureRows = false;

  constructor(private sink: ScanSink) {}

  /** True when the stream is exactly at a message boundary. */
  get atBoundary(): boolean {
    return this.hdrFill === 0 && this.remaining === 0;
  }

  scan(chunk: Buffer): void {
    const len = chunk.length;
    let pos = 0;
    let runStart = -1; // start of the current forwarded run in this chunk

    while (pos < len) {
      if (this.remaining > 0) {
        // Inside a body that began in an earlier chunk (or earlier in this one).
        const n = Math.min(this.remaining, len - pos);
        if (this.cap !== null) {
          chunk.copy(this.cap, this.capFill, pos, pos + n);
          this.capFill += n;
        }
        if (!this.hidden && runStart < 0) runStart = pos;
        pos += n;
        this.remaining -= n;
        if (this.remaining === 0) {
          if (this.cap !== null) {
            const body = this.cap;
            this.cap = null;
            // Flush before acting: the action may hand the backend to another client.
            if (runStart >= 0) {
              this.sink.forward(chunk, runStart, pos);
              runStart = -1;
            }
            this.dispatch(body, 0, body.length);
          }
        }
        continue;
      }

      // At a message start (or inside a split header).
      if (this.hdrFill === 0) {
        this.hidden = this.sink.hiding(chunk[pos]!);
        if (this.hidden && runStart >= 0) {
          this.sink.forward(chunk, runStart, pos);
          runStart = -1;
        }
      }
      if (this.hdrFill > 0 || len - pos < 5) {
        const n = Math.min(5 - this.hdrFill, len - pos);
        chunk.copy(this.hdr, this.hdrFill, pos, pos + n);
        if (!this.hidden && runStart < 0) runStart = pos;
        this.hdrFill += n;
        pos += n;
        if (this.hdrFill < 5) break;
        this.hdrFill = 0;
        this.type = this.hdr[0]!;
        this.beginBody(this.hdr.readInt32BE(1) - 4);
        if (this.remaining === 0 && this.isDecoded(this.type)) {
          if (runStart >= 0) {
            this.sink.forward(chunk, runStart, pos);
            runStart = -1;
          }
          this.dispatch(Buffer.alloc(0), 0, 0);
        }
        continue;
      }

      // Fast path: the whole header is in this chunk.
      const type = chunk[pos]!;
      const bodyLen = chunk.readInt32BE(pos + 1) - 4;
      const msgEnd = pos + 5 + bodyLen;
      if (!this.hidden && runStart < 0) runStart = pos;
      if (!this.isDecoded(type)) {
        if (msgEnd <= len) {
          pos = msgEnd;
        } else {
          this.type = type;
          this.remaining = msgEnd - len;
          pos = len;
        }
        continue;
      }
      if (msgEnd <= len) {
        pos = msgEnd;
        if (runStart >= 0) {
          this.sink.forward(chunk, runStart, pos);
          runStart = -1;
        }
        this.type = type;
        this.dispatch(chunk, msgEnd - bodyLen, msgEnd);
        continue;
      }
      // A decoded message split over chunks: capture its body.
      this.type = type;
      pos += 5;
      this.beginBody(bodyLen);
    }

    if (runStart >= 0 && runStart < len) this.sink.forward(chunk, runStart, len);
  }

  private beginBody(bodyLen: number): void {
    this.remaining = bodyLen;
    this.cap = this.isDecoded(this.type) && bodyLen > 0 && bodyLen <= MAX_CAPTURE ? Buffer.allocUnsafe(bodyLen) : null;
    this.capFill = 0;
  }

  private dispatch(body: Buffer, start: number, end: number): void {
    const hidden = this.hidden;
    switch (this.type) {
      case BackendMsg.ReadyForQuery:
        this.sink.onReadyForQuery(end > start ? body[start]! : 0x49, hidden);
        break;
      case BackendMsg.ParameterStatus: {
        const nul = body.indexOf(0, start);
        if (nul < 0 || nul >= end) break;
        const vEnd = body.indexOf(0, nul + 1);
        this.sink.onParameterStatus(
          body.toString('utf8', start, nul),
          body.toString('utf8', nul + 1, vEnd < 0 || vEnd > end ? end : vEnd),
          hidden,
        );
        break;
      }
      case BackendMsg.ErrorResponse:
        this.sink.onErrorResponse(parseFields(body, start, end), hidden);
        break;
      case DATA_ROW:
        if (hidden) this.sink.onHiddenDataRow?.(body, start, end);
        break;
    }
  }

  private isDecoded(type: number): boolean {
    return (
      type === BackendMsg.ReadyForQuery ||
      type === BackendMsg.ParameterStatus ||
      type === BackendMsg.ErrorResponse ||
      (type === DATA_ROW && this.captureRows && this.hidden)
    );
  }
}

const DATA_ROW = 0x44; // 'D'
