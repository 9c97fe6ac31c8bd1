// The lean I/O path for plaintext sockets: reads land in one buffer shared by every such
// socket in the process, and writes go straight to the socket's fd when nothing is queued.
//
// Node's standard read costs a 64 KiB malloc, a realloc, an ArrayBuffer, a Buffer, a push
// through Readable and a nextTick; its standard write a WriteWrap, the Writable machinery
// and another nextTick. Here a read is one callback with a view of the shared buffer
// (node's `onread`, also set on accepted sockets, which net.Server cannot do), and a write
// is one write(2) on the non-blocking fd when nothing is queued (what uv_try_write does);
// only bytes the kernel did not take are queued the standard way (copied first when they
// lie in the shared buffer).
//
// One buffer serves every socket because libuv reads one socket at a time on the one JS
// thread: alloc, read, callback. The rule that makes it safe: nothing references the
// shared buffer once the read callback returns, or the next read (of any socket)
// overwrites it. Writes keep that rule here (a queued write always points to a copy);
// whoever keeps a view of a chunk across reads must copy it first (inReadBuffer tells).
// Handing the buffer away instead (a fresh one for the next read) does not work: every
// other socket's next read is already bound to the old one.

import { writeSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

/** As large as Node's own read size: one read takes what a 64 KiB socket buffer holds. */
const READ_BUFFER_BYTES = 64 * 1024;

/** The instance symbols net.Socket's constructor sets from its `onread` option. */
interface OnreadSymbols {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

interface StreamHandle {
  fd?: number;
  useUserBuffer?: (buf: Buffer) => void;
}

let symbols: OnreadSymbols | null | undefined;
let shared: Buffer | null = null;
/** Sockets moved to the lean path so far (tests check that their traffic took it). */
let leanSockets = 0;
let sharedBytes: ArrayBufferLike | null = null;

function probeSymbols(): OnreadSymbols | null {
  try {
    // `onread` is public for net.connect; @types/node leaves it out of the constructor's options.
    const probe = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => undefined } } as net.SocketConstructorOpts);
    const byName = new Map<string, symbol>();
    for (const s of Object.getOwnPropertySymbols(probe)) if (s.description) byName.set(s.description, s);
    probe.destroy();
    const buffer = byName.get('kBuffer');
    const callback = byName.get('kBufferCb');
    const generator = byName.get('kBufferGen');
    return buffer && callback && generator ? { buffer, callback, generator } : null;
  } catch {
    return null;
  }
}

/** This Node has what the lean path needs (checked once; callers fall back if not). */
export function leanIoSupported(): boolean {
  if (symbols === undefined) symbols = probeSymbols();
  return symbols !== null && typeof writeSync === 'function';
}

function handleOf(socket: net.Socket): StreamHandle | null {
  return ((socket as unknown as { _handle?: StreamHandle | null })._handle ?? null);
}

/**
 * From now on, reads of `socket` land in the shared buffer and go to `onData`, whose chunk
 * is valid only during the call. False (and nothing changed) for TLS sockets, sockets
 * without a file descriptor, or a Node without the mechanism: the standard path stays.
 * Called between reads (no read callback of this socket is running); data already buffered
 * by the standard path still arrives as 'data' events, before any lean read.
 */
export function readLean(socket: net.Socket, onData: (chunk: Buffer) => void): boolean {
  if (!leanIoSupported() || socket instanceof tls.TLSSocket || socket.destroyed) return false;
  const handle = handleOf(socket);
  if (handle === null || typeof handle.useUserBuffer !== 'function' || typeof handle.fd !== 'number' || handle.fd < 0) return false;
  const s = symbols!;
  const fields = socket as unknown as Record<symbol, unknown>;
  if (fields[s.buffer]) return false; // already lean
  if (shared === null) {
    shared = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
    sharedBytes = shared.buffer;
  }
  fields[s.buffer] = shared;
  fields[s.generator] = null; // the same buffer for every read
  fields[s.callback] = (nread: number, buf: Buffer): void => {
    onData(buf.subarray(0, nread));
  };
  handle.useUserBuffer(shared);
  leanSockets++;
  return true;
}

/** How many sockets readLean() has moved to the lean path in this process. */
export function leanSocketCount(): number {
  return leanSockets;
}

/** `buf` lies in the shared read buffer: valid only until the running read callback returns. */
export function inReadBuffer(buf: Buffer): boolean {
  return buf.buffer === sharedBytes;
}

/** The shared read buffer's memory (to test many views at once), or null before the first lean socket. */
export function readBufferMemory(): ArrayBufferLike | null {
  return sharedBytes;
}

/**
 * Writes `data` to a lean socket: with write(2) when nothing is queued (or corked) ahead of
 * it, skipping Node's WriteWrap and Writable bookkeeping; what the kernel did not take, or
 * everything when something is queued, goes through socket.write, as a copy when it lies in
 * the shared read buffer (a queued write must never point into it). Copying just that tail
 * costs a memcpy of what waits anyway; stopping the source until the destination drains
 * would not be enough (the buffer is every socket's). Returns socket.write's answer
 * (false: wait for 'drain'); true when the kernel took it all.
 */
export function writeLean(socket: net.Socket, data: Buffer): boolean {
  if (socket.writableLength === 0 && socket.writableCorked === 0 && !socket.destroyed && !socket.writableEnded) {
    const fd = handleOf(socket)?.fd;
    if (fd !== undefined && fd >= 0) {
      let sent = 0;
      try {
        sent = writeSync(fd, data, 0, data.length);
      } catch {
        // EAGAIN: the kernel buffer is full. Anything else (EPIPE, ECONNRESET) the
        // socket.write below meets again and reports as Node always does.
        sent = 0;
      }
      if (sent === data.length) return true;
      if (sent > 0) data = data.subarray(sent);
    }
  }
  return socket.write(data.buffer === sharedBytes ? Buffer.from(data) : data);
}
