/**
 * safetensors reader and writer.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 *   { name: { dtype, shape, data_offsets: [begin, end] }, ..., "__metadata__": { str: str } }
 * then the data section; offsets are relative to its start.
 *
 * Reading: F32, F16, BF16 and F64 become Float32Array (or Float64Array for F64 when asked);
 * I32/I64 become Int32Array (I64 must fit). The header is checked strictly before any data byte
 * is read, so a truncated or hostile file gives an error naming the file, never garbage: its
 * length is at most MAX_HEADER_BYTES, it is a JSON object without duplicate keys, every dtype is
 * one of the strings above, shapes are non-negative integers, and the tensors' data_offsets,
 * sorted, tile the data section exactly (start at 0, each begins where the previous ends: no gap,
 * overlap or alias, nothing after the last). Integrity: every file written here carries in its
 * `__metadata__` the key `attnres.crc32`, a JSON string mapping each tensor name to the CRC-32
 * (zlib's) of its raw data bytes as 8 lowercase hex digits; readers verify it when present unless
 * `verify: false` (or `setVerifyChecksums(false)`, the CLI's --no-verify). Files without it (HF
 * downloads) load as before.
 * `readSafetensorsHeader` / `readCheckpointHeader` read only the header(s): names, dtypes, shapes.
 * `openCheckpointWeights` reads the headers and gives tensors (`FileTensor`) whose `data` is read
 * from the file and decoded on each access (in bounded chunks), that decode into a caller's array
 * (`readInto`) or stream their raw bytes (`readRaw`), so that a caller never holds the whole
 * checkpoint in memory (`attnres convert` on a 0.6B model: docs/benchmarks.md).
 * Writing: F32, F16, BF16, F64, I32; the header is padded to 8 bytes; files are written atomically
 * (temporary file + rename), tensor by tensor through a bounded buffer (`writeSafetensors`) or
 * into one Buffer (`serializeSafetensors`), with the same bytes. A tensor to write may also be a
 * `CopyTensor`: a `FileTensor` streamed from its file, its bytes copied as they are when the dtype
 * is kept, else re-encoded chunk by chunk. Sharded checkpoints are read via
 * model.safetensors.index.json.
 * F16 and BF16 are written from float32 values with round-to-nearest-even (values are first rounded
 * to float32); BF16 keeps NaN a NaN (quiet, same sign), F16 overflows to ±Inf and writes
 * subnormals exactly. `storedValue` is what reading the written value gives back.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { crc32, crc32Hex, fsyncPath, tempNameOf } from "./atomic.js";
import { optionError } from "./errors.js";

export type StDType = "F32" | "F16" | "BF16" | "F64" | "I32" | "I64";
/** The float dtypes a checkpoint's weights can be written in. */
export type FloatStDType = "F32" | "F16" | "BF16";
const BYTES: Record<StDType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8 };
/** Typed-array views over file bytes are only the file's values on a little-endian host. */
const LITTLE_ENDIAN = os.endianness() === "LE";
/** Bytes per chunk when reading a tensor from a file or writing one to it (a multiple of 8). */
const CHUNK_BYTES = 16 << 20;
/** The largest header accepted (the safetensors format's own limit). */
export const MAX_HEADER_BYTES = 100 << 20;
/** The `__metadata__` key holding the per-tensor CRC-32 map. */
export const CRC_KEY = "attnres.crc32";

let verifyDefault = true;
/** Whether readers verify the `attnres.crc32` checksums by default (the CLI's --no-verify). */
export function setVerifyChecksums(on: boolean): void {
  verifyDefault = on;
}

export interface StTensor {
  dtype: StDType;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array;
}

/**
 * A tensor of a file opened by `openCheckpointWeights`: `data` reads and decodes it anew on each
 * access; `readInto` decodes it into a given array (its first count values; I32/I64 into a float
 * array pass through a float32 chunk); `readRaw` streams its raw bytes, CHUNK_BYTES at most at a
 * time, to fn(bytes, index of the first value) (the buffer is reused) and returns their CRC-32.
 * All three verify the file's recorded checksum (unless off) once the last byte is read: a corrupt
 * tensor throws after fn has seen its bytes.
 */
export interface FileTensor extends StTensor {
  /** Returns true when every value is known to be finite (F16/BF16 check it on the way), else false. */
  readInto(into: Float32Array | Float64Array): boolean;
  readRaw(fn: (bytes: Buffer, first: number) => void): number;
}

export interface StFile {
  tensors: Map<string, StTensor>;
  metadata: Record<string, string>;
}

export interface ReadOptions {
  /** Keep F64 tensors as Float64Array (default: converted to Float32Array). */
  keepF64?: boolean;
  /** Called after each tensor is decoded (progress). */
  onTensor?: (name: string) => void;
  /** Check each tensor's bytes against the file's `attnres.crc32` metadata (default: true). */
  verify?: boolean;
}

