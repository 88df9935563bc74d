/**
 * The hub's recovery control API (recovery-api.md), registered on the hub's
 * HTTP server through hub.route(). Handlers only validate input and translate
 * to ViewManager / VolumeRegistry / LagHistory calls; errors are ReplErrors
 * that server.ts maps to HTTP (404 E_NOT_FOUND, 400 E_INVALID, 409 E_BUSY,
 * 416 E_RANGE).
 *
 * Checksums (GET /v1/views/ID/checksums): sha256 per region of
 * max(1 MiB, the volume's regionSize) bytes, the last region short, computed
 * by reading the view's BlockDevice (overlay or read-only base) directly, not
 * through an export. Reads stream through a few regions at a time (at most
 * CHECKSUM_PARALLEL x 4 MiB in memory), never the whole volume. All-zero
 * regions (the common case of sparse volumes) get the cached digest of
 * zeroes instead of being hashed: skipped without reading when the device's
 * extents() says the region reads as zeroes, else recognised by a memcmp.
 */
import { createHash } from 'node:crypto';
import type * as http from 'node:http';
import { BlockDevice } from '../common/block/device';
import { ReplError } from '../common/errors';
import { LagHistory } from './lag-history';
import { RouteHandler, RouteResult } from './server';
import { parsePointSelector, pointJson } from './view-record';
import { ViewManager } from './views';
import { VolumeRegistry } from './volumes';

export const CHECKSUM_MIN_REGION = 1024 * 1024;
const CHECKSUM_CHUNK = 4 * 1024 * 1024;
const CHECKSUM_PARALLEL = 4;

export interface RecoveryApiDeps {
  volumes: VolumeRegistry;
  views: ViewManager;
  lag: LagHistory;
}

type Router = { route(method: string, pattern: RegExp, handler: RouteHandler): void };

const ok = (body: unknown, status = 200): RouteResult => ({ status, body });

function param(m: RegExpMatchArray, i = 1): string {
  try {
    return decodeURIComponent(m[i]!);
  } catch {
    throw ReplError.invalid('malformed percent-encoding in path');
  }
}

function object(body: unknown): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw ReplError.invalid('request body must be a JSON object');
  return body as Record<string, unknown>;
}

function optionalBoolean(body: Record<string, unknown>, key: string): boolean {
  const v = body[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw ReplError.invalid(`${key} must be a boolean`);
  return v;
}

function query(req: http.IncomingMessage): URLSearchParams {
  return new URL(req.url ?? '/', 'http://hub').searchParams;
}

export function registerRecoveryRoutes(router: Router, deps: RecoveryApiDeps): void {
  const { volumes, views, lag } = deps;
  const requireVolume = (name: string): void => {
    if (!volumes.store(name)) throw new ReplError('E_NOT_FOUND', `unknown volume ${name}`);
  };

  router.route('GET', /^\/v1\/volumes\/([^/]+)\/points$/, (_req, m) => {
    const name = param(m);
    const store = volumes.store(name);
    if (!store) throw new ReplError('E_NOT_FOUND', `unknown volume ${name}`);
    return ok({ volume: name, points: store.points().map(pointJson) });
  });

  router.route('GET', /^\/v1\/volumes\/([^/]+)\/lag-history$/, (_req, m) => {
    const name = param(m);
    requireVolume(name);
    return ok({ volume: name, samples: lag.samplesJson(name) });
  });

  router.route('POST', /^\/v1\/volumes\/([^/]+)\/failover$/, async (_req, m, body) => {
    const name = param(m);
    requireVolume(name);
    const view = await views.failover(name, parsePointSelector(object(body).at));
    return ok({ view, volume: volumes.status(name) }, 201);
  });

  router.route('GET', /^\/v1\/views$/, (req) => {
    const volume = query(req).get('volume') ?? undefined;
    if (volume !== undefined) requireVolume(volume);
    return ok({ views: views.list(volume) });
  });

  router.route('POST', /^\/v1\/views$/, async (_req, _m, raw) => {
    const body = object(raw);
    const { volume, kind } = body;
    if (typeof volume !== 'string' || volume.length === 0) throw ReplError.invalid('volume (string) is required');
    if (kind !== undefined && kind !== 'test') {
      throw ReplError.invalid(`kind must be 'test' (failover views come from POST /v1/volumes/NAME/failover)`);
    }
    const selector = parsePointSelector(body.at);
    const readOnly = optionalBoolean(body, 'readOnly');
    requireVolume(volume);
    return ok(await views.create(volume, selector, readOnly), 201);
  });

  router.route('GET', /^\/v1\/views\/([^/]+)$/, (_req, m) => ok(views.get(param(m))));

  router.route('DELETE', /^\/v1\/views\/([^/]+)$/, async (_req, m) => ok(await views.discard(param(m))));

  router.route('GET', /^\/v1\/views\/([^/]+)\/checksums$/, async (_req, m) => {
    const id = param(m);
    const device = views.device(id);
    const regionSize = Math.max(CHECKSUM_MIN_REGION, views.regionSizeOf(id));
    const regions = await regionChecksums(device, regionSize);
    return ok({ id, regionSize, size: device.info.size, algorithm: 'sha256', regions });
  });
}

/** sha256 (hex) of each `regionSize` region of the device, in order (see the file header). */
export async function regionChecksums(device: BlockDevice, regionSize: number): Promise<string[]> {
  if (!Number.isSafeInteger(regionSize) || regionSize <= 0) throw ReplError.invalid(`region size ${regionSize}`);
  const size = device.info.size;
  const count = Math.ceil(size / regionSize);
  const out = new Array<string>(count);
  const zeroes = Buffer.alloc(Math.min(CHECKSUM_CHUNK, regionSize));
  const zeroDigests = new Map<number, string>();
  const feedZeroes = (hash: ReturnType<typeof createHash>, length: number): void => {
    for (let done = 0; done < length; done += zeroes.length) hash.update(zeroes.subarray(0, Math.min(zeroes.length, length - done)));
  };
  const zeroDigest = (length: number): string => {
    let d = zeroDigests.get(length);
    if (!d) {
      const h = createHash('sha256');
      feedZeroes(h, length);
      zeroDigests.set(length, (d = h.digest('hex')));
    }
    return d;
  };
  const knownZero = async (offset: number, length: number): Promise<boolean> => {
    if (!device.extents) return false;
    const ext = await device.extents(offset, length);
    const covered = ext.reduce((n, e) => n + (e.zero ? e.length : 0), 0);
    return covered === length && ext.every((e) => e.zero);
  };
  const hashRegion = async (offset: number, length: number): Promise<string> => {
    if (await knownZero(offset, length)) return zeroDigest(length);
    const hash = createHash('sha256');
    let zeroPrefix = 0; // leading all-zero bytes read but not hashed yet
    for (let done = 0; done < length; ) {
      const n = Math.min(CHECKSUM_CHUNK, length - done);
      const buf = await device.read(offset + done, n);
      if (zeroPrefix === done && buf.equals(zeroes.subarray(0, n))) zeroPrefix += n;
      else {
        if (zeroPrefix === done && zeroPrefix > 0) feedZeroes(hash, zeroPrefix);
        hash.update(buf);
      }
      done += n;
    }
    return zeroPrefix === length ? zeroDigest(length) : hash.digest('hex');
  };
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < count; i = next++) {
      const offset = i * regionSize;
      out[i] = await hashRegion(offset, Math.min(regionSize, size - offset));
    }
  };
  await Promise.all(Array.from({ length: Math.min(CHECKSUM_PARALLEL, count) }, worker));
  return out;
}
