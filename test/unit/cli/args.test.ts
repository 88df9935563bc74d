import { parseDuration, parseHubUrl, parseListen, parseSizeOption, parseVolume } from '../../../cli/args';
import { parseSize } from '../../../common/size';

describe('cli argument parsing', () => {
  test('sizes accept bytes and K/M/G/T (powers of 1024)', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('64K')).toBe(65536);
    expect(parseSize('1M')).toBe(1048576);
    expect(parseSize('2g')).toBe(2 * 1024 ** 3);
    expect(parseSize('1T')).toBe(1024 ** 4);
    expect(parseSize('1.5K')).toBe(1536);
    expect(parseSize('8MiB')).toBe(8 * 1024 * 1024);
    for (const bad of ['', 'x', '-1', '1Q', '1.1']) expect(() => parseSize(bad)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    expect(() => parseSizeOption('nope', '--queue-bytes')).toThrow(/--queue-bytes/);
  });

  test('listen addresses', () => {
    expect(parseListen('127.0.0.1:4420', '--x')).toEqual({ host: '127.0.0.1', port: 4420 });
    expect(parseListen('[::1]:10809', '--x')).toEqual({ host: '::1', port: 10809 });
    expect(parseListen(':0', '--x')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseListen('off', '--x')).toBeNull();
    for (const bad of ['4420', 'host:', 'a:70000', 'a:b']) {
      expect(() => parseListen(bad, '--nvme-listen')).toThrow(/--nvme-listen/);
    }
  });

  test('volumes NAME=PATH[:SIZE]', () => {
    expect(parseVolume('v1=/tmp/a.img')).toEqual({ name: 'v1', path: '/tmp/a.img', size: undefined });
    expect(parseVolume('v1=/tmp/a.img:1G')).toEqual({ name: 'v1', path: '/tmp/a.img', size: 1024 ** 3 });
    for (const bad of ['v1', '=x', 'bad name=/x', 'v1=', 'v1=/x:0', 'v1=/x:huge']) {
      expect(() => parseVolume(bad)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
    }
  });

  test('hub URLs: ws, wss, http, https', () => {
    expect(parseHubUrl('ws://127.0.0.1:7400')).toEqual({
      ws: 'ws://127.0.0.1:7400',
      http: 'http://127.0.0.1:7400',
      replicate: 'ws://127.0.0.1:7400/v1/replicate',
    });
    expect(parseHubUrl('https://h:1/')).toEqual({ ws: 'wss://h:1', http: 'https://h:1', replicate: 'wss://h:1/v1/replicate' });
    expect(() => parseHubUrl('ftp://h')).toThrow(/scheme/);
    expect(() => parseHubUrl('not a url')).toThrow(/not a URL/);
  });

  test('durations', () => {
    expect(parseDuration('30s', '--t')).toBe(30000);
    expect(parseDuration('15m', '--t')).toBe(900000);
    expect(parseDuration('1h', '--t')).toBe(3600000);
    expect(parseDuration('250ms', '--t')).toBe(250);
    expect(parseDuration('5', '--t')).toBe(5000);
    expect(() => parseDuration('soon', '--timeout')).toThrow(/--timeout/);
  });
});
