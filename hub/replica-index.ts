/**
 * ReplicaIndex: in-memory map region -> versions (the journal records that
 * touched the region and are not yet applied to the base image), plus the pure
 * read planner (RecoverPoint's "virtual access").
 *
 * Invariants:
 *  - records are added in journal order (strictly increasing position), so
 *    each region's version list is sorted by position;
 *  - a record spanning several regions is listed in each (same id);
 *  - dropThrough(p) removes exactly the records with position <= p, which the
 *    caller has applied to the base image first.
 * planRead(at, offset, length) answers "what does the volume hold at journal
 * position `at`": for each byte, the newest record at or before `at` that
 * covers it, else the base image. It walks versions newest-first and stops as
 * soon as the range is covered, so repeated overwrites cost O(1) per read.
 */
import { ReplError } from '../common/errors';

export type MutationKind = 'data' | 'zeroes' | 'trim';

export interface IndexedRecord {
  position: number;
  kind: MutationKind;
  offset: number;
  length: number;
  /** Absolute byte position of the payload in its segment (data records). */
  dataOffset: number;
}

export type ReadPiece =
  | { source: 'base'; offset: number; length: number }
  | { source: 'zero'; offset: number; length: number }
  | { source: 'record'; offset: number; length: number; record: IndexedRecord; skip: number };

type Interval = [number, number];

/**
 * Columns of the records in journal order: typed arrays, not one object per
 * record, so the garbage collector never traces them. A hub whose journal
 * holds 8 GiB of 4 KiB writes indexes ~2M records; as objects they took 222 MB
 * of heap and ~218 ms per full GC (every major GC walks them); as columns the
 * heap holds 23 MB (the region lists) and the ~66 MB of columns lie outside
 * it, a full GC takes ~10 ms. Region lists hold record ids (plain numbers,
 * which V8 stores unboxed); id - base is the row.
 */
const MIN_ROWS = 1024;

class RecordColumns {
  private cap = MIN_ROWS;
  position = new Float64Array(this.cap);
  offset = new Float64Array(this.cap);
  length = new Float64Array(this.cap);
  dataOffset = new Float64Array(this.cap);
  kind = new Uint8Array(this.cap);
  /** Id of row 0. */
  base = 0;
  /** Rows in use: [head, rows). */
  head = 0;
  rows = 0;

  push(r: IndexedRecord): number {
    if (this.rows === this.cap) this.resize(this.head * 2 >= this.cap ? this.cap : this.cap * 2);
    const i = this.rows++;
    this.position[i] = r.position;
    this.offset[i] = r.offset;
    this.length[i] = r.length;
    this.dataOffset[i] = r.dataOffset;
    this.kind[i] = KIND_CODE[r.kind];
    return this.base + i;
  }

  /**
   * Drops the oldest row. Compacts when the dropped part outgrows the live
   * part, and gives memory back once the live part fits in a quarter (after a
   * burst has been applied).
   */
  shift(): void {
    this.head++;
    const live = this.rows - this.head;
    if (live === 0) this.resize(MIN_ROWS);
    else if (this.head > 1024 && this.head * 2 > this.rows) {
      this.resize(this.cap > MIN_ROWS && live * 4 < this.cap ? Math.max(MIN_ROWS, this.cap / 2) : this.cap);
    }
  }

  record(id: number): IndexedRecord {
    const i = id - this.base;
    return {
      position: this.position[i]!,
      kind: KINDS[this.kind[i]!]!,
      offset: this.offset[i]!,
      length: this.length[i]!,
      dataOffset: this.dataOffset[i]!,
    };
  }

  /** Moves the live rows to the start of new columns of `cap` rows. */
  private resize(cap: number): void {
    const move = (a: Float64Array): Float64Array<ArrayBuffer> => {
      const b = new Float64Array(cap);
      b.set(a.subarray(this.head, this.rows));
      return b;
    };
    this.position = move(this.position);
    this.offset = move(this.offset);
    this.length = move(this.length);
    this.dataOffset = move(this.dataOffset);
    const k = new Uint8Array(cap);
    k.set(this.kind.subarray(this.head, this.rows));
    this.kind = k;
    this.base += this.head;
    this.rows -= this.head;
    this.head = 0;
    this.cap = cap;
  }
}

const KINDS: readonly MutationKind[] = ['data', 'zeroes', 'trim'];
const KIND_CODE: Record<MutationKind, number> = { data: 0, zeroes: 1, trim: 2 };

export class ReplicaIndex {
  /** region number -> ids of the records touching it, in journal order. */
  private readonly regions = new Map<number, number[]>();
  private readonly cols = new RecordColumns();
  private lastPosition = -1;

