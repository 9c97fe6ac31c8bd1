import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';

describe('pgmux classify', () => {
  async function run(args: string[]): Promise<{ code: number; out: string }> {
    let out = '';
    const code = await main(args, { out: (s: string) => (out += s), err: () => {}, env: {}, signals: new (await import('node:events')).EventEmitter() } as never);
    return { code, out };
  }

  it('prints the target and the reason', async () => {
    expect(await run(['classify', 'SELECT * FROM posts FOR UPDATE'])).toEqual({ code: 0, out: 'primary\tlocking clause FOR UPDATE\n' });
    expect((await run(['classify', 'SELECT 1'])).out).toMatch(/^replica\t/);
    expect((await run(['classify', 'SELECT bump(1)', '--write-functions', 'bump'])).out).toMatch(/^primary\tcalls bump\(\)/);
  });

  it('--cache says whether and why the result may be cached, and what a write invalidates', async () => {
    expect((await run(['classify', '--cache', 'SELECT * FROM posts WHERE id = 1'])).out).toBe('replica\tread-only SELECT\ncache\ttables=posts\n');
    expect((await run(['classify', '--cache', 'SELECT now()'])).out).toMatch(/\nnocache\tcalls now\(\)/);
    expect((await run(['classify', '--cache', 'UPDATE posts SET x = 1'])).out).toMatch(/\nnocache\t.*\tinvalidates=posts\n$/);
  });
});
