// Builds complete result sets (RowDescription, DataRows, CommandComplete) for answers pgmux
// gives itself: the admin console. Never used for forwarded traffic.

const TEXT_OID = 25;
const INT8_OID = 20;
const INT4_OID = 23;
const NUMERIC_OID = 1700;

export type Cell = string | number | bigint | boolean | null;

/**
 * A column's wire type. Declared types matter to clients that scan by type (the Go
 * exporters scan int4/int8 into integers, numeric and text into strings they parse).
 */
export type ColumnType = 'text' | 'int4' | 'int8' | 'numeric' | 'bytea';

/** A column: a bare name (int8 when every value is an integer, else text), or name and type. */
export type Column = string | { readonly name: string; readonly type: ColumnType };

const TYPE_OID: Record<ColumnType, [oid: number, size: number]> = {
  text: [TEXT_OID, -1],
  int4: [INT4_OID, 4],
  int8: [INT8_OID, 8],
  numeric: [NUMERIC_OID, -1],
  bytea: [17, -1],
};

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

export function resultSet(columns: readonly Column[], rows: readonly (readonly Cell[])[], tag?: string): Buffer {
  const parts: Buffer[] = [];
  const desc: Buffer[] = [Buffer.alloc(2)];
  desc[0]!.writeInt16BE(columns.length, 0);
  columns.forEach((col, i) => {
    let name: string;
    let type: ColumnType;
    if (typeof col === 'string') {
      name = col;
      const integral = rows.length > 0 && rows.every((r) => r[i] === null || typeof r[i] === 'bigint' || (typeof r[i] === 'number' && Number.isInteger(r[i])));
      type = integral ? 'int8' : 'text';
    } else {
      ({ name, type } = col);
    }
    const [oid, size] = TYPE_OID[type];
    const f = Buffer.alloc(18);
    f.writeInt32BE(0, 0); // table oid
    f.writeInt16BE(0, 4); // column number
    f.writeInt32BE(oid, 6);
    f.writeInt16BE(size, 10);
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
