/**
 * HTTP client for the hub's JSON control API (GET/POST under /v1). Errors are
 * ReplErrors: E_CLOSED when the hub is unreachable, E_NOT_FOUND for 404s,
 * E_INVALID/E_BUSY/... from the hub's {error, code} body otherwise.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { ErrorCode, ReplError } from '../common/errors';

export interface HubClientOptions {
  /** http(s)://HOST:PORT */
  baseUrl: string;
  timeoutMs?: number;
  caFile?: string;
  ca?: Buffer;
}

const KNOWN_CODES = new Set<string>([
  'E_PROTOCOL', 'E_HANDSHAKE', 'E_VERSION', 'E_AUTH', 'E_FENCED', 'E_CLOSED', 'E_TIMEOUT', 'E_RANGE',
  'E_INVALID', 'E_READ_ONLY', 'E_NOT_FOUND', 'E_BUSY', 'E_IO', 'E_NOSPC', 'E_BITMAP_CORRUPT', 'E_USAGE',
  'E_INTERNAL',
]);

export class HubClient {
  constructor(private readonly options: HubClientOptions) {}

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body: unknown = {}): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }

  private request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = new URL(path, this.options.baseUrl);
    const lib = url.protocol === 'https:' ? https : http;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = lib.request(
        url,
        {
          method,
          ca: this.options.ca,
          timeout: this.options.timeoutMs ?? 30000,
          headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: unknown;
            try {
              json = text ? JSON.parse(text) : {};
            } catch {
              return reject(new ReplError('E_PROTOCOL', `hub answered ${res.statusCode} with non-JSON body`));
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve(json as T);
            const obj = json as { error?: string; code?: string };
            const code: ErrorCode =
              obj.code && KNOWN_CODES.has(obj.code) ? (obj.code as ErrorCode) : status === 404 ? 'E_NOT_FOUND' : 'E_IO';
            reject(new ReplError(code, obj.error ?? `hub answered HTTP ${status}`));
          });
        },
      );
      req.on('timeout', () => req.destroy(new ReplError('E_TIMEOUT', `hub at ${url.host} did not answer in time`)));
      req.on('error', (err) => {
        if (err instanceof ReplError) return reject(err);
        reject(new ReplError('E_CLOSED', `hub unreachable at ${url.host}: ${err.message}`, { cause: err }));
      });
      if (payload) req.write(payload);
      req.end();
    });
  }
}
