/**
 * HubServer: the hub's one HTTP(S) server.
 *   - GET  upgrade /v1/replicate  -> WebSocket (ws, noServer), one AgentSession each
 *   - JSON routes registered with route() (status API; recovery API later)
 *   - GET /metrics                -> Prometheus text from the hub's Registry
 * WebSocket: binary messages only, maxPayload bounded (ws closes 1009 above
 * it), TCP_NODELAY, ws ping heartbeat; a peer that misses three pongs is
 * terminated (not closed politely: it is not listening).
 * Errors: toHttpStatus() is the one ReplError -> HTTP translation; error bodies
 * are {error, code}.
 * Shutdown (hub.ts drives the order): stopAccepting() closes the listener;
 * closeAgents() closes every WebSocket (1001) and waits for the close events,
 * terminating stragglers; close() drops remaining HTTP connections.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { MAX_MESSAGE_BYTES } from '../proto/codec';
import { CloseCode } from './close-codes';
import { Heartbeat } from './heartbeat';
import { SessionTransport } from './session';

export const REPLICATE_PATH = '/v1/replicate';
const MAX_BODY_BYTES = 1024 * 1024;
const CLOSE_GRACE_MS = 3000;

export interface RouteResult {
  status: number;
  body: unknown;
  /** Raw text body (e.g. Prometheus); body is then ignored. */
  text?: string;
  contentType?: string;
}

export type RouteHandler = (
  req: http.IncomingMessage,
  match: RegExpMatchArray,
  body: unknown,
) => Promise<RouteResult> | RouteResult;

/** What the server needs from an agent session. */
export interface AgentConnection {
  onMessage(buf: Buffer): void;
  onClosed(code: number, reason: string): void;
  close(code: number, reason: string): void;
}

export interface HubServerOptions {
  logger: Logger;
  /** PEM text or file paths. */
  tls?: { cert: string; key: string };
  heartbeatIntervalMs?: number;
  onAgent(transport: SessionTransport, remote: string): AgentConnection;
}

export function toHttpStatus(err: unknown): number {
  const e = asReplError(err);
  switch (e.code) {
    case 'E_NOT_FOUND':
      return 404;
    case 'E_INVALID':
    case 'E_USAGE':
    case 'E_PROTOCOL':
      return 400;
    case 'E_AUTH':
      return 401;
    case 'E_BUSY':
    case 'E_FENCED':
    case 'E_READ_ONLY':
      return 409;
    case 'E_RANGE':
      return 416;
    case 'E_CLOSED':
      return 503;
    default:
      return 500;
  }
}

function pem(value: string): string | Buffer {
  return value.includes('-----BEGIN') ? value : fs.readFileSync(value);
}

export class HubServer {
  private readonly server: http.Server;
  private readonly wss: WebSocketServer;
  private readonly routes: { method: string; pattern: RegExp; handler: RouteHandler }[] = [];
  /** Open agent sockets and their connection objects. */
  private readonly agents = new Map<WebSocket, AgentConnection>();
  private readonly logger: Logger;

  constructor(private readonly options: HubServerOptions) {
    this.logger = options.logger;
    const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => void this.onRequest(req, res);
    this.server = options.tls
      ? https.createServer({ cert: pem(options.tls.cert), key: pem(options.tls.key) }, handler)
      : http.createServer(handler);
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES + 64 * 1024, perMessageDeflate: false });
    this.server.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
    this.server.on('connection', (socket) => socket.setNoDelay(true));
  }

  get secure(): boolean {
    return this.options.tls !== undefined;
  }

  /** Registers a JSON route; the pattern is matched against the path (no query). */
  route(method: string, pattern: RegExp, handler: RouteHandler): void {
    this.routes.push({ method, pattern, handler });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void =>
        reject(new ReplError('E_IO', `cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) => this.logger.error({ err }, 'hub server error'));
        const addr = this.server.address();
        if (!addr || typeof addr === 'string') return reject(ReplError.internal('listener has no address'));
        resolve({ host: addr.address, port: addr.port });
      });
    });
  }

  /** Stops accepting new connections (existing ones keep running). */
  stopAccepting(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
    });
  }

  /** Closes every agent WebSocket and waits until each one is gone. */
  async closeAgents(code: number = CloseCode.GOING_AWAY, reason = 'hub stopping'): Promise<void> {
    const waits = [...this.agents.entries()].map(
      ([ws, conn]) =>
        new Promise<void>((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          ws.once('close', () => resolve());
          conn.close(code, reason);
          setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
        }),
    );
    await Promise.all(waits);
  }

  close(): void {
    this.server.closeAllConnections();
    this.wss.close();
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://hub');
    if (url.pathname !== REPLICATE_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onWebSocket(ws, req));
  }

  private onWebSocket(ws: WebSocket, req: http.IncomingMessage): void {
    const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    const transport: SessionTransport = {
      send: (data) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: true });
      },
      close: (code, reason) => {
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
        setTimeout(() => ws.terminate(), CLOSE_GRACE_MS).unref();
      },
      pause: () => ws.pause(),
      resume: () => ws.resume(),
    };
    const conn = this.options.onAgent(transport, remote);
    this.agents.set(ws, conn);
    const heartbeat = new Heartbeat({
      intervalMs: this.options.heartbeatIntervalMs ?? 5000,
      sendPing: () => ws.ping(),
      onStale: () => {
        this.logger.warn({ remote }, 'agent missed heartbeats; terminating');
        ws.terminate();
      },
    });
    heartbeat.start();
    ws.on('pong', () => heartbeat.onPong());
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) conn.close(CloseCode.INVALID, 'text frames are not part of the protocol');
      else conn.onMessage(data);
    });
    ws.on('error', (err) => this.logger.warn({ remote, err: err.message }, 'agent socket error'));
    ws.on('close', (code: number, reason: Buffer) => {
      heartbeat.stop();
      this.agents.delete(ws);
      conn.onClosed(code, reason.toString('utf8'));
    });
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let result: RouteResult;
    try {
      result = await this.dispatch(req);
    } catch (err) {
      const e = asReplError(err);
      const status = toHttpStatus(e);
      if (status >= 500) this.logger.error({ err: e, url: req.url }, 'request failed');
      result = { status, body: { error: e.message, code: e.code } };
    }
    const payload = result.text ?? JSON.stringify(result.body) + '\n';
    res.writeHead(result.status, {
      'content-type': result.contentType ?? 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(payload),
    });
    res.end(payload);
  }

  private async dispatch(req: http.IncomingMessage): Promise<RouteResult> {
    const url = new URL(req.url ?? '/', 'http://hub');
    const method = req.method ?? 'GET';
    let pathMatched = false;
    for (const r of this.routes) {
      const match = url.pathname.match(r.pattern);
      if (!match) continue;
      pathMatched = true;
      if (r.method !== method) continue;
      const body = method === 'GET' || method === 'DELETE' ? undefined : await readJson(req);
      return r.handler(req, match, body);
    }
    if (pathMatched) return { status: 405, body: { error: `${method} not allowed on ${url.pathname}`, code: 'E_INVALID' } };
    throw new ReplError('E_NOT_FOUND', `no such resource: ${url.pathname}`);
  }
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw ReplError.invalid(`request body exceeds ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw ReplError.invalid('request body is not JSON');
  }
}
