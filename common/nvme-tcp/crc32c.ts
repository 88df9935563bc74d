/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) for NVMe/TCP header and
 * data digests. Slicing-by-8: eight 256-entry tables let us fold 8 bytes per
 * step, which matters because every data byte of a digested connection goes
 * through here. Check value: crc32c("123456789") = 0xE3069283.
 */

const POLY = 0x82f63b78;

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