  constructor(readonly regionSize: number) {
    if (regionSize <= 0 || (regionSize & (regionSize - 1)) !== 0) {
      throw ReplError.invalid(`region size ${regionSize} is not a power of two`);
    }
  }

  get recordCount(): number {
    return this.cols.rows - this.cols.head;
  }

  add(record: IndexedRecord): void {
    if (record.position <= this.lastPosition) {
      throw ReplError.internal(`index: position ${record.position} not after ${this.lastPosition}`);
    }
    this.lastPosition = record.position;
    if (record.length === 0) return;
    const id = this.cols.push(record);
    const last = Math.floor((record.offset + record.length - 1) / this.regionSize);
    for (let r = Math.floor(record.offset / this.regionSize); r <= last; r++) {
      let list = this.regions.get(r);
      if (!list) this.regions.set(r, (list = []));
      list.push(id);
    }
  }

  /** Records with position <= `position`, in journal order. */
  recordsThrough(position: number): IndexedRecord[] {
    const c = this.cols;
    const out: IndexedRecord[] = [];
    for (let i = c.head; i < c.rows && c.position[i]! <= position; i++) out.push(c.record(c.base + i));
    return out;
  }

  /** Forgets every record with position <= `position` (already applied to the base). */
  dropThrough(position: number): void {
    const c = this.cols;
    while (c.head < c.rows && c.position[c.head]! <= position) {
      const offset = c.offset[c.head]!;
      const last = Math.floor((offset + c.length[c.head]! - 1) / this.regionSize);
      for (let r = Math.floor(offset / this.regionSize); r <= last; r++) {
        const list = this.regions.get(r)!;
        list.shift();
        if (list.length === 0) this.regions.delete(r);
      }
      c.shift();
    }
  }

  /** Plans a read of [offset, offset+length) as of journal position `at`; pieces are sorted and cover the range. */
  planRead(at: number, offset: number, length: number): ReadPiece[] {
    const pieces: ReadPiece[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const region = Math.floor(pos / this.regionSize);
      const regionEnd = Math.min(end, (region + 1) * this.regionSize);
      this.planRegion(this.regions.get(region), at, pos, regionEnd, pieces);
      pos = regionEnd;
    }
    return merge(pieces.sort((a, b) => a.offset - b.offset));
  }

  private planRegion(list: number[] | undefined, at: number, start: number, end: number, out: ReadPiece[]): void {
    const c = this.cols;
    let uncovered: Interval[] = [[start, end]];
    if (list) {
      for (let i = lastAtOrBefore(list, (id) => c.position[id - c.base]!, at); i >= 0 && uncovered.length > 0; i--) {
        const row = list[i]! - c.base;
        const recOffset = c.offset[row]!;
        const recEnd = recOffset + c.length[row]!;
        const isData = c.kind[row] === KIND_CODE.data;
        let rec: IndexedRecord | null = null;
        const next: Interval[] = [];
        for (const [a, b] of uncovered) {
          const lo = Math.max(a, recOffset);
          const hi = Math.min(b, recEnd);
          if (lo >= hi) {
            next.push([a, b]);
            continue;
          }
          if (isData) {
            rec ??= c.record(list[i]!);
            out.push({ source: 'record', offset: lo, length: hi - lo, record: rec, skip: lo - recOffset });
          } else out.push({ source: 'zero', offset: lo, length: hi - lo });
          if (a < lo) next.push([a, lo]);
          if (hi < b) next.push([hi, b]);
        }
        uncovered = next;
      }
    }
    for (const [a, b] of uncovered) out.push({ source: 'base', offset: a, length: b - a });
  }
}

/** Index of the newest entry with position <= at, or -1 (entries sorted by position). */
function lastAtOrBefore(list: readonly number[], positionOf: (id: number) => number, at: number): number {
  let lo = 0;
  let hi = list.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (positionOf(list[mid]!) <= at) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/** Joins neighbouring pieces that continue each other (same source, contiguous payload). */
function merge(pieces: ReadPiece[]): ReadPiece[] {
  const out: ReadPiece[] = [];
  for (const p of pieces) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === p.offset && last.source === p.source) {
      if (p.source !== 'record') {
        last.length += p.length;
        continue;
      }
      const l = last as Extract<ReadPiece, { source: 'record' }>;
      if (l.record.position === p.record.position && l.skip + l.length === p.skip) {
        l.length += p.length;
        continue;
      }
    }
    out.push({ ...p });
  }
  return out;
}