/** The value of F16 bits `h` (0…0xffff). */
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** The value of BF16 bits `b` (0…0xffff): the top half of a float32. */
export function bf16ToF32(b: number): number {
  SCRATCH_U32[0] = (b & 0xffff) << 16;
  return SCRATCH_F32[0]!;
}

const SCRATCH_F32 = new Float32Array(1);
const SCRATCH_U32 = new Uint32Array(SCRATCH_F32.buffer);

/** The float32 bits of x (x is first rounded to float32). */
function f32Bits(x: number): number {
  SCRATCH_F32[0] = x;
  return SCRATCH_U32[0]!;
}

/**
 * BF16 bits of x: float32 rounded to nearest, ties to even; overflow rounds to ±Inf as IEEE does;
 * NaN stays NaN (quiet bit set, sign and top payload bits kept).
 */
export function f32ToBf16Bits(x: number): number {
  return bf16FromBits(f32Bits(x));
}

/** `f32ToBf16Bits` from float32 bits `b` (0…0xffffffff). */
function bf16FromBits(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x0040) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff; // b ≤ 0xff800000: no 32-bit overflow
}

/**
 * F16 bits of x: float32 rounded to nearest, ties to even; |x| ≥ 65520 (and ±Inf) → ±Inf; values
 * below 2^-14 become subnormals k·2^-24 (rounded the same way; ≤ 2^-25 → ±0); NaN stays NaN (quiet).
 */
export function f32ToF16Bits(x: number): number {
  return f16FromBits(f32Bits(x));
}

/** `f32ToF16Bits` from float32 bits `b` (0…0xffffffff). */
function f16FromBits(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff; // float32 biased exponent
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x0200 | (mant >>> 13) : 0);
  const e = exp - 112; // f16 biased exponent (127 - 15)
  if (e >= 0x1f) return sign | 0x7c00;
  if (e >= 1) {
    // normal: keep 10 of the 23 mantissa bits; a carry may step into the exponent (up to Inf)
    const h = sign | (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    return rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1) ? h + 1 : h;
  }
  // subnormal k·2^-24: x = M·2^(exp − 150) with M = 2^23 | mant, so k = M·2^(exp − 126)
  const shift = 126 - exp; // ≥ 14
  if (shift > 24) return sign; // |x| < 2^-25: rounds to zero (ties included, 0 is even)
  const m = 0x800000 | mant;
  let k = m >>> shift;
  const rest = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (k & 1) === 1)) k++; // k = 1024 is the smallest normal, 0x0400
  return sign | k;
}

/** What reading back a float32 value written as `dtype` gives (F32/F64: the float32 value). */
export function storedValue(x: number, dtype: FloatStDType): number {
  if (dtype === "BF16") return bf16ToF32(f32ToBf16Bits(x));
  if (dtype === "F16") return f16ToF32(f32ToF16Bits(x));
  return Math.fround(x);
}

function fail(file: string, msg: string): never {
  throw new Error(`${file}: not a valid safetensors file: ${msg}`);
}

interface HeaderEntry {
  name: string;
  dtype: StDType;
  shape: number[];
  /** Byte offsets in the data section. */
  begin: number;
  end: number;
  /** The CRC-32 of the raw bytes the file's metadata records (8 hex digits), if any. */
  crc?: string;
}

/**
 * The first object key that occurs twice in one object of the JSON text `json` (JSON.parse would
 * silently keep the last), or null. `json` must be valid JSON.
 */
export function duplicateJsonKey(json: string): string | null {
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let j = i + 1;
      while (json[j] !== '"') j += json[j] === "\\" ? 2 : 1;
      const top = stack[stack.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(json.slice(i, j + 1)) as string;
        if (top.has(key)) return key;
        top.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === "{") {
      stack.push(new Set());
      expectKey = true;
    } else if (c === "[") {
      stack.push(null);
      expectKey = false;
    } else if (c === "}" || c === "]") stack.pop();
    else if (c === ",") expectKey = stack[stack.length - 1] !== null;
  }
  return null;
}

interface Header {
  entries: HeaderEntry[];
  metadata: Record<string, string>;
  /** Where the data section starts in the file. */
  dataStart: number;
}

/**
 * Parses and checks the header at the start of `head` (which holds at least the 8-byte length
 * and the JSON) against a file of `fileSize` bytes.
 */
