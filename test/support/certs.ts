// Throw-away certificates for TLS tests, made with the openssl CLI (Node 20 cannot issue
// X.509 certificates itself). EC P-256 keys: fast to generate.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface IssuedCert {
  cert: string;
  key: string;
}

export interface TestPki {
  dir: string;
  /** The CA every `issue()`d certificate chains to. */
  ca: IssuedCert;
  /** Another CA that signed nothing here: verifying against it must fail. */
  otherCa: IssuedCert;
  /** Server certificate for localhost and 127.0.0.1. */
  server: IssuedCert;
  /** A leaf certificate signed by `ca` (or by `otherCa` when signer is 'other'). */
  issue(name: string, opts?: { cn?: string; san?: string; signer?: 'ca' | 'other'; days?: number }): IssuedCert;
  cleanup(): void;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string): IssuedCert {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  openssl(
    ['req', '-x509', ...KEY, '-keyout', key, '-out', cert, '-days', '3', '-subj', `/CN=${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    dir,
  );
  return { cert, key };
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'pgmux-pki-'));
  const ca = makeCa(dir, 'pgmux-test-ca');
  const otherCa = makeCa(dir, 'pgmux-other-ca');
  const issue: TestPki['issue'] = (name, opts = {}) => {
    const signer = opts.signer === 'other' ? otherCa : ca;
    const cert = join(dir, `${name}.crt`);
    const key = join(dir, `${name}.key`);
    const csr = join(dir, `${name}.csr`);
    const ext = join(dir, `${name}.ext`);
    writeFileSync(
      ext,
      [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth,clientAuth',
        ...(opts.san ? [`subjectAltName=${opts.san}`] : []),
      ].join('\n') + '\n',
    );
    openssl(['req', ...KEY, '-keyout', key, '-out', csr, '-subj', `/CN=${opts.cn ?? name}`], dir);
    openssl(['x509', '-req', '-in', csr, '-CA', signer.cert, '-CAkey', signer.key, '-CAcreateserial', '-out', cert, '-days', String(opts.days ?? 2), '-extfile', ext], dir);
    return { cert, key };
  };
  const server = issue('server', { cn: 'localhost', san: 'DNS:localhost,IP:127.0.0.1' });
  return { dir, ca, otherCa, server, issue, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
