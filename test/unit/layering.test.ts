/**
 * Import direction: cli -> agent | hub -> common, proto. agent never imports
 * hub (and vice versa); common imports neither; proto imports only common.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const FORBIDDEN: Record<string, string[]> = {
  common: ['agent', 'hub', 'cli', 'proto'],
  proto: ['agent', 'hub', 'cli'],
  agent: ['hub', 'cli'],
  hub: ['agent', 'cli'],
};

function tsFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'gen' ? [] : tsFiles(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

describe('module layering', () => {
  for (const [layer, banned] of Object.entries(FORBIDDEN)) {
    test(`${layer}/ imports none of ${banned.join(', ')}`, () => {
      const offenders: string[] = [];
      for (const file of tsFiles(path.join(ROOT, layer))) {
        const src = fs.readFileSync(file, 'utf8');
        for (const m of src.matchAll(/(?:from|import|require\()\s*['"]([^'"]+)['"]/g)) {
          const spec = m[1] ?? '';
          if (!spec.startsWith('.')) continue;
          const target = path.relative(ROOT, path.resolve(path.dirname(file), spec)).split(path.sep)[0];
          if (target && banned.includes(target)) offenders.push(`${path.relative(ROOT, file)} -> ${spec}`);
        }
      }
      expect(offenders).toEqual([]);
    });
  }

  test('the scanner sees imports (guards against a vacuous pass)', () => {
    const files = tsFiles(path.join(ROOT, 'common'));
    expect(files.length).toBeGreaterThan(3);
    const anyImport = files.some((f) => /from '\.\.?\//.test(fs.readFileSync(f, 'utf8')));
    expect(anyImport).toBe(true);
  });
});
