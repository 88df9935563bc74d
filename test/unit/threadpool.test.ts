import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULT_THREADPOOL_SIZE, configureThreadPool } from '../../common/threadpool';

describe('configureThreadPool', () => {
  test('sets the default, keeps a valid operator value, replaces garbage', () => {
    const env: NodeJS.ProcessEnv = {};
    expect(configureThreadPool(undefined, env)).toEqual({ size: DEFAULT_THREADPOOL_SIZE, source: 'default' });
    expect(env.UV_THREADPOOL_SIZE).toBe(String(DEFAULT_THREADPOOL_SIZE));
    expect(configureThreadPool(8, { UV_THREADPOOL_SIZE: '3' })).toEqual({ size: 3, source: 'env' });
    const bad: NodeJS.ProcessEnv = { UV_THREADPOOL_SIZE: 'lots' };
    expect(configureThreadPool(8, bad)).toEqual({ size: 8, source: 'default' });
    expect(bad.UV_THREADPOOL_SIZE).toBe('8');
    expect(configureThreadPool(5000, {}).size).toBe(1024);
  });

  const linux = process.platform === 'linux' ? test : test.skip;
  linux('takes effect when called before the first thread-pool job', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tp-'));
    try {
      const script = path.join(dir, 'child.ts');
      const mod = path.resolve(__dirname, '../../common/threadpool');
      fs.writeFileSync(
        script,
        `import * as fs from 'node:fs';
import { configureThreadPool } from ${JSON.stringify(mod)};
const before = fs.readdirSync('/proc/self/task').length;
configureThreadPool(7);
fs.stat(__filename, () => {
  process.stdout.write(String(fs.readdirSync('/proc/self/task').length - before));
});
`,
      );
      const env = { ...process.env };
      delete env.UV_THREADPOOL_SIZE;
      const res = spawnSync(process.execPath, ['-r', require.resolve('../helpers/ts-register'), script], {
        env,
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(res.status).toBe(0);
      expect(Number(res.stdout)).toBe(7);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
