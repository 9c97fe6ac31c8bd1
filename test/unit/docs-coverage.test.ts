// Every command and option of the CLI (src/cli.ts, read from commander itself) is named in the
// Commands section of docs/configuration.md: a command or flag added without docs fails here.
// Settings are test/unit/config-schema.test.ts's (every key in the settings tables, the flags
// of start and check-config in their paragraph).

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli.js';

const DOCS = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
const COMMANDS_SECTION = /\n## Commands\n([^]*?)(?=\n## |$)/.exec(DOCS)?.[1] ?? '';

const program = buildProgram({});
const commands = program.commands;

describe('docs/configuration.md covers the CLI', () => {
  it('has a Commands section', () => {
    expect(COMMANDS_SECTION.length).toBeGreaterThan(200);
  });

  it('names every command', () => {
    expect(commands.length).toBeGreaterThan(3);
    const missing = [...commands.map((c) => c.name()), 'help'].filter((name) => !new RegExp(`\\bpgmux (\\[)?${name}\\b`).test(COMMANDS_SECTION));
    expect(missing).toEqual([]);
  });

  it("names every command's options", () => {
    const missing: string[] = [];
    for (const c of [program, ...commands]) {
      for (const o of c.options) {
        const long = o.long ?? o.short!;
        if (!COMMANDS_SECTION.includes(long)) missing.push(`${c.name()} ${long}`);
      }
    }
    expect(missing).toEqual([]);
  });

  it('names each argument a command takes', () => {
    for (const c of commands) {
      for (const a of c.registeredArguments) {
        const usage = new RegExp(`pgmux ${c.name()}\\b[^\\n]*\\b${a.name()}\\b`, 'i');
        expect(COMMANDS_SECTION, `${c.name()} <${a.name()}>`).toMatch(usage);
      }
    }
  });
});
