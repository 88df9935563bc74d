/**
 * Option parsing helpers shared by the three commands: pure functions that
 * turn argv strings into typed values or throw ReplError('E_USAGE') with a
 * message that says what was expected.
 */
import { ReplError } from '../common/errors';
import { parseSize } from '../common/size';

export interface Endpoint {
  host: string;
  port: number;
}

/** "HOST:PORT", ":PORT", "[v6]:PORT" or "off" (null). */
export function parseListen(text: string, option: string): Endpoint | null {
  if (text === 'off') return null;
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new ReplError('E_USAGE', `${option}: expected HOST:PORT or 'off', got '${text}'`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export interface VolumeSpec {
  name: string;
  path: string;
  size?: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** "NAME=PATH[:SIZE]"; SIZE accepts K/M/G/T suffixes (powers of 1024). */
export function parseVolume(text: string): VolumeSpec {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new ReplError('E_USAGE', `--volume: expected NAME=PATH[:SIZE], got '${text}'`);
  const name = text.slice(0, eq);
  if (!NAME_RE.test(name)) {
    throw new ReplError('E_USAGE', `--volume: invalid name '${name}' (letters, digits, '.', '_', '-'; max 64)`);
  }
  let file = text.slice(eq + 1);
  let size: number | undefined;
  const colon = file.lastIndexOf(':');
  if (colon > 0) {
    size = parseSize(file.slice(colon + 1));
    file = file.slice(0, colon);
    if (size <= 0) throw new ReplError('E_USAGE', `--volume ${name}: size must be positive`);
  }
  if (!file) throw new ReplError('E_USAGE', `--volume ${name}: missing PATH`);
  return { name, path: file, size };
}

/**
 * Accepts ws://, wss://, http:// and https:// hub URLs (any path is ignored);
 * returns the HTTP base for the control API and the agents' stream endpoint.
 */
export function parseHubUrl(text: string): { ws: string; http: string; replicate: string } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ReplError('E_USAGE', `--hub: '${text}' is not a URL (expected ws://HOST:PORT)`);
  }
  const scheme = url.protocol.replace(/:$/, '');
  const secure = scheme === 'wss' || scheme === 'https';
  if (!['ws', 'wss', 'http', 'https'].includes(scheme)) {
    throw new ReplError('E_USAGE', `--hub: unsupported scheme '${scheme}' (use ws, wss, http or https)`);
  }
  const hostPort = url.host;
  const ws = `${secure ? 'wss' : 'ws'}://${hostPort}`;
  return { ws, http: `${secure ? 'https' : 'http'}://${hostPort}`, replicate: `${ws}/v1/replicate` };
}

export function parseSizeOption(text: string | number, option: string): number {
  try {
    return typeof text === 'number' ? text : parseSize(String(text));
  } catch (err) {
    throw new ReplError('E_USAGE', `${option}: ${(err as Error).message}`);
  }
}

export function parseDuration(text: string, option: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new ReplError('E_USAGE', `${option}: expected a duration like 30s, 15m, 1h, got '${text}'`);
  const mult: Record<string, number> = { ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000 };
  return Math.round(Number(m[1]) * (mult[m[2] ?? 's'] ?? 1000));
}
