import { backoff, DEFAULT_BACKOFF, Heartbeat, LinkState, toCloseCode, TRANSITIONS } from '../../../agent/hub-link';
import { ReplError } from '../../../common/errors';

describe('backoff', () => {
  test.each([
    [0, 0.5, 500],
    [1, 0.5, 1000],
    [2, 0.5, 2000],
    [5, 0.5, 16000],
    [6, 0.5, 30000],
    [50, 0.5, 30000],
  ])('attempt %i (no jitter) -> %i ms', (attempt, r, want) => {
    expect(backoff(attempt, () => r)).toBe(want);
  });

  test('jitter stays within ±20% and inside [0.5 s, 30 s]', () => {
    for (let attempt = 0; attempt < 20; attempt++) {
      for (const r of [0, 0.25, 0.999]) {
        const d = backoff(attempt, () => r);
        const nominal = Math.min(30000, 500 * 2 ** attempt);
        expect(d).toBeGreaterThanOrEqual(Math.max(DEFAULT_BACKOFF.baseMs, Math.floor(nominal * 0.8)));
        expect(d).toBeLessThanOrEqual(Math.min(DEFAULT_BACKOFF.maxMs, Math.ceil(nominal * 1.2)));
      }
    }
  });
});

describe('link state table', () => {
  test('every state reaches closed; closed is terminal; streaming only from handshaking', () => {
    const states = Object.keys(TRANSITIONS) as LinkState[];
    for (const s of states) if (s !== 'closed') expect(TRANSITIONS[s]).toContain('closed');
    expect(TRANSITIONS.closed).toEqual([]);
    expect(states.filter((s) => TRANSITIONS[s].includes('streaming'))).toEqual(['handshaking']);
  });

  test('close codes: one translation', () => {
    expect(toCloseCode(ReplError.protocol('x'))).toBe(4000);
    expect(toCloseCode(new ReplError('E_AUTH', 'x'))).toBe(4001);
    expect(toCloseCode(ReplError.closed())).toBe(1000);
    expect(toCloseCode(ReplError.internal('x'))).toBe(1011);
  });
});

describe('Heartbeat', () => {
  function manualTimers() {
    const t = { fn: null as null | (() => void), setInterval: (fn: () => void) => ((t.fn = fn), 1), clearInterval: () => (t.fn = null) };
    return t;
  }
  test('three missed pongs -> stale once; pongs reset the count', () => {
    const timers = manualTimers();
    let pings = 0;
    let stale = 0;
    const hb = new Heartbeat({ sendPing: () => pings++, onStale: () => stale++ }, 1000, 3, timers);
    hb.start();
    timers.fn!();
    timers.fn!();
    hb.alive();
    timers.fn!();
    timers.fn!();
    timers.fn!();
    expect(stale).toBe(0);
    expect(pings).toBe(5);
    timers.fn!(); // fourth tick after three unanswered pings
    expect(stale).toBe(1);
    expect(timers.fn).toBeNull(); // stopped
  });
});