function parseHeader(head: Buffer, fileSize: number, file: string): Header {
  const hlen = headerLength(head, fileSize, file);
  const text = head.subarray(8, 8 + hlen).toString("utf8");
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    fail(file, `header is not JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header))
    fail(file, "header is not an object");
  const dup = duplicateJsonKey(text);
  if (dup !== null) fail(file, `the header names ${JSON.stringify(dup)} twice`);
  const dataStart = 8 + hlen;
  const dataLen = fileSize - dataStart;
  const entries: HeaderEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (raw === null || typeof raw !== "object" || Array.isArray(raw))
        fail(file, "__metadata__ is not an object");
      for (const [k, v] of Object.entries(raw))
        if (typeof v !== "string") fail(file, `__metadata__ value of ${k} is not a string`);
      metadata = raw as Record<string, string>;
      continue;
    }
    if (raw === null || typeof raw !== "object" || Array.isArray(raw))
      fail(file, `tensor ${name} is described by ${JSON.stringify(raw)}, not an object`);
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = info.dtype as StDType;
    if (typeof dtype !== "string" || !Object.hasOwn(BYTES, dtype))
      fail(
        file,
        `tensor ${name} has unsupported dtype ${JSON.stringify(info.dtype)} (expected one of ${Object.keys(BYTES).join(", ")})`,
      );
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((s) => Number.isInteger(s) && s >= 0))
      fail(file, `tensor ${name} has a bad shape ${JSON.stringify(shape)}`);
    const offs = info.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0))
      fail(file, `tensor ${name} has bad data_offsets ${JSON.stringify(offs)}`);
    const [begin, end] = offs as [number, number];
    const count = (shape as number[]).reduce((p, s) => p * s, 1);
    if (end < begin || end - begin !== count * BYTES[dtype])
      fail(file, `tensor ${name}: offsets [${begin}, ${end}) do not hold ${count} ${dtype} values`);
    if (end > dataLen)
      fail(
        file,
        `tensor ${name} ends at byte ${end} of the data section, which has only ${dataLen} bytes (truncated?)`,
      );
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }
  // Sorted by offset, the tensors must tile the data section: no gap, overlap, alias or tail.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  let prev: HeaderEntry | null = null;
  for (const e of sorted) {
    if (e.begin < at)
      fail(
        file,
        `tensor ${e.name}'s bytes [${e.begin}, ${e.end}) ${e.begin === prev!.begin && e.end === prev!.end ? "alias" : "overlap"} those of ${prev!.name} [${prev!.begin}, ${prev!.end})`,
      );
    if (e.begin > at) fail(file, `bytes [${at}, ${e.begin}) of the data section belong to no tensor`);
    at = e.end;
    if (e.end > e.begin) prev = e;
  }
  if (at !== dataLen)
    fail(file, `the data section has ${dataLen - at} bytes after the last tensor (it ends at ${at})`);
  const crcs = metadata[CRC_KEY];
  if (crcs !== undefined) {
    let map: unknown;
    try {
      map = JSON.parse(crcs);
    } catch {
      map = null;
    }
    if (map === null || typeof map !== "object" || Array.isArray(map))
      fail(file, `__metadata__ ${CRC_KEY} is not a JSON object`);
    const m = map as Record<string, unknown>;
    for (const e of entries) {
      const c = m[e.name];
      if (typeof c !== "string" || !/^[0-9a-f]{8}$/.test(c))
        fail(file, `__metadata__ ${CRC_KEY} has no valid checksum for tensor ${e.name}`);
      e.crc = c;
    }
    if (Object.keys(m).length !== entries.length)
      fail(file, `__metadata__ ${CRC_KEY} lists tensors the file does not hold`);
  }
  return { entries, metadata, dataStart };
}

