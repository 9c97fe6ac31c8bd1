// The client's connection as its session uses it: the accepted socket, replaced by a TLS
// socket over it after SSLRequest or a direct TLS hello; its events bound once (no closure
// per read); reading paused and resumed for backpressure, at most one call each way; after
// login, a plaintext one may move to the lean I/O path (src/net/leanSocket.ts).

import type net from 'node:net';
import { readLean, writeLean } from '../net/leanSocket.js';

export interface ClientSocketEvents {
  data(chunk: Buffer): void;
  /** The client took what was written: the backend may be read again. */
  drain(): void;
  /** Error or close: the client is gone. */
  gone(): void;
}

export class ClientSocket {
  /** The accepted socket, or the TLS socket over it. */
  private socket: net.Socket;
  /**
   * The client's IP address as accepted (a TLS socket over a stream has none of its own), or
   * as a trusted load balancer's PROXY header carried it; null on a Unix-domain socket.
   */
  address: string | null;
  port: number;
  private readPaused = false;
  private readonly onData: (chunk: Buffer) => void;
  private readonly onDrain: () => void;
  private readonly onGone: () => void;

  /**
   * `unix`: accepted on the Unix-domain socket listener. Said by the listener, never guessed
   * from a missing remoteAddress: a TCP socket reset before getpeername() has none either, and
   * must not pass for local (HBA `local` lines).
   */
  constructor(socket: net.Socket, events: ClientSocketEvents, unix = false) {
    this.socket = socket;
    this.address = unix ? null : socket.remoteAddress ?? '';
    this.port = unix ? 0 : socket.remotePort ?? 0;
    this.onData = (chunk) => events.data(chunk);
    this.onDrain = () => events.drain();
    this.onGone = () => events.gone();
    if (!unix) socket.setNoDelay(true);
    this.listen(socket);
  }

  /** A trusted PROXY header named the real client: it is the client's address from now on. */
  carry(address: string, port: number): void {
    this.address = address;
    this.port = port;
  }

  /** host:port, or "unix" as PgBouncer shows a Unix-domain socket client. */
  get remote(): string {
    return this.address === null ? 'unix' : `${this.address}:${this.port}`;
  }

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  /** Reads land in the process's shared read buffer (chunks valid only during `data`). */
  lean = false;

  /** False when the client must drain first (backpressure). Bound: may be passed around. */
  readonly write = (data: Buffer | string): boolean =>
    this.lean && typeof data !== 'string' ? writeLean(this.socket, data) : this.socket.write(data);

  /** Moves a plaintext socket to the lean I/O path; false when it stays on the standard one. */
  readLean(): boolean {
    if (!this.lean) this.lean = readLean(this.socket, this.onData);
    return this.lean;
  }

  /** TLS: the upgraded socket replaces the plain one from now on. */
  swap(upgrade: (plain: net.Socket) => net.Socket): void {
    const plain = this.socket;
    this.unlisten(plain);
    // Errors of the accepted socket surface on the TLS socket; none may go unhandled.
    plain.on('error', () => {});
    this.socket = upgrade(plain);
    this.listen(this.socket);
  }

  pauseReading(): void {
    if (!this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
  }

  resumeReading(): void {
    if (this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  /** Ends the connection; destroys it if the client does not close its side in time. */
  end(): void {
    if (this.socket.destroyed) return;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  private listen(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onGone);
    socket.on('close', this.onGone);
  }

  private unlisten(socket: net.Socket): void {
    socket.off('data', this.onData);
    socket.off('drain', this.onDrain);
    socket.off('error', this.onGone);
    socket.off('close', this.onGone);
  }
}
