/**
 * A restricted reader of Python pickles (protocols 2 to 5, the binary
 * opcodes), for files that hold data only: numbers, strings, bytes, lists,
 * tuples and dicts, plus the few callables the caller allows by name.
 *
 * A pickle is a program for a small stack machine whose GLOBAL and REDUCE
 * opcodes import and call any Python function (`os.system` included); this
 * reader runs no Python and calls nothing but the caller's own functions
 * for the globals it lists. Any other global is refused before anything
 * else happens. Every length in the stream is checked against the bytes
 * left, so no value read from the file decides an allocation larger than
 * the file itself.
 *
 * @module
 */

/** A Python tuple, told apart from a list. */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** Keys a dict may have here: the hashable kinds a data pickle uses. */
export type PyKey = string | number | bigint | boolean | null;

/** A Python dict (or OrderedDict); keys keep their insertion order. */
export class PyDict {
  readonly entries: Map<PyKey, PyValue> = new Map();
  /** Instance attributes set by BUILD (an OrderedDict's `_metadata`, ...). */
  attributes: PyValue = null;
  /** The entry for a string key, or undefined. */
  get(key: PyKey): PyValue | undefined {
    return this.entries.get(key);
  }
}

/**
 * A global the caller allows: calling it (REDUCE) runs `call`, or is
 * refused when it has none (a class used as a value, such as a storage
 * type inside a persistent id).
 */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly call: ((args: PyValue[]) => PyValue) | null = null,
  ) {}
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An object a caller's function made (a tensor, a storage, ...). */
export interface PyObject {
  readonly pyType: string;
}

/** What a pickle can hold once read. */
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PyGlobal
  | PyObject;

/** How a caller shapes what the reader may do. */
export interface UnpickleOptions {
  /**
   * The global `module.name` asked for, or null to refuse it (the reader
   * then throws `refuse(qualifiedName)`'s error).
   */
  findGlobal(module: string, name: string): PyGlobal | null;
  /** The object a persistent id names (BINPERSID), or throws. */
  persistentLoad?(pid: PyValue): PyValue;
  /** The error thrown for a refused global. */
  refuse(qualifiedName: string): Error;
  /** The error thrown for a malformed stream: `fail(detail)`. */
  fail(detail: string): Error;
}

/** A pickle's value and the offset just past its STOP opcode. */
export interface Unpickled {
  value: PyValue;
  end: number;
}

/** Marks the start of a group of items on the stack (the MARK opcode). */
const MARK = Symbol("mark");
type StackItem = PyValue | typeof MARK;

const UTF8 = new TextDecoder("utf-8", { fatal: true });
const LATIN1 = new TextDecoder("latin1");

/** Whether `v` can be a dict key here. */
function isKey(v: PyValue): v is PyKey {
  return v === null || typeof v === "string" || typeof v === "number" ||
    typeof v === "bigint" || typeof v === "boolean";
}

/** Two's-complement little-endian bytes as an integer (exact as bigint). */
function littleEndianInt(bytes: Uint8Array): number | bigint {
  if (bytes.length === 0) return 0;
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) {
    v = (v << 8n) | BigInt(bytes[i]);
  }
  if (bytes[bytes.length - 1] & 0x80) v -= 1n << BigInt(8 * bytes.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) &&
      v <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(v)
    : v;
}

/**
 * Reads one pickle from `bytes` at `start`, allowing only the globals
 * `opts.findGlobal` returns.
 *
 * @throws `opts.refuse(name)` for a refused global, `opts.fail(detail)` for
 * a malformed or unsupported stream.
 */
