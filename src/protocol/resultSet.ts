// Builds complete result sets (RowDescription, DataRows, CommandComplete) for answers pgmux
// gives itself: the admin console. Never used for forwarded traffic.

const TEXT_OID = 25;
const INT8_OID = 20;

export type Cell = string | number | bigint | boolean | null;

function message(type: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function cstr(s: string): Buffer {
  return Buffer.from(s + '\0');
}

/** Columns typed int8 when every non-null value is an integer number/bigint, else text. */
export function resultSet(columns: readonly string[], rows: readonly (readonly Cell[])[], tag?: string): Buffer {
  const parts: Buffer[] = [];
  const desc: Buffer[] = [Buffer.alloc(2)];
  desc[0]!.writeInt16BE(columns.length, 0);
  columns.forEach((name, i) => {
    const numeric = rows.length > 0 && rows.every((r) => r[i] === null || typeof r[i] === 'bigint' || (typeof r[i] === 'number' && Number.isInteger(r[i])));
    const f = Buffer.alloc(18);
    f.writeInt32BE(0, 0); // table oid
    f.writeInt16BE(0, 4); // column number
    f.writeInt32BE(numeric ? INT8_OID : TEXT_OID, 6);
    f.writeInt16BE(numeric ? 8 : -1, 10);
    f.writeInt32BE(-1, 12); // typmod
    f.writeInt16BE(0, 16); // text format
    desc.push(cstr(name), f);
  });
  parts.push(message(0x54, Buffer.concat(desc)));
  for (const r of rows) {
    const cells: Buffer[] = [Buffer.alloc(2)];
    cells[0]!.writeInt16BE(r.length, 0);
    for (const c of r) {
      if (c === null) {
        const n = Buffer.alloc(4);
        n.writeInt32BE(-1, 0);
        cells.push(n);
      } else {
        const v = Buffer.from(typeof c === 'boolean' ? (c ? 't' : 'f') : String(c));
        const l = Buffer.alloc(4);
        l.writeInt32BE(v.length, 0);
        cells.push(l, v);
      }
    }
    parts.push(message(0x44, Buffer.concat(cells)));
  }
  parts.push(commandComplete(tag ?? `SHOW`));
  return Buffer.concat(parts);
}

export function commandComplete(tag: string): Buffer {
  return message(0x43, cstr(tag));
}
