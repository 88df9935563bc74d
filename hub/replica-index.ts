/**
 * ReplicaIndex: in-memory map region -> versions (the journal records that
 * touched the region and are not yet applied to the base image), plus the pure
 * read planner (RecoverPoint's "virtual access").
 *
 * Invariants:
 *  - records are added in journal order (strictly increasing position), so
 *    each region's version list is sorted by position;
 *  - a record spanning several regions is listed in each (same object);
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

export class ReplicaIndex {
  /** region number -> versions in journal order. */
  private readonly regions = new Map<number, IndexedRecord[]>();
  /** Every indexed record in journal order (for dropThrough). */
  private readonly fifo: IndexedRecord[] = [];
  private head = 0;
  private lastPosition = -1;

  constructor(readonly regionSize: number) {
    if (regionSize <= 0 || (regionSize & (regionSize - 1)) !== 0) {
      throw ReplError.invalid(`region size ${regionSize} is not a power of two`);
    }
  }

  get recordCount(): number {
    return this.fifo.length - this.head;
  }

  add(record: IndexedRecord): void {
    if (record.position <= this.lastPosition) {
      throw ReplError.internal(`index: position ${record.position} not after ${this.lastPosition}`);
    }
    this.lastPosition = record.position;
    if (record.length === 0) return;
    this.fifo.push(record);
    const last = Math.floor((record.offset + record.length - 1) / this.regionSize);
    for (let r = Math.floor(record.offset / this.regionSize); r <= last; r++) {
      let list = this.regions.get(r);
      if (!list) this.regions.set(r, (list = []));
      list.push(record);
    }
  }

  /** Records with position <= `position`, in journal order. */
  recordsThrough(position: number): IndexedRecord[] {
    const out: IndexedRecord[] = [];
    for (let i = this.head; i < this.fifo.length && this.fifo[i]!.position <= position; i++) out.push(this.fifo[i]!);
    return out;
  }

  /** Forgets every record with position <= `position` (already applied to the base). */
  dropThrough(position: number): void {
    while (this.head < this.fifo.length && this.fifo[this.head]!.position <= position) {
      const rec = this.fifo[this.head++]!;
      const last = Math.floor((rec.offset + rec.length - 1) / this.regionSize);
      for (let r = Math.floor(rec.offset / this.regionSize); r <= last; r++) {
        const list = this.regions.get(r)!;
        list.shift();
        if (list.length === 0) this.regions.delete(r);
      }
    }
    if (this.head > 1024 && this.head * 2 > this.fifo.length) {
      this.fifo.splice(0, this.head);
      this.head = 0;
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

  private planRegion(list: IndexedRecord[] | undefined, at: number, start: number, end: number, out: ReadPiece[]): void {
    let uncovered: Interval[] = [[start, end]];
    if (list) {
      for (let i = lastAtOrBefore(list, at); i >= 0 && uncovered.length > 0; i--) {
        const rec = list[i]!;
        const next: Interval[] = [];
        for (const [a, b] of uncovered) {
          const lo = Math.max(a, rec.offset);
          const hi = Math.min(b, rec.offset + rec.length);
          if (lo >= hi) {
            next.push([a, b]);
            continue;
          }
          out.push(
            rec.kind === 'data'
              ? { source: 'record', offset: lo, length: hi - lo, record: rec, skip: lo - rec.offset }
              : { source: 'zero', offset: lo, length: hi - lo },
          );
          if (a < lo) next.push([a, lo]);
          if (hi < b) next.push([hi, b]);
        }
        uncovered = next;
      }
    }
    for (const [a, b] of uncovered) out.push({ source: 'base', offset: a, length: b - a });
  }
}

/** Index of the newest entry with position <= at, or -1. */
function lastAtOrBefore(list: IndexedRecord[], at: number): number {
  let lo = 0;
  let hi = list.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid]!.position <= at) {
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
      if (l.record === p.record && l.skip + l.length === p.skip) {
        l.length += p.length;
        continue;
      }
    }
    out.push({ ...p });
  }
  return out;
}
