/**
 * Sizing of libuv's thread pool, which runs every fs callback/promise call,
 * dns.lookup, zlib and async crypto of the process.
 *
 * libuv reads UV_THREADPOOL_SIZE once, when the first job is queued, so
 * configureThreadPool() must run first thing in a CLI entry, before anything
 * touches fs asynchronously (a later call changes nothing and says so).
 *
 * Why 16 and not libuv's 4: FileDevice does page-cache I/O inline on the
 * event loop, so the pool carries the blocking work: fdatasync (flush, FUA,
 * bitmap and journal commits), large transfers, and all I/O while a slow disk
 * has pushed FileDevice into thread-pool mode. Four fsyncs in flight would
 * otherwise occupy the whole pool and stall every other fs call, and a disk
 * in pool mode needs queue depth. Idle threads cost a stack each and nothing
 * else; 16 matches nbdkit's default thread count.
 */

export const DEFAULT_THREADPOOL_SIZE = 16;
/** libuv's own upper bound. */
const MAX_THREADPOOL_SIZE = 1024;

export interface ThreadPoolConfig {
  size: number;
  /** 'env': the operator's UV_THREADPOOL_SIZE was kept. */
  source: 'env' | 'default';
}

/**
 * Sets UV_THREADPOOL_SIZE unless the operator already set a valid value.
 * Call before any asynchronous fs/dns/zlib/crypto work in the process.
 */
export function configureThreadPool(
  size: number = DEFAULT_THREADPOOL_SIZE,
  env: NodeJS.ProcessEnv = process.env,
): ThreadPoolConfig {
  const given = Number(env.UV_THREADPOOL_SIZE);
  if (env.UV_THREADPOOL_SIZE !== undefined && Number.isInteger(given) && given >= 1) {
    return { size: Math.min(given, MAX_THREADPOOL_SIZE), source: 'env' };
  }
  const chosen = Math.max(1, Math.min(Math.floor(size), MAX_THREADPOOL_SIZE));
  env.UV_THREADPOOL_SIZE = String(chosen);
  return { size: chosen, source: 'default' };
}
