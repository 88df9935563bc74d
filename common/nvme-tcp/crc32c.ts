/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) for NVMe/TCP header and
 * data digests. Slicing-by-8: eight 256-entry tables let us fold 8 bytes per
 * step, which matters because every data byte of a digested connection goes
 * through here. Check value: crc32c("123456789") = 0xE3069283.
 *
 * Ranges of NATIVE_MIN_BYTES or more go to @node-rs/crc32 (SSE4.2 / ARMv8 CRC
 * instructions, prebuilt for the usual platforms): about 5-6 GB/s per core
 * here against 1.3 GB/s for the tables, and every replicated byte is hashed
 * on the agent (wire CRC) and on the hub (verify), so it is worth a native
 * dependency. Below that size the call overhead (~0.1 us) loses to the
 * tables. Where the prebuilt binary is missing the tables do all the work.
 */

const POLY = 0x82f63b78;

/** Smallest range handed to the native implementation. */
export const NATIVE_MIN_BYTES = 256;

type NativeCrc = (input: Buffer, initialState?: number) => number;

function loadNative(): NativeCrc | null {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require('@node-rs/crc32') as { crc32c: NativeCrc };
    const check = Buffer.from('123456789');
    return mod.crc32c(check) === 0xe3069283 && mod.crc32c(check.subarray(4), mod.crc32c(check.subarray(0, 4))) === 0xe3069283
      ? mod.crc32c
      : null;
  } catch {
    return null;
  }
}

const NATIVE: NativeCrc | null = process.env.BLOCKREP_CRC32C_JS === '1' ? null : loadNative();

/** Which implementation handles large ranges ('native' or 'js'). */
export const CRC32C_IMPLEMENTATION: 'native' | 'js' = NATIVE ? 'native' : 'js';

/** TABLES[k * 256 + b]: CRC of byte b followed by k zero bytes. */
const TABLES = buildTables();

function buildTables(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + n] = c;
    }
  }
  return t;
}

/**
 * CRC32C of data[start, end). `previous` chains calls: crc32c(b, crc32c(a))
 * equals crc32c(a followed by b).
 */
export function crc32c(data: Uint8Array, previous = 0, start = 0, end = data.length): number {
  if (NATIVE !== null && end - start >= NATIVE_MIN_BYTES) {
    const view = Buffer.isBuffer(data) && start === 0 && end === data.length ? data : Buffer.from(data.buffer, data.byteOffset + start, end - start);
    return NATIVE(view, previous >>> 0) >>> 0;
  }
  return crc32cTables(data, previous, start, end);
}

/** The table implementation (exported for tests that compare both). */
export function crc32cTables(data: Uint8Array, previous = 0, start = 0, end = data.length): number {
  const t = TABLES;
  let crc = ~previous;
  let i = start;
  // fold 8 bytes per step
  for (; i + 8 <= end; i += 8) {
    crc ^= data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    const hi = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    crc =
      t[1792 + (crc & 0xff)]! ^
      t[1536 + ((crc >>> 8) & 0xff)]! ^
      t[1280 + ((crc >>> 16) & 0xff)]! ^
      t[1024 + (crc >>> 24)]! ^
      t[768 + (hi & 0xff)]! ^
      t[512 + ((hi >>> 8) & 0xff)]! ^
      t[256 + ((hi >>> 16) & 0xff)]! ^
      t[hi >>> 24]!;
  }
  for (; i < end; i++) crc = t[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** CRC32C over several buffers as if they were one. */
export function crc32cOf(parts: readonly Uint8Array[]): number {
  let crc = 0;
  for (const p of parts) crc = crc32c(p, crc);
  return crc;
}
