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

  /** Everything held, in order; nothing is held afterwards. */
  take(): HeldMessage[] {
    const out = this.list;
    this.list = [];
    this.bytes = 0;
    return out;
  }
}
