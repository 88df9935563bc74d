/**
 * Static-buffer socket reads for the front ends' accepted connections (the
 * NBD server and the NVMe/TCP target; it lives beside the payload pool they
 * share, buffer-pool.ts).
 *
 * Why: a Node socket in streaming mode allocates a fresh 64 KiB buffer for
 * every read (and copies into a second one when the read came back short).
 * For 128 KiB writes that meant ~8000 buffers per 512 MiB, whose pages
 * fault in on the kernel's copy and which, as external memory, drive V8 into
 * a major GC every ~64 MiB (measured: ~20% of the agent's CPU in GC, ~8% in
 * page faults). With Node's `onread` option the kernel copies into one
 * buffer that never changes, as nbdkit's recv() into its own buffer does.
 *
 * Node offers `onread` only to `new net.Socket()`, not to net.Server, so an
 * accepted socket (the server must be created with pauseOnConnect, so the
 * handle is not reading yet) is re-wrapped: its handle moves to a new Socket
 * with `onread`, and the old Socket object is destroyed without a handle,
 * which only settles the server's connection count. This relies on
 * `socket._handle` and the `handle` constructor option, which Node has kept
 * stable for years (the cluster module uses them); when either is missing,
 * adoptStaticReads() returns null and the caller keeps the stream socket
 * (and resumes it), so a Node change costs speed, never correctness.
 * test/unit/block/static-reads.test.ts fails if the fast path stops working.
 *
 * Contract for the callback: the chunk is a view of READ_BUFFER, valid only
 * until the callback returns; every connection of the process shares the
 * buffer (reads are synchronous on the loop thread, one socket at a time),
 * so the consumer copies whatever it keeps before returning.
 */
import * as net from 'node:net';

/** Largest read; at least one 128 KiB payload plus headers per read. */
export const READ_BUFFER_BYTES = 256 * 1024;
const READ_BUFFER = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);

/**
 * The `onread` option for a socket this process creates (net.connect /
 * new net.Socket accept it directly: the NVMe/TCP initiator); same contract.
 */
export function staticReadOption(onChunk: (chunk: Buffer) => void): net.OnReadOpts {
  return {
    buffer: READ_BUFFER,
    callback: (nread: number, buf: Uint8Array): boolean => {
      onChunk((buf as Buffer).subarray(0, nread));
      return true;
    },
  };
}

interface HandleOwner {
  _handle?: { useUserBuffer?: unknown } | null;
}

/**
 * Moves an accepted, paused socket to static-buffer reads: returns the new
 * socket (reading, every chunk goes to onChunk) or null when not possible.
 */
export function adoptStaticReads(socket: net.Socket, onChunk: (chunk: Buffer) => void): net.Socket | null {
  const owner = socket as unknown as HandleOwner;
  const handle = owner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || socket.destroyed) return null;
  const options = { handle, onread: staticReadOption(onChunk) };
  const adopted = new net.Socket(options as net.SocketConstructorOpts);
  owner._handle = null;
  socket.destroy();
  return adopted;
}
