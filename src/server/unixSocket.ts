// The Unix-domain socket listener's file: its path (<unix_socket_dir>/.s.PGSQL.<port>, where
// libpq looks for host=<dir>), taking over a stale one, and its mode and group.
//
// A socket file outlives a process that died without closing it, and bind() then fails with
// EADDRINUSE. PgBouncer unlinks the file unconditionally unless `<path>.lock` exists (the lock
// file a PostgreSQL server keeps next to its own socket). pgmux refuses in that case too, and
// instead of assuming the old owner is gone it connects: refused means stale (unlinked, bind
// again), accepted means another process serves it (an error naming the path). pgmux keeps no
// lock file of its own: the probe answers what a lock file would, and the TCP listener on the
// same port is bound first, so two pgmux on one port cannot both get this far.

import { chownSync, chmodSync, existsSync, readFileSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';

/** Linux's sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

/** The socket file libpq connects to for host=<dir> port=<port>. */
export function unixSocketPath(dir: string, port: number): string {
  return join(dir, `.s.PGSQL.${port}`);
}

export class UnixSocketError extends Error {
  override name = 'UnixSocketError';
}

/** PostgreSQL's lock file next to its socket: that port number is a PostgreSQL server's, alive or not. */
function refuseLockedPath(path: string): void {
  if (existsSync(`${path}.lock`)) {
    throw new UnixSocketError(`unix_socket_dir: ${path} belongs to a PostgreSQL server (lock file ${path}.lock exists); use another listen port or unix_socket_dir, or set unix_socket_dir off`);
  }
}

/** True when something accepts connections on the socket file (a live owner). */
function answers(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    const done = (live: boolean) => {
      probe.destroy();
      resolve(live);
    };
    probe.setTimeout(timeoutMs, () => done(true)); // a hung owner is still an owner
    probe.once('connect', () => done(true));
    probe.once('error', () => done(false));
  });
}

/**
 * Before binding: a file left by a dead process is removed; a live owner or a PostgreSQL lock
 * file is an error. Used by the single process on EADDRINUSE, and by the --workers supervisor
 * once before forking (workers share the primary's listener, so each would see a live one).
 */
export async function removeStaleSocket(path: string): Promise<void> {
  refuseLockedPath(path);
  if (!existsSync(path)) return;
  if (await answers(path)) {
    throw new UnixSocketError(`unix_socket_dir: ${path} is in use by another process (it accepts connections); stop it, or use another listen port or unix_socket_dir, or set unix_socket_dir off`);
  }
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new UnixSocketError(`unix_socket_dir: cannot remove the stale socket ${path}: ${(err as Error).message}`);
  }
}

/** A group name (from /etc/group) or a numeric gid. */
export function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let text = '';
  try {
    text = readFileSync('/etc/group', 'utf8');
  } catch {
    // no group database: the name is unknown
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new UnixSocketError(`unix_socket_group: no group named ${JSON.stringify(group)} (expected a group name from /etc/group or a numeric gid)`);
}

export interface UnixListenOptions {
  mode: number;
  group: string | null;
  /** Remove a stale file on EADDRINUSE and bind again (false in --workers workers: the supervisor did it). */
  takeOverStale: boolean;
}

function listenOnce(server: net.Server, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(path, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Binds `server` to the socket file and sets its mode and group; errors are UnixSocketError with the path in the message. */
export async function listenUnix(server: net.Server, path: string, opts: UnixListenOptions): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw new UnixSocketError(`unix_socket_dir: the socket path ${path} is longer than ${MAX_SOCKET_PATH_BYTES} bytes (the system's limit); use a shorter directory`);
  }
  const gid = opts.group === null ? null : groupId(opts.group);
  refuseLockedPath(path);
  try {
    await listenOnce(server, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE' && opts.takeOverStale) {
      await removeStaleSocket(path);
      await listenOnce(server, path).catch((again: Error) => {
        throw new UnixSocketError(`unix_socket_dir: cannot listen on ${path}: ${again.message}`);
      });
    } else if (code === 'EADDRINUSE') {
      throw new UnixSocketError(`unix_socket_dir: ${path} is in use by another process; stop it, or use another listen port or unix_socket_dir, or set unix_socket_dir off`);
    } else {
      const why = code === 'ENOENT' ? 'no such directory' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
      throw new UnixSocketError(`unix_socket_dir: cannot listen on ${path}: ${why}`);
    }
  }
  try {
    // bind() created the file under the umask (usually no write bit, so no connect, for group
    // and others); from here on it is exactly as configured.
    if (gid !== null) chownSync(path, -1, gid);
    chmodSync(path, opts.mode);
  } catch (err) {
    server.close();
    throw new UnixSocketError(`unix_socket_mode / unix_socket_group: cannot set them on ${path}: ${(err as Error).message}`);
  }
}
