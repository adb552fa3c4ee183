/**
 * Durable file writes: the building blocks of the save protocol (src/train/checkpointing.ts).
 *
 *   writeFileDurable(file, data)  write + fsync the file (the name is not yet durable)
 *   writeFileAtomic(file, data)   `.<name>.tmp` beside it, fsync, rename over `file`, fsync the folder:
 *                                 a reader sees the old bytes or the new ones, never a mix, even
 *                                 after a crash or power loss; the temporary name is fixed so a
 *                                 leftover from a crash is replaced by the next write
 *                                 (`removeTempFiles` clears them)
 *   fsyncPath(p)                  fsync a file or a folder (a folder's fsync makes the names in it
 *                                 durable: created, renamed and removed entries)
 *   crc32(data, prev?)            CRC-32 (IEEE / zlib polynomial), as zlib.crc32 computes it
 *   crc32Hex(n)                   8 lowercase hex digits
 *   fileCrc32(file)               bytes and CRC-32 of a file, read in bounded chunks
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";

/** Bytes per read when checksumming a file. */
const CHUNK = 8 << 20;

const zcrc = (zlib as unknown as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;

let table: Uint32Array | null = null;
/** CRC-32 (IEEE 802.3, reflected 0xEDB88820), continuing from `prev` (0 to start). */
export function crc32(data: Uint8Array, prev = 0): number {
  if (zcrc) return zcrc(data, prev);
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let c = ~prev >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export const crc32Hex = (n: number): string => (n >>> 0).toString(16).padStart(8, "0");

/** The size and CRC-32 of a file. */
export function fileCrc32(file: string): { bytes: number; crc32: string } {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafeSlow(CHUNK);
    let crc = 0;
    let bytes = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, CHUNK, bytes);
      if (n === 0) break;
      crc = crc32(buf.subarray(0, n), crc);
      bytes += n;
    }
    return { bytes, crc32: crc32Hex(crc) };
  } finally {
    fs.closeSync(fd);
  }
}

/** fsync a file or a folder. */
export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes every byte of `data` to an open file descriptor. */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done);
}

/** Writes `file` and fsyncs it (its folder entry is not fsynced). */
export function writeFileDurable(file: string, data: Buffer | string): void {
  const fd = fs.openSync(file, "w");
  try {
    writeAll(fd, typeof data === "string" ? Buffer.from(data, "utf8") : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The temporary name `writeFileAtomic` uses for `file`. */
export const tempNameOf = (file: string): string =>
  path.join(path.dirname(file), `.${path.basename(file)}.tmp`);

/** Replaces `file` atomically and durably (temporary file, fsync, rename, fsync of the folder). */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const tmp = tempNameOf(file);
  try {
    writeFileDurable(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncPath(path.dirname(file));
}

/**
 * Removes temporary files that an interrupted `writeFileAtomic` (or an older attnres, which named
 * them `.<name>.<pid>.tmp`) left in `dir` for the files named in `names`. Returns their names.
 */
export function removeTempFiles(dir: string, names: readonly string[]): string[] {
  if (!fs.existsSync(dir)) return [];
  const gone: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true }))
    if (
      e.isFile() &&
      names.some(
        (n) =>
          e.name === `.${n}.tmp` || new RegExp(`^\\.${n.replace(/\./g, "\\.")}\\.\\d+\\.tmp$`).test(e.name),
      )
    ) {
      fs.rmSync(path.join(dir, e.name), { force: true });
      gone.push(e.name);
    }
  return gone;
}

/** The largest JSON file (config, tokenizer, state) read whole. */
export const MAX_JSON_BYTES = 256 * 2 ** 20;

/**
 * Reads a small file whole after checking it is a regular file of at most `maxBytes` (a FIFO
 * would block the read forever, /dev/zero would never end). Errors name the file.
 */
export function readRegularFile(file: string, maxBytes = MAX_JSON_BYTES): Buffer {
  const st = fs.statSync(file);
  if (!st.isFile()) throw new Error(`${file} is not a regular file`);
  if (st.size > maxBytes) throw new Error(`${file} has ${st.size} bytes, more than the ${maxBytes} expected`);
  return fs.readFileSync(file);
}
