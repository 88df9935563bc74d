import { decideHello, FencingInput, helloProblem, tokenMatches } from '../../../hub/fencing';
import { refuseCloseCode } from '../../../hub/close-codes';
import { makeHello } from '../../helpers/fake-agent';

const known = { uuid: 'uuid-1', size: 1024 * 1024, blockSize: 512, generation: 5, failedOver: false };

function decide(over: Partial<FencingInput> & { hello?: Parameters<typeof makeHello>[0] }) {
  return decideHello({ token: undefined, volume: known, busy: false, ...over, hello: makeHello(over.hello) });
}

describe('fencing decision table', () => {
  it.each([
    ['unknown volume -> create, FULL, generation 1', { volume: null }, { action: 'welcome', mode: 'full', generation: 1, create: true }],
    ['equal generation -> RESUME', { hello: { generation: 5 } }, { action: 'welcome', mode: 'resume', generation: 5 }],
    ['agent generation 0 -> FULL, new generation', { hello: { generation: 0 } }, { action: 'welcome', mode: 'full', generation: 6 }],
    ['agent newer (hub lost state) -> FULL above both', { hello: { generation: 9 } }, { action: 'welcome', mode: 'full', generation: 10 }],
    ['agent older -> stale-generation', { hello: { generation: 4 } }, { action: 'refuse', code: 'stale-generation' }],
    ['agent older + force -> FULL', { hello: { generation: 4, forceFullSync: true } }, { action: 'welcome', mode: 'full', generation: 6 }],
    ['equal + force -> FULL', { hello: { generation: 5, forceFullSync: true } }, { action: 'welcome', mode: 'full', generation: 6 }],
    ['other uuid -> uuid-mismatch', { hello: { volumeUuid: 'x', generation: 5 } }, { action: 'refuse', code: 'uuid-mismatch' }],
    ['other uuid + force -> recreate', { hello: { volumeUuid: 'x', forceFullSync: true } }, { action: 'welcome', mode: 'full', recreate: true }],
    ['other size -> invalid', { hello: { volumeSize: 2048 * 1024, generation: 5 } }, { action: 'refuse', code: 'invalid' }],
    ['busy -> busy', { busy: true, hello: { generation: 5 } }, { action: 'refuse', code: 'busy' }],
    ['busy wins over force', { busy: true, hello: { forceFullSync: true } }, { action: 'refuse', code: 'busy' }],
    ['failed over -> failed-over, even forced', { volume: { ...known, failedOver: true }, hello: { forceFullSync: true } }, { action: 'refuse', code: 'failed-over' }],
    ['wrong version', { hello: { protocolVersion: 99 } }, { action: 'refuse', code: 'version' }],
    ['token required, missing', { token: 's3cret' }, { action: 'refuse', code: 'auth' }],
    ['token required, wrong', { token: 's3cret', hello: { token: 's3creT' } }, { action: 'refuse', code: 'auth' }],
    ['token required, right', { token: 's3cret', hello: { token: 's3cret', generation: 5 } }, { action: 'welcome', mode: 'resume' }],
    ['auth before anything about the volume', { token: 't', busy: true }, { action: 'refuse', code: 'auth' }],
    ['malformed hello', { hello: { regionSize: 3000 } }, { action: 'refuse', code: 'invalid' }],
  ] as const)('%s', (_name, input, expected) => {
    expect(decide(input as Partial<FencingInput>)).toMatchObject(expected);
  });

  it('maps refusals to the spec close codes', () => {
    expect(refuseCloseCode('auth')).toBe(4001);
    expect(refuseCloseCode('version')).toBe(4002);
    expect(refuseCloseCode('busy')).toBe(4003);
    expect(refuseCloseCode('uuid-mismatch')).toBe(4004);
    expect(refuseCloseCode('stale-generation')).toBe(4004);
    expect(refuseCloseCode('failed-over')).toBe(4004);
    expect(refuseCloseCode('invalid')).toBe(4000);
  });

  it('validates hello fields', () => {
    expect(helloProblem(makeHello())).toBeNull();
    expect(helloProblem(makeHello({ volumeName: '../etc' }))).toMatch(/volume name/);
    expect(helloProblem(makeHello({ volumeName: '' }))).toMatch(/volume name/);
    expect(helloProblem(makeHello({ blockSize: 1024 }))).toMatch(/block size/);
    expect(helloProblem(makeHello({ volumeSize: 1000 }))).toMatch(/volume size/);
    expect(helloProblem(makeHello({ volumeSize: 0 }))).toMatch(/volume size/);
    expect(helloProblem(makeHello({ regionSize: 256 }))).toMatch(/region size/);
    expect(helloProblem(makeHello({ volumeUuid: '' }))).toMatch(/uuid/);
    expect(helloProblem(makeHello({ agentId: 'a b' }))).toMatch(/agent id/);
  });

  it('compares tokens of any length without throwing', () => {
    expect(tokenMatches('abc', 'abc')).toBe(true);
    expect(tokenMatches('abc', 'abcd')).toBe(false);
    expect(tokenMatches('', '')).toBe(true);
  });
});
