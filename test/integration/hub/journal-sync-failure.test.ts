import * as path from 'node:path';
import { spawnTs } from '../../helpers/run-ts';
import { useTmpDir } from '../../helpers/tmpdir';

describe('Journal: an fdatasync failing while the next batch is written', () => {
  const tmp = useTmpDir('journal-sync-failure-');

  it('fails both batches (fail-stop) and never leaves the rejection unhandled (the process survives)', async () => {
    const child = spawnTs(path.join(__dirname, 'fixtures', 'journal-sync-failure.ts'), [tmp.path]);
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect({ code, out: out.trim(), err: err.trim() }).toEqual({ code: 0, out: 'a E_IO b E_IO', err: '' });
  }, 30_000);
});
