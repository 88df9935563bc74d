/**
 * The README's first command runs `repctl demo`: hub + agent on embedded
 * defaults, replication to in-sync, a drill, and a report. Runs the built CLI.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DIST } from '../../cli/procs';
import { makeTmpDir, removeTmpDir } from '../helpers/tmpdir';

jest.setTimeout(240000);

describe('repctl demo', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTmpDir('demo-');
  });
  afterEach(() => removeTmpDir(dir));

  test('replicates, reaches in-sync, passes a drill and writes its report', async () => {
    const child = spawn(process.execPath, [path.join(DIST, 'cli', 'repctl.js'), 'demo', '--dir', dir, '--size', '64M'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const t = setTimeout(() => child.kill('SIGKILL'), 200000);
      child.on('exit', (c) => {
        clearTimeout(t);
        resolve(c);
      });
    });
    if (code !== 0) throw new Error(`demo exited ${code}\nstdout:\n${out}\nstderr:\n${err}`);
    expect(out).toMatch(/state=in-sync/);
    expect(out).toMatch(/drill PASSED/);
    const m = /drill report: (\S+\.html)/.exec(out);
    expect(m).not.toBeNull();
    const html = fs.readFileSync(m![1]!, 'utf8');
    expect(html).toMatch(/<svg/);
    expect(fs.existsSync(m![1]!.replace(/\.html$/, '.json'))).toBe(true);
    // hub and agent were stopped by PID: nothing listens on their ports any more
    const pids = [...out.matchAll(/pid (\d+)/g)].map((x) => Number(x[1]));
    expect(pids.length).toBe(2);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });
});
