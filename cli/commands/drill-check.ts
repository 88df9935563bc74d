/**
 * The two ways a drill checks a recovery view:
 *  - runShellCheck: the operator's command (`sh -c COMMAND`) with the view's
 *    coordinates in REP_* environment variables; passes on exit status 0;
 *  - verifyOverNbd: reads the whole view through its NBD export and compares
 *    a sha256 per region with what the hub computed from the view's
 *    BlockDevice directly (GET /v1/views/ID/checksums). This proves the export
 *    path serves exactly the recovery point.
 * Both stop promptly when the drill is aborted (Ctrl-C): the shell's process
 * group is killed, the NBD read loop stops at the next region.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { ReplError } from '../../common/errors';
import { NbdClient, NbdConnectOptions } from '../../common/nbd/client';
import { ChecksumsJson, ViewJson } from './recovery-api';

const OUTPUT_TAIL_BYTES = 8192;
const READ_CHUNK = 4 * 1024 * 1024;
const PARALLEL_REGIONS = 4;
const MAX_LISTED_MISMATCHES = 100;

export interface CommandResult {
  exitCode: number | null;
  signal: string | null;
  /** Last bytes of stdout+stderr, for the report. */
  outputTail: string;
}

export type CommandRunner = (command: string, env: Record<string, string>, signal: AbortSignal) => Promise<CommandResult>;

export interface ChecksumResult {
  regionSize: number;
  regions: number;
  bytes: number;
  /** Indices of mismatching regions (at most 100 listed). */
  mismatches: number[];
  mismatchCount: number;
  detail: string | null;
}

export type ViewVerifier = (view: ViewJson, checksums: ChecksumsJson, signal: AbortSignal) => Promise<ChecksumResult>;

/** The environment a check command sees. */
export function checkEnv(view: ViewJson): Record<string, string> {
  return {
    REP_VIEW_ID: view.id,
    REP_VOLUME: view.volume,
    REP_POINT_EPOCH: String(view.point.epoch),
    REP_POINT_TIME: view.point.time,
    REP_NBD_URI: view.nbd?.uri ?? '',
    REP_NBD_HOST: view.nbd?.host ?? '',
    REP_NBD_PORT: view.nbd ? String(view.nbd.port) : '',
    REP_NBD_EXPORT: view.nbd?.export ?? '',
    REP_NVME_TRADDR: view.nvme?.traddr ?? '',
    REP_NVME_TRSVCID: view.nvme?.trsvcid ?? '',
    REP_NVME_NQN: view.nvme?.nqn ?? '',
  };
}

/** Runs `sh -c command` in its own process group; `onOutput` sees its output as it comes. */
export function shellRunner(onOutput: (chunk: Buffer) => void = () => undefined): CommandRunner {
  return (command, env, signal) =>
    new Promise((resolve, reject) => {
      const child = spawn('sh', ['-c', command], {
        env: { ...process.env, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true, // own process group: abort kills the command's children too
      });
      let tail = Buffer.alloc(0);
      const collect = (chunk: Buffer): void => {
        onOutput(chunk);
        tail = Buffer.concat([tail, chunk]);
        if (tail.length > OUTPUT_TAIL_BYTES) tail = tail.subarray(tail.length - OUTPUT_TAIL_BYTES);
      };
      child.stdout.on('data', collect);
      child.stderr.on('data', collect);
      let killTimer: NodeJS.Timeout | null = null;
      const kill = (sig: NodeJS.Signals): void => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, sig);
        } catch {
          // already gone
        }
      };
      const onAbort = (): void => {
        kill('SIGTERM');
        killTimer = setTimeout(() => kill('SIGKILL'), 5000);
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      child.once('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(new ReplError('E_IO', `cannot run check command: ${err.message}`, { cause: err }));
      });
      child.once('close', (code, sig) => {
        signal.removeEventListener('abort', onAbort);
        if (killTimer) clearTimeout(killTimer);
        resolve({ exitCode: code, signal: sig, outputTail: tail.toString('utf8') });
      });
    });
}

async function hashRegion(client: NbdClient, offset: number, length: number): Promise<string> {
  const hash = createHash('sha256');
  const chunk = Math.max(4096, Math.min(READ_CHUNK, client.maxPayload || READ_CHUNK));
  for (let done = 0; done < length; ) {
    const n = Math.min(chunk, length - done);
    hash.update(await client.read(offset + done, n));
    done += n;
  }
  return hash.digest('hex');
}

/**
 * Reads every region of the view over NBD and compares it with the hub's
 * checksums; `onProgress(doneBytes, totalBytes)` is called at most every
 * progressMs while reading.
 */
export function nbdVerifier(
  connect: (o: NbdConnectOptions) => Promise<NbdClient> = (o) => NbdClient.connect(o),
  onProgress?: (doneBytes: number, totalBytes: number) => void,
  progressMs = 5000,
): ViewVerifier {
  return async (view, checksums, signal) => {
    if (!view.nbd) throw ReplError.invalid(`view ${view.id} has no NBD export; give a --check command instead`);
    const client = await connect({ host: view.nbd.host, port: view.nbd.port, exportName: view.nbd.export });
    const { regionSize, size } = checksums;
    const result: ChecksumResult = { regionSize, regions: checksums.regions.length, bytes: 0, mismatches: [], mismatchCount: 0, detail: null };
    try {
      if (client.size !== size) {
        result.detail = `NBD export is ${client.size} bytes, the hub's view is ${size}`;
        result.mismatchCount = result.regions;
        return result;
      }
      let next = 0;
      let lastReport = Date.now();
      const worker = async (): Promise<void> => {
        for (let i = next++; i < checksums.regions.length; i = next++) {
          if (signal.aborted) return;
          const offset = i * regionSize;
          const length = Math.min(regionSize, size - offset);
          const digest = await hashRegion(client, offset, length);
          result.bytes += length;
          if (onProgress && Date.now() - lastReport >= progressMs) {
            lastReport = Date.now();
            onProgress(result.bytes, size);
          }
          if (digest !== checksums.regions[i]?.toLowerCase()) {
            result.mismatchCount++;
            if (result.mismatches.length < MAX_LISTED_MISMATCHES) result.mismatches.push(i);
          }
        }
      };
      await Promise.all(Array.from({ length: PARALLEL_REGIONS }, worker));
      result.mismatches.sort((a, b) => a - b);
      if (result.mismatchCount > 0) {
        result.detail = `${result.mismatchCount} of ${result.regions} regions differ (first: region ${result.mismatches[0]})`;
      }
      return result;
    } finally {
      await client.close();
    }
  };
}