export function unpickle(
  bytes: Uint8Array,
  opts: UnpickleOptions,
  start = 0,
): Unpickled {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = start;
  const stack: StackItem[] = [];
  const memo = new Map<number, PyValue>();
  // Typed explicitly so that TypeScript narrows after each call.
  const fail: (detail: string) => never = (detail) => {
    throw opts.fail(detail);
  };

  const need = (n: number, what: string): number => {
    if (n > bytes.length - pos) {
      fail(
        `its pickle ends inside ${what} at byte ${pos} (${n} bytes needed, ${
          bytes.length - pos
        } left)`,
      );
    }
    const at = pos;
    pos += n;
    return at;
  };
  const u8 = (what: string) => bytes[need(1, what)];
  const u16 = (what: string) => view.getUint16(need(2, what), true);
  const u32 = (what: string) => view.getUint32(need(4, what), true);
  const u64 = (what: string): number => {
    const v = view.getBigUint64(need(8, what), true);
    // Past the file's size anyway: `need` refuses it.
    return v > BigInt(Number.MAX_SAFE_INTEGER)
      ? Number.MAX_SAFE_INTEGER
      : Number(v);
  };
  const take = (n: number, what: string) => bytes.subarray(need(n, what), pos);
  const text = (n: number, what: string): string => {
    const raw = take(n, what);
    try {
      return UTF8.decode(raw);
    } catch {
      return fail(`its pickle has a ${what} that is not valid UTF-8`);
    }
  };
  /** A newline-terminated ASCII line (GLOBAL's module and name). */
  const line = (what: string): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail(`its pickle ends inside ${what}`);
    const s = LATIN1.decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };

  const pop = (): PyValue => {
    const v = stack.pop();
    if (v === undefined) fail(`its pickle pops an empty stack at byte ${pos}`);
    if (v === MARK) fail(`its pickle pops a mark as a value at byte ${pos}`);
    return v as PyValue;
  };
  const top = (): PyValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) {
      fail(`its pickle has no value on the stack at byte ${pos}`);
    }
    return v as PyValue;
  };
  /** The items above the topmost mark, which is removed with them. */
  const popMark = (): PyValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail(`its pickle has no mark to pop at byte ${pos}`);
    const items = stack.splice(i) as PyValue[];
    items.shift();
    return items;
  };
  const memoGet = (i: number): PyValue => {
    const v = memo.get(i);
    if (v === undefined) {
      fail(`its pickle reads memo ${i}, which was never set`);
    }
    return v as PyValue;
  };
  const setItems = (dict: PyValue, items: PyValue[]) => {
    if (!(dict instanceof PyDict)) {
      return fail(`its pickle sets items on something that is not a dict`);
    }
    if (items.length % 2 !== 0) fail(`its pickle sets a key without a value`);
    for (let i = 0; i < items.length; i += 2) {
      const key = items[i];
      if (!isKey(key)) {
        fail(`its pickle has a dict key of a kind data files do not use`);
      }
      dict.entries.set(key as PyKey, items[i + 1]);
    }
  };
  const append = (list: PyValue, items: PyValue[]) => {
    if (!Array.isArray(list)) {
      return fail(`its pickle appends to something that is not a list`);
    }
    for (const v of items) list.push(v);
  };
  const global = (module: string, name: string) => {
    const g = opts.findGlobal(module, name);
    if (g === null) throw opts.refuse(`${module}.${name}`);
    stack.push(g);
  };

  for (;;) {
    const at = pos;
    const op = u8("an opcode");
    switch (op) {
      case 0x80: { // PROTO
        const v = u8("the protocol number");
        if (v < 2 || v > 5) {
          fail(`its pickle uses protocol ${v} (2 to 5 are read)`);
        }
        break;
      }
      case 0x95: // FRAME: a length hint only
        u64("a frame length");
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) {
          fail(`its pickle stops with ${stack.length} items on the stack`);
        }
        return { value: pop(), end: pos };
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x30: // POP
        if (stack.pop() === undefined) fail(`its pickle pops an empty stack`);
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(view.getInt32(need(4, "an integer"), true));
        break;
      case 0x4b: // BININT1
        stack.push(u8("an integer"));
        break;
      case 0x4d: // BININT2
        stack.push(u16("an integer"));
        break;
      case 0x8a: // LONG1
        stack.push(littleEndianInt(take(u8("a length"), "an integer")));
        break;
      case 0x8b: { // LONG4
        const n = view.getInt32(need(4, "a length"), true);
        if (n < 0) fail(`its pickle has a negative integer length`);
        stack.push(littleEndianInt(take(n, "an integer")));
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        stack.push(view.getFloat64(need(8, "a float"), false));
        break;
      case 0x58: // BINUNICODE
        stack.push(text(u32("a length"), "string"));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8("a length"), "string"));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64("a length"), "string"));
        break;
      case 0x55: // SHORT_BINSTRING (Python 2 str, read as Latin-1)
        stack.push(LATIN1.decode(take(u8("a length"), "a string")));
        break;
      case 0x54: { // BINSTRING
        const n = view.getInt32(need(4, "a length"), true);
        if (n < 0) fail(`its pickle has a negative string length`);
        stack.push(LATIN1.decode(take(n, "a string")));
        break;
      }
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8("a length"), "bytes").slice());
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32("a length"), "bytes").slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64("a length"), "bytes").slice());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x64: { // DICT
        const d = new PyDict();
        setItems(d, popMark());
        stack.push(d);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x74: // TUPLE
        stack.push(new PyTuple(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        stack.push(new PyTuple([pop(), b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(new PyTuple([pop(), b, c]));
        break;
      }
      case 0x73: { // SETITEM
        const value = pop();
        const key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        append(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        append(top(), items);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8("a memo index"), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32("a memo index"), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(u8("a memo index")));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32("a memo index")));
        break;
      case 0x63: { // GLOBAL
        const module = line("a module name");
        global(module, line("a global's name"));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") {
          fail(`its pickle names a global by something other than strings`);
        }
        global(module as string, name as string);
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PyGlobal)) {
          return fail(`its pickle calls something that is not a global`);
        }
        if (fn.call === null) throw opts.refuse(fn.qualifiedName);
        if (!(args instanceof PyTuple)) {
          return fail(
            `its pickle calls ${fn.qualifiedName} without a tuple of arguments`,
          );
        }
        stack.push(fn.call(args.items));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        // An OrderedDict's attributes (a state dict's `_metadata`) are kept
        // as data; no other object takes a state.
        if (!(obj instanceof PyDict)) {
          return fail(`its pickle sets the state of an object that takes none`);
        }
        obj.attributes = state;
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (opts.persistentLoad === undefined) {
          fail(`its pickle refers to data outside itself`);
        }
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x81: // NEWOBJ
      case 0x92: { // NEWOBJ_EX
        const cls = stack[stack.length - (op === 0x81 ? 2 : 3)];
        throw cls instanceof PyGlobal
          ? opts.refuse(cls.qualifiedName)
          : opts.fail(`its pickle builds an object of an unknown class`);
      }
      default:
        fail(
          `its pickle has opcode 0x${
            op.toString(16).padStart(2, "0")
          } at byte ${at}, which a data file written by Python 3 does not use`,
        );
    }
  }
}
