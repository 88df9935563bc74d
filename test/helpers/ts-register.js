// Require hook for child processes spawned by tests: compiles .ts on the fly
// with @swc/core so a test can run project TypeScript in a separate process
// (needed for kill -9 tests) without a prior build.
// Usage: spawn(process.execPath, ['-r', require.resolve('./ts-register'), 'file.ts', ...args])
const fs = require('node:fs');
const { transformSync } = require('@swc/core');

require.extensions['.ts'] = function compileTs(module, filename) {
  const source = fs.readFileSync(filename, 'utf8');
  const { code } = transformSync(source, {
    filename,
    jsc: { parser: { syntax: 'typescript' }, target: 'es2022' },
    module: { type: 'commonjs' },
    sourceMaps: 'inline',
  });
  module._compile(code, filename);
};
