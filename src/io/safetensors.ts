/**
 * safetensors reader and writer.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 *   { name: { dtype, shape, data_offsets: [begin, end] }, ..., "__metadata__": { str: str } }
 * then the data section; offsets are relative to its start.
 *
 * Reading: F32, F16, BF16 and F64 become Float32Array (or Float64Array for F64 when asked);
 * I32/I64 become Int32Array (I64 must fit). Every offset and size is checked against the file
 * before any byte is read, so a truncated or hostile file gives an error, never garbage.
 * Writing: F32, F64, I32; the header is padded to 8 bytes; files are written atomically
 * (temporary file + rename). Sharded checkpoints are read via model.safetensors.index.json.
 */
import * as fs from "node:fs";
import * as path from "node:path";

export type StDType = "F32" | "F16" | "BF16" | "F64" | "I32" | "I64";
const BYTES: Record<StDType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I32: 4, I64: 8 };

export interface StTensor {
  dtype: StDType;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array;
}

export interface StFile {
  tensors: Map<string, StTensor>;
  metadata: Record<string, string>;
}

export interface ReadOptions {
  /** Keep F64 tensors as Float64Array (default: converted to Float32Array). */
  keepF64?: boolean;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

function fail(file: string, msg: string): never {
  throw new Error(`${file}: not a valid safetensors file: ${msg}`);
}

/** Parses a safetensors buffer. `file` names the source in errors. */
export function parseSafetensors(buf: Buffer, file = "safetensors", opts: ReadOptions = {}): StFile {
  if (buf.length < 8) fail(file, `${buf.length} bytes is too short for the 8-byte header length`);
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(buf.length - 8)) fail(file, `header length ${n} exceeds the file size ${buf.length}`);
  const hlen = Number(n);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + hlen).toString("utf8")) as Record<string, unknown>;
  } catch (e) {
    fail(file, `header is not JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header))
    fail(file, "header is not an object");
  const dataStart = 8 + hlen;
  const dataLen = buf.length - dataStart;
  const tensors = new Map<string, StTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = (raw ?? {}) as Record<string, string>;
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = info?.dtype as StDType;
    if (!(dtype in BYTES)) fail(file, `tensor ${name} has unsupported dtype ${String(info?.dtype)}`);
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
    tensors.set(name, {
      dtype,
      shape: shape as number[],
      data: decode(buf, dataStart + begin, count, dtype, name, file, opts),
    });
  }
  return { tensors, metadata };
}

function decode(
  buf: Buffer,
  at: number,
  count: number,
  dtype: StDType,
  name: string,
  file: string,
  opts: ReadOptions,
): Float32Array | Float64Array | Int32Array {
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = buf.readFloatLE(at + 4 * i);
      return out;
    }
    case "F64": {
      const out = opts.keepF64 ? new Float64Array(count) : new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = buf.readDoubleLE(at + 8 * i);
      return out;
    }
    case "F16": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = f16ToF32(buf.readUInt16LE(at + 2 * i));
      return out;
    }
    case "BF16": {
      const out = new Float32Array(count);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) u[i] = buf.readUInt16LE(at + 2 * i) << 16;
      return out;
    }
    case "I32": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = buf.readInt32LE(at + 4 * i);
      return out;
    }
    case "I64": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const v = buf.readBigInt64LE(at + 8 * i);
        if (v > 2147483647n || v < -2147483648n)
          fail(file, `tensor ${name}: I64 value ${v} does not fit in int32`);
        out[i] = Number(v);
      }
      return out;
    }
  }
}

export function readSafetensors(file: string, opts: ReadOptions = {}): StFile {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      cause: e,
    });
  }
  return parseSafetensors(buf, file, opts);
}

export interface WriteTensor {
  dtype?: "F32" | "F64" | "I32";
  shape: readonly number[];
  data: ArrayLike<number>;
}

/** Serialises tensors (in the given order) and string metadata to a safetensors buffer. */
export function serializeSafetensors(
  tensors: Iterable<[string, WriteTensor]>,
  metadata: Record<string, string> = {},
): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const list: [string, WriteTensor, StDType][] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    const dtype = t.dtype ?? "F32";
    const count = t.shape.reduce((p, s) => p * s, 1);
    if (count !== t.data.length)
      throw new Error(
        `safetensors: tensor ${name} has ${t.data.length} values for shape [${t.shape.join(", ")}]`,
      );
    if (name in header) throw new Error(`safetensors: duplicate tensor name ${name}`);
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + count * BYTES[dtype]] };
    list.push([name, t, dtype]);
    offset += count * BYTES[dtype];
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const hbytes = Buffer.from(json, "utf8");
  const out = Buffer.alloc(8 + hbytes.length + offset);
  out.writeBigUInt64LE(BigInt(hbytes.length), 0);
  hbytes.copy(out, 8);
  let at = 8 + hbytes.length;
  for (const [, t, dtype] of list) {
    const d = t.data;
    if (dtype === "F32") for (let i = 0; i < d.length; i++, at += 4) out.writeFloatLE(d[i]!, at);
    else if (dtype === "F64") for (let i = 0; i < d.length; i++, at += 8) out.writeDoubleLE(d[i]!, at);
    else for (let i = 0; i < d.length; i++, at += 4) out.writeInt32LE(d[i]!, at);
  }
  return out;
}

/** Writes a file atomically: a temporary file in the same folder, then rename over the target. */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

export function writeSafetensors(
  file: string,
  tensors: Iterable<[string, WriteTensor]>,
  metadata: Record<string, string> = {},
): void {
  writeFileAtomic(file, serializeSafetensors(tensors, metadata));
}

/**
 * Reads a checkpoint folder's weights: model.safetensors, or the shards listed by
 * model.safetensors.index.json (every shard must exist; every listed tensor must be found).
 */
export function readCheckpointWeights(dir: string, opts: ReadOptions = {}): StFile {
  const single = path.join(dir, "model.safetensors");
  const index = path.join(dir, "model.safetensors.index.json");
  if (fs.existsSync(single)) return readSafetensors(single, opts);
  if (!fs.existsSync(index))
    throw new Error(`${dir}: neither model.safetensors nor model.safetensors.index.json found`);
  let map: Record<string, string>;
  try {
    map = (JSON.parse(fs.readFileSync(index, "utf8")) as { weight_map: Record<string, string> }).weight_map;
    if (!map || typeof map !== "object") throw new Error("no weight_map");
  } catch (e) {
    throw new Error(`${index}: not a valid shard index (${(e as Error).message})`, { cause: e });
  }
  const tensors = new Map<string, StTensor>();
  const metadata: Record<string, string> = {};
  for (const shard of new Set(Object.values(map))) {
    const f = path.join(dir, shard);
    if (!fs.existsSync(f)) throw new Error(`${index} points at ${shard}, which does not exist`);
    const part = readSafetensors(f, opts);
    for (const [k, v] of part.tensors) tensors.set(k, v);
    Object.assign(metadata, part.metadata);
  }
  for (const [name, shard] of Object.entries(map))
    if (!tensors.has(name))
      throw new Error(`${index} lists ${name} in ${shard}, but that shard does not contain it`);
  return { tensors, metadata };
}
