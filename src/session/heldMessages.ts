// What a client sent while its transaction waits for a backend (or for pgmux's own answer):
// kept as slices of the read chunks, forwarded in order once a backend is linked.

import type { HeldMessage } from '../protocol/framer.js';

/** What a client may send while it waits for a backend before pgmux stops reading it. */
const MAX_HELD_BYTES = 256 * 1024;

export class HeldMessages {
  list: HeldMessage[] = [];
  /** Bytes in `list`: reading stops above MAX_HELD_BYTES while no backend is free. */
  private bytes = 0;

  hold(m: HeldMessage): void {
    this.list.push(m);
    this.bytes += m.end - m.start;
  }

  get full(): boolean {
    return this.bytes > MAX_HELD_BYTES;
  }

  /** Copies the messages lying in `memory` (a read buffer the next read overwrites). */
  keepOutOf(memory: ArrayBufferLike): void {
    if (this.list.length > 0) keepMessagesOutOf(this.list, memory);
  }

  /** Everything held, in order; nothing is held afterwards. */
  take(): HeldMessage[] {
    const out = this.list;
    this.list = [];
    this.bytes = 0;
    return out;
  }
}

/**
 * Moves the messages of `list` that lie in `memory` into one buffer of their own, changing
 * each HeldMessage in place: whoever else refers to the same object (the replay guard, the
 * request tracker's first message) sees the copy too.
 */
export function keepMessagesOutOf(list: readonly HeldMessage[], memory: ArrayBufferLike): void {
  let bytes = 0;
  for (const m of list) if (m.buf.buffer === memory) bytes += m.end - m.start;
  if (bytes === 0) return;
  const out = Buffer.allocUnsafe(bytes);
  let at = 0;
  for (const m of list) {
    if (m.buf.buffer !== memory) continue;
    const n = m.buf.copy(out, at, m.start, m.end);
    m.buf = out;
    m.start = at;
    m.end = at + n;
    at += n;
  }
}
