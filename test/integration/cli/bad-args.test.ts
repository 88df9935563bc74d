/**
 * The three binaries refuse bad arguments with a non-zero exit code and a
 * one-line message, and print help. Runs the TypeScript entry points in child
 * processes (no build needed).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { TS_REGISTER } from '../../helpers/run-ts';

const CLI = path.join(__dirname, '..', '..', '..', 'cli');

function run(bin: string, args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, ['-r', TS_REGISTER, path.join(CLI, `${bin}.ts`), ...args], {
    encoding: 'utf8',
    timeout: 30000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('CLI argument errors', () => {
  test.each([
    ['repagent', [], /Missing required argument: volume/],
    ['repagent', ['--volume', 'bad'], /expected NAME=PATH/],
    ['repagent', ['--volume', 'v=/tmp/x:12Q'], /invalid size/],
    ['repagent', ['--volume', 'v=/tmp/x:1M', '--nvme-listen', 'nowhere'], /--nvme-listen: expected HOST:PORT/],
    ['repagent', ['--volume', 'v=/tmp/x:1M', '--ack', 'maybe'], /Invalid values/],
    ['repagent', ['--volume', 'v=/tmp/x:1M', '--region-size', '3000'], /power of two/],
    ['repagent', ['--volume', 'v=/tmp/x:1M', '--hub', 'ftp://x'], /unsupported scheme/],
    ['repagent', ['--volume', 'v=/tmp/x:1M', '--bogus'], /Unknown argument/],
    ['rephub', ['--listen', 'off'], /cannot be 'off'/],
    ['rephub', ['--tls-cert', '/nonexistent'], /go together/],
    ['rephub', ['--retention', 'forever'], /--retention/],
    ['rephub', ['--journal-io', 'sometimes'], /Invalid values[\s\S]*journal-io/],
    ['repctl', [], /name a command/],
    ['repctl', ['status'], /Missing required argument: hub/],
    ['repctl', ['wait-synced', '--hub', 'ws://127.0.0.1:1'], /Missing required argument: volume/],
    ['repctl', ['frobnicate'], /Unknown argument/],
  ])('%s %j', (bin, args, message) => {
    const r = run(bin, args as string[]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err).not.toMatch(/internal error|at .*\.ts:\d+/);
  });

  test('an unreachable hub is a clear error with its own exit code', () => {
    const r = run('repctl', ['status', '--hub', 'ws://127.0.0.1:1']);
    expect(r.code).toBe(4);
    expect(r.err).toMatch(/hub unreachable at 127\.0\.0\.1:1/);
  });

  test.each(['repagent', 'rephub', 'repctl'])('%s --help', (bin) => {
    const r = run(bin, ['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/Options:/);
  });
});