/** The header length a file's first 8 bytes give, checked against the file size and the limit. */
function headerLength(len: Buffer, fileSize: number, file: string): number {
  if (fileSize < 8) fail(file, `${fileSize} bytes is too short for the 8-byte header length`);
  const n = len.readBigUInt64LE(0);
  if (n > BigInt(fileSize - 8)) fail(file, `header length ${n} exceeds the file size ${fileSize}`);
  if (n > BigInt(MAX_HEADER_BYTES))
    fail(file, `header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  return Number(n);
}

const verifying = (opts: ReadOptions): boolean => opts.verify ?? verifyDefault;

function checkCrc(file: string, e: HeaderEntry, crc: number): void {
  if (crc32Hex(crc) !== e.crc)
    throw optionError(
      (n) =>
        `${file}: tensor ${e.name} is corrupt: its bytes have CRC-32 ${crc32Hex(crc)}, the file records ${e.crc} (pass ${n("verify", false)} to load it anyway)`,
    );
}

/** Parses a safetensors buffer. `file` names the source in errors. */
export function parseSafetensors(buf: Buffer, file = "safetensors", opts: ReadOptions = {}): StFile {
  const { entries, metadata, dataStart } = parseHeader(buf, buf.length, file);
  const tensors = new Map<string, StTensor>();
  if (verifying(opts))
    for (const e of entries)
      if (e.crc !== undefined) checkCrc(file, e, crc32(buf.subarray(dataStart + e.begin, dataStart + e.end)));
  for (const { name, dtype, shape, begin } of entries) {
    const count = shape.reduce((p, s) => p * s, 1);
    tensors.set(name, { dtype, shape, data: decode(buf, dataStart + begin, count, dtype, name, file, opts) });
    opts.onTensor?.(name);
  }
  return { tensors, metadata };
}

/** A tensor's description in a header (no data). */
export interface StTensorInfo {
  dtype: StDType;
  shape: number[];
}

function openForReading(file: string): number {
  try {
    // stat before open: opening a FIFO would wait for a writer
    if (fs.statSync(file).isFile()) return fs.openSync(file, "r");
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      cause: e,
    });
  }
  fail(file, "not a regular file");
}

/** Reads only the header of a safetensors file (the data is neither read nor checked). */
export function readSafetensorsHeader(file: string): Map<string, StTensorInfo> {
  return new Map(readHeaderOf(file).entries.map((e) => [e.name, { dtype: e.dtype, shape: e.shape }]));
}

/** The parsed and checked header of a safetensors file, read without its data section. */
function readHeaderOf(file: string): Header {
  const fd = openForReading(file);
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) fail(file, "not a regular file");
    const size = st.size;
    const len = Buffer.alloc(8);
    if (size < 8 || fs.readSync(fd, len, 0, 8, 0) !== 8)
      fail(file, `${size} bytes is too short for the 8-byte header length`);
    const n = headerLength(len, size, file);
    const head = Buffer.alloc(8 + n);
    len.copy(head);
    if (fs.readSync(fd, head, 8, n, 8) !== n) fail(file, "the header could not be read");
    return parseHeader(head, size, file);
  } finally {
    fs.closeSync(fd);
  }
}

type Decoded = Float32Array | Float64Array | Int32Array;

/** The array a tensor of `dtype` decodes into. */
function decodedArray(dtype: StDType, count: number, opts: ReadOptions): Decoded {
  if (dtype === "I32" || dtype === "I64") return new Int32Array(count);
  return dtype === "F64" && opts.keepF64 ? new Float64Array(count) : new Float32Array(count);
}

function decode(
  buf: Buffer,
  at: number,
  count: number,
  dtype: StDType,
  name: string,
  file: string,
  opts: ReadOptions,
): Decoded {
  const out = decodedArray(dtype, count, opts);
  decodeInto(buf, at, count, dtype, out, 0, name, file);
  return out;
}

let f16Table: Float32Array | null = null;

/**
 * Decodes `count` values of `dtype` at byte `at` of `buf` into out[o…]. On a little-endian host
 * with aligned data, F32/F16/BF16 go through typed-array views (the same values, faster).
 * Returns true when the values are known to be finite (F16/BF16 through views check the exponent
 * bits on the way), false when unknown.
 */
function decodeInto(
  buf: Buffer,
  at: number,
  count: number,
  dtype: StDType,
  out: Decoded,
  o: number,
  name: string,
  file: string,
): boolean {
  const view = LITTLE_ENDIAN && (buf.byteOffset + at) % BYTES[dtype] === 0;
  switch (dtype) {
    case "F32":
      if (view) out.set(new Float32Array(buf.buffer, buf.byteOffset + at, count), o);
      else for (let i = 0; i < count; i++) out[o + i] = buf.readFloatLE(at + 4 * i);
      return false;
    case "F64":
      for (let i = 0; i < count; i++) out[o + i] = buf.readDoubleLE(at + 8 * i);
      return false;
    case "F16":
      if (view) {
        if (!f16Table) {
          f16Table = new Float32Array(65536);
          for (let h = 0; h < 65536; h++) f16Table[h] = f16ToF32(h);
        }
        const t = f16Table;
        const h = new Uint16Array(buf.buffer, buf.byteOffset + at, count);
        // Exponent bits all ones (Inf/NaN): adding 0x0400 to them carries into bit 15.
        let e = 0;
        for (let i = 0; i < count; i++) {
          const b = h[i]!;
          out[o + i] = t[b]!;
          e |= (b & 0x7c00) + 0x0400;
        }
        return (e & 0x8000) === 0;
      }
      for (let i = 0; i < count; i++) out[o + i] = f16ToF32(buf.readUInt16LE(at + 2 * i));
      return false;
    case "BF16": {
      const u = new Uint32Array(out.buffer, out.byteOffset + 4 * o, count);
      if (view) {
        const h = new Uint16Array(buf.buffer, buf.byteOffset + at, count);
        // Exponent bits all ones (Inf/NaN): adding 0x0080 to them carries into bit 15.
        let e = 0;
        for (let i = 0; i < count; i++) {
          const b = h[i]!;
          u[i] = b << 16;
          e |= (b & 0x7f80) + 0x0080;
        }
        return (e & 0x8000) === 0;
      }
      for (let i = 0; i < count; i++) u[i] = buf.readUInt16LE(at + 2 * i) << 16;
      return false;
    }
    case "I32":
      for (let i = 0; i < count; i++) out[o + i] = buf.readInt32LE(at + 4 * i);
      return false;
    case "I64":
      for (let i = 0; i < count; i++) {
        const v = buf.readBigInt64LE(at + 8 * i);
        if (v > 2147483647n || v < -2147483648n)
          fail(file, `tensor ${name}: I64 value ${v} does not fit in int32`);
        out[o + i] = Number(v);
      }
      return false;
  }
}

/** A CHUNK_BYTES read buffer kept between reads (page faults and GC of a fresh one cost more than the copy). */
let spareChunk: Buffer | null = null;

/**
 * Reads one tensor's raw bytes from an open file, CHUNK_BYTES at most at a time (a whole number of
 * values each), calling fn(bytes, index of the chunk's first value) for each; the buffer is reused.
 * Verifies the CRC-32 the file records (unless verification is off) after the last chunk. Returns
 * the CRC-32 of the bytes when `wantCrc` or when verifying, else null.
 */
function readChunks(
  fd: number,
  file: string,
  e: HeaderEntry,
  dataStart: number,
  opts: ReadOptions,
  fn: (bytes: Buffer, first: number) => void,
  wantCrc = false,
): number | null {
  const size = BYTES[e.dtype];
  const count = (e.end - e.begin) / size;
  const chunk = spareChunk ?? Buffer.allocUnsafeSlow(CHUNK_BYTES);
  spareChunk = null; // a read inside fn (none today) gets its own
  try {
    const per = Math.floor(CHUNK_BYTES / size);
    const verify = verifying(opts) && e.crc !== undefined;
    let crc = 0;
    for (let i = 0; i < count; i += per) {
      const n = Math.min(per, count - i);
      let got = 0;
      while (got < n * size) {
        const r = fs.readSync(fd, chunk, got, n * size - got, dataStart + e.begin + i * size + got);
        if (r === 0) fail(file, `tensor ${e.name}: the file ended early (did it change while being read?)`);
        got += r;
      }
      const bytes = chunk.subarray(0, n * size);
      if (verify || wantCrc) crc = crc32(bytes, crc);
      fn(bytes, i);
    }
    if (verify) checkCrc(file, e, crc);
    return verify || wantCrc ? crc : null;
  } finally {
    spareChunk = chunk;
  }
}

/**
 * Reads and decodes one tensor from an open file into `out` (a new array when not given),
 * CHUNK_BYTES at a time (no copy of the whole tensor's bytes is held).
 */
function readTensor(
  fd: number,
  file: string,
  e: HeaderEntry,
  dataStart: number,
  opts: ReadOptions,
  into?: Float32Array | Float64Array,
  finiteOut?: { known: boolean },
): Decoded {
  const count = (e.end - e.begin) / BYTES[e.dtype];
  const out = into ?? decodedArray(e.dtype, count, opts);
  // Decoding goes through a float32 chunk when `out` is not what the dtype decodes into.
  const direct = !into || (into instanceof Float32Array && e.dtype !== "I32" && e.dtype !== "I64");
  let scratch: Float32Array | null = null;
  let finite = true;
  readChunks(fd, file, e, dataStart, opts, (bytes, first) => {
    const n = bytes.length / BYTES[e.dtype];
    if (direct) finite = decodeInto(bytes, 0, n, e.dtype, out, first, e.name, file) && finite;
    else {
      scratch ??= new Float32Array(n);
      finite = decodeInto(bytes, 0, n, e.dtype, scratch, 0, e.name, file) && finite;
      for (let k = 0; k < n; k++) out[first + k] = scratch[k]!;
    }
  });
  if (finiteOut) finiteOut.known = finite;
  return out;
}

export function readSafetensors(file: string, opts: ReadOptions = {}): StFile {
  let buf: Buffer;
  let regular: boolean;
  try {
    regular = fs.statSync(file).isFile();
    buf = regular ? fs.readFileSync(file) : Buffer.alloc(0);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      cause: e,
    });
  }
  if (!regular) fail(file, "not a regular file");
  return parseSafetensors(buf, file, opts);
}

export interface WriteTensor {
  /** Default F32. F16/BF16 round each value (see `f32ToF16Bits`, `f32ToBf16Bits`). */
  dtype?: FloatStDType | "F64" | "I32";
  shape: readonly number[];
  data: ArrayLike<number>;
}

/**
 * A tensor written from the bytes of a file tensor (`openCheckpointWeights`) without decoding it
 * whole: copied byte for byte when `dtype` is the file's dtype, else decoded and encoded chunk by
 * chunk. The bytes are those of writing its decoded `data` as `dtype` (for finite values; a copy
 * keeps NaN payloads as they are). The checksum recorded is that of the bytes written; the source's
 * own checksum, when recorded, is verified as the bytes are read.
 */
export interface CopyTensor {
  dtype: FloatStDType;
  shape: readonly number[];
  from: FileTensor;
}

type AnyTensor = WriteTensor | CopyTensor;
const isCopy = (t: AnyTensor): t is CopyTensor => "from" in t;

export interface WriteOptions {
  /** Called after each tensor is encoded (progress): its name, its index and the tensor count. */
  onTensor?: (name: string, index: number, count: number) => void;
}

/** The float32 bits of d's values: a view when d is a Float32Array, else a rounded copy. */
function bitsOf(d: ArrayLike<number>): Uint32Array {
  if (d instanceof Float32Array) return new Uint32Array(d.buffer, d.byteOffset, d.length);
  return new Uint32Array(Float32Array.from(d).buffer);
}

interface Layout {
  /** The 8-byte length and the padded JSON header, with placeholder checksums. */
  head: Buffer;
  /** The same header with the tensors' checksums (as many bytes as `head`). */
  headWith: (crcs: readonly number[]) => Buffer;
  list: [string, AnyTensor, StDType][];
  /** Bytes of the data section. */
  dataBytes: number;
}

/**
 * The header of a safetensors file holding `tensors` (in the given order) and `metadata` plus the
 * `attnres.crc32` checksum map. Its length does not depend on the checksums (8 hex digits each),
 * so the data can be written before the checksums are known.
 */
function layout(tensors: Iterable<[string, AnyTensor]>, metadata: Record<string, string>): Layout {
  const header: Record<string, unknown> = {};
  const meta: Record<string, string> = { ...metadata };
  delete meta[CRC_KEY];
  header.__metadata__ = meta;
  const list: [string, AnyTensor, StDType][] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    const dtype = t.dtype ?? "F32";
    const count = t.shape.reduce((p, s) => p * s, 1);
    const given = isCopy(t) ? t.from.shape.reduce((p, s) => p * s, 1) : t.data.length;
    if (count !== given)
      throw new Error(`safetensors: tensor ${name} has ${given} values for shape [${t.shape.join(", ")}]`);
    if (name in header) throw new Error(`safetensors: duplicate tensor name ${name}`);
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + count * BYTES[dtype]] };
    list.push([name, t, dtype]);
    offset += count * BYTES[dtype];
  }
  const headWith = (crcs: readonly number[]): Buffer => {
    meta[CRC_KEY] = JSON.stringify(Object.fromEntries(list.map(([n], i) => [n, crc32Hex(crcs[i] ?? 0)])));
    let json = JSON.stringify(header);
    while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
    const hbytes = Buffer.from(json, "utf8");
    const head = Buffer.alloc(8 + hbytes.length);
    head.writeBigUInt64LE(BigInt(hbytes.length), 0);
    hbytes.copy(head, 8);
    return head;
  };
  return { head: headWith([]), headWith, list, dataBytes: offset };
}

/**
 * Encodes values [from, to) of `d` as `dtype` into `out` from byte `at`. For F16/BF16, `bits` are
 * d's float32 bits (`bitsOf`).
 */
function encodeRange(
  out: Buffer,
  at: number,
  d: ArrayLike<number>,
  bits: Uint32Array | null,
  from: number,
  to: number,
  dtype: StDType,
): void {
  if (dtype === "F32") {
    if (LITTLE_ENDIAN && d instanceof Float32Array && (out.byteOffset + at) % 4 === 0)
      new Float32Array(out.buffer, out.byteOffset + at, to - from).set(d.subarray(from, to));
    else for (let i = from; i < to; i++, at += 4) out.writeFloatLE(d[i]!, at);
  } else if (dtype === "F64") for (let i = from; i < to; i++, at += 8) out.writeDoubleLE(d[i]!, at);
  else if (dtype === "BF16") {
    const b = bits!;
    if (LITTLE_ENDIAN && (out.byteOffset + at) % 2 === 0) {
      const h = new Uint16Array(out.buffer, out.byteOffset + at, to - from);
      for (let i = from; i < to; i++) h[i - from] = bf16FromBits(b[i]!);
    } else for (let i = from; i < to; i++, at += 2) out.writeUInt16LE(bf16FromBits(b[i]!), at);
  } else if (dtype === "F16") {
    const b = bits!;
    for (let i = from; i < to; i++, at += 2) out.writeUInt16LE(f16FromBits(b[i]!), at);
  } else for (let i = from; i < to; i++, at += 4) out.writeInt32LE(d[i]!, at);
}

const needsBits = (dtype: StDType): boolean => dtype === "BF16" || dtype === "F16";

/** Scratch of `copyChunks` when it re-encodes (kept between tensors). */
let copyValues: Float32Array | null = null;
let copyOut: Buffer | null = null;

/**
 * Calls fn with the bytes of a copied tensor written as `dtype`, in order, in chunks (reused
 * buffers): the file's own bytes when the dtypes agree (then returns their CRC-32), else each
 * chunk decoded to float32 and encoded as `dtype` (then returns null).
 */
function copyChunks(name: string, t: CopyTensor, dtype: StDType, fn: (bytes: Buffer) => void): number | null {
  const src = t.from;
  if (src.dtype === dtype) return src.readRaw((bytes) => fn(bytes));
  src.readRaw((bytes) => {
    const n = bytes.length / BYTES[src.dtype];
    if (!copyValues || copyValues.length < n) copyValues = new Float32Array(n);
    if (!copyOut || copyOut.length < n * BYTES[dtype]) copyOut = Buffer.allocUnsafeSlow(n * BYTES[dtype]);
    const values = copyValues;
    const out = copyOut;
    decodeInto(bytes, 0, n, src.dtype, values, 0, name, "the source file");
    const v = values.subarray(0, n);
    encodeRange(out, 0, v, needsBits(dtype) ? bitsOf(v) : null, 0, n, dtype);
    fn(out.subarray(0, n * BYTES[dtype]));
  });
  return null;
}

/** Serialises tensors (in the given order) and string metadata to a safetensors buffer. */
export function serializeSafetensors(
  tensors: Iterable<[string, AnyTensor]>,
  metadata: Record<string, string> = {},
  opts: WriteOptions = {},
): Buffer {
  const { head, headWith, list, dataBytes } = layout(tensors, metadata);
  const out = Buffer.alloc(head.length + dataBytes);
  let at = head.length;
  const crcs: number[] = [];
  for (const [index, [name, t, dtype]] of list.entries()) {
    const start = at;
    if (isCopy(t))
      copyChunks(name, t, dtype, (bytes) => {
        bytes.copy(out, at);
        at += bytes.length;
      });
    else {
      const d = t.data;
      encodeRange(out, at, d, needsBits(dtype) ? bitsOf(d) : null, 0, d.length, dtype);
      at += d.length * BYTES[dtype];
    }
    crcs.push(crc32(out.subarray(start, at)));
    opts.onTensor?.(name, index, list.length);
  }
  headWith(crcs).copy(out, 0);
  return out;
}

/**
 * Writes tensors (in the given order) and string metadata as a safetensors file, atomically and
 * durably (a temporary file in the same folder, fsync, rename, fsync of the folder). The bytes are
 * `serializeSafetensors`'s, but the data goes to the file through one CHUNK_BYTES buffer (tensors
 * packed into it, one write per full buffer) and the header, whose checksums are known only then,
 * is written last at the start of the file: the file is never held in memory whole.
 */
export function writeSafetensors(
  file: string,
  tensors: Iterable<[string, AnyTensor]>,
  metadata: Record<string, string> = {},
  opts: WriteOptions = {},
): void {
  const { head, headWith, list } = layout(tensors, metadata);
  const tmp = tempNameOf(file);
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      const chunk = Buffer.allocUnsafeSlow(CHUNK_BYTES);
      let fill = 0;
      let pos = head.length;
      const flush = (): void => {
        for (let done = 0; done < fill;) done += fs.writeSync(fd, chunk, done, fill - done, pos + done);
        pos += fill;
        fill = 0;
      };
      const crcs: number[] = [];
      for (const [index, [name, t, dtype]] of list.entries()) {
        if (isCopy(t)) {
          // Chunks that fit go into the buffer; larger ones are written as they come.
          const same = t.from.dtype === dtype; // then the bytes are the file's: its CRC is theirs
          let crc = 0;
          const raw = copyChunks(name, t, dtype, (bytes) => {
            if (!same) crc = crc32(bytes, crc);
            if (bytes.length <= CHUNK_BYTES - fill) {
              bytes.copy(chunk, fill);
              fill += bytes.length;
              return;
            }
            flush();
            for (let done = 0; done < bytes.length;)
              done += fs.writeSync(fd, bytes, done, bytes.length - done, pos + done);
            pos += bytes.length;
          });
          crcs.push(raw ?? crc);
          opts.onTensor?.(name, index, list.length);
          continue;
        }
        const d = t.data;
        const size = BYTES[dtype];
        const bits = needsBits(dtype) ? bitsOf(d) : null;
        let crc = 0;
        for (let i = 0; i < d.length;) {
          let room = Math.floor((CHUNK_BYTES - fill) / size);
          if (room === 0) {
            flush();
            room = CHUNK_BYTES / size;
          }
          const j = Math.min(d.length, i + room);
          encodeRange(chunk, fill, d, bits, i, j, dtype);
          crc = crc32(chunk.subarray(fill, fill + (j - i) * size), crc);
          fill += (j - i) * size;
          i = j;
        }
        crcs.push(crc);
        opts.onTensor?.(name, index, list.length);
      }
      flush();
      const h = headWith(crcs);
      for (let done = 0; done < h.length;) done += fs.writeSync(fd, h, done, h.length - done, done);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncPath(path.dirname(file));
}

/** The shard index of a checkpoint folder without model.safetensors: file and weight_map. */
function shardIndex(dir: string): { index: string; map: Record<string, string> } {
  const index = path.join(dir, "model.safetensors.index.json");
  if (!fs.existsSync(index))
    throw new Error(`${dir}: neither model.safetensors nor model.safetensors.index.json found`);
  let map: Record<string, string>;
  try {
    map = (JSON.parse(fs.readFileSync(index, "utf8")) as { weight_map: Record<string, string> }).weight_map;
    if (!map || typeof map !== "object") throw new Error("no weight_map");
  } catch (e) {
    throw new Error(`${index}: not a valid shard index (${(e as Error).message})`, { cause: e });
  }
  for (const shard of new Set(Object.values(map)))
    if (!fs.existsSync(path.join(dir, shard)))
      throw new Error(`${index} points at ${shard}, which does not exist`);
  return { index, map };
}

/**
 * Reads a checkpoint folder's weights: model.safetensors, or the shards listed by
 * model.safetensors.index.json (every shard must exist; every listed tensor must be found).
 */
export function readCheckpointWeights(dir: string, opts: ReadOptions = {}): StFile {
  const single = path.join(dir, "model.safetensors");
  if (fs.existsSync(single)) return readSafetensors(single, opts);
  const { index, map } = shardIndex(dir);
  const tensors = new Map<string, StTensor>();
  const metadata: Record<string, string> = {};
  for (const shard of new Set(Object.values(map))) {
    const part = readSafetensors(path.join(dir, shard), opts);
    for (const [k, v] of part.tensors) tensors.set(k, v);
    Object.assign(metadata, part.metadata);
  }
  for (const [name, shard] of Object.entries(map))
    if (!tensors.has(name))
      throw new Error(`${index} lists ${name} in ${shard}, but that shard does not contain it`);
  return { tensors, metadata };
}

/**
 * A checkpoint folder's tensors as `readCheckpointWeights` gives them, except that only the
 * headers are read now: each tensor's `data` is read from its file and decoded anew on EVERY
 * access (CHUNK_BYTES at a time), and nothing is kept. Read `data` once per use; holding the map
 * costs no memory. The files must not change while the map is in use. `opts.onTensor` is not called.
 */
export function openCheckpointWeights(dir: string, opts: ReadOptions = {}): Map<string, FileTensor> {
  const single = path.join(dir, "model.safetensors");
  const index = fs.existsSync(single) ? null : shardIndex(dir);
  const files = index ? [...new Set(Object.values(index.map))].map((f) => path.join(dir, f)) : [single];
  const out = new Map<string, FileTensor>();
  for (const file of files) {
    const { entries, dataStart } = readHeaderOf(file);
    const withFd = <T>(fn: (fd: number) => T): T => {
      const fd = openForReading(file);
      try {
        return fn(fd);
      } finally {
        fs.closeSync(fd);
      }
    };
    for (const e of entries)
      out.set(e.name, {
        dtype: e.dtype,
        shape: e.shape,
        get data(): Decoded {
          return withFd((fd) => readTensor(fd, file, e, dataStart, opts));
        },
        readInto(into: Float32Array | Float64Array): boolean {
          if (into.length < (e.end - e.begin) / BYTES[e.dtype])
            throw new Error(`internal: ${into.length} values cannot hold tensor ${e.name}`);
          const finite = { known: false };
          withFd((fd) => readTensor(fd, file, e, dataStart, opts, into, finite));
          return finite.known;
        },
        readRaw(fn: (bytes: Buffer, first: number) => void): number {
          return withFd((fd) => readChunks(fd, file, e, dataStart, opts, fn, true)!);
        },
      });
  }
  if (index)
    for (const [name, shard] of Object.entries(index.map))
      if (!out.has(name))
        throw new Error(`${index.index} lists ${name} in ${shard}, but that shard does not contain it`);
  return out;
}

/**
 * The tensors (names, dtypes, shapes) a checkpoint folder holds, from the header(s) only: what
 * `readCheckpointWeights` would return, without reading the data.
 */
export function readCheckpointHeader(dir: string): Map<string, StTensorInfo> {
  const single = path.join(dir, "model.safetensors");
  if (fs.existsSync(single)) return readSafetensorsHeader(single);
  const { index, map } = shardIndex(dir);
  const out = new Map<string, StTensorInfo>();
  for (const shard of new Set(Object.values(map)))
    for (const [k, v] of readSafetensorsHeader(path.join(dir, shard))) out.set(k, v);
  for (const [name, shard] of Object.entries(map))
    if (!out.has(name))
      throw new Error(`${index} lists ${name} in ${shard}, but that shard does not contain it`);
  return out;
}
