// Every admin console command (the table SHOW HELP lists) is documented in the admin console
// section of docs/operations.md, and the section documents no command the console lacks.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { COMMANDS } from '../../src/admin/console.js';

const doc = readFileSync(join(__dirname, '../../docs/operations.md'), 'utf8');
const start = doc.indexOf('\n## Admin console\n');
const end = doc.indexOf('\n### ', start);
const table = start >= 0 && end > start ? doc.slice(start, end) : '';

describe('admin console docs', () => {
  it('docs/operations.md has an admin console section with a command table', () => {
    expect(table).toContain('| Command | Who | What |');
  });

  it.each(COMMANDS.map((c) => [c.command, c.show ? 'stats' : 'admin'] as const))('documents %s (%s users)', (command, who) => {
    const row = table.split('\n').find((l) => l.startsWith(`| \`${command}\` |`));
    expect(row, `no table row for ${command}`).toBeDefined();
    expect(row!.split('|')[2]!.trim()).toBe(who);
  });

  it('documents no command the console does not have', () => {
    const documented = table.split('\n').filter((l) => /^\| `[A-Z]/.test(l)).map((l) => /^\| `([^`]+)`/.exec(l)![1]);
    expect(documented.sort()).toEqual(COMMANDS.map((c) => c.command).sort());
  });
});
