import { DrillReport, RPO_DEFINITION, RTO_CHECK_DEFINITION, RTO_EXPORT_DEFINITION } from '../../../cli/commands/drill';
import { esc, lagChartSvg, renderDrillHtml, timelineSvg } from '../../../cli/report/html';
import { viewJson, volumeStatus } from './fake-hub-api';

function report(overrides: Partial<DrillReport> = {}): DrillReport {
  return {
    kind: 'repctl-drill', version: 1, volume: 'vol1', hub: 'ws://127.0.0.1:7400', at: 'latest',
    startedAt: '2024-05-01T10:00:05.000Z', finishedAt: '2024-05-01T10:00:06.500Z', durationMs: 1500,
    result: 'passed', error: null, view: viewJson(),
    check: { kind: 'command', command: 'fsck -n $REP_NBD_URI', exitCode: 0, signal: null, outputTail: 'clean\n', passed: true, durationMs: 900 },
    rto: { exportReadyMs: 40, hubReadyMs: 12, checkPassedMs: 950 },
    rpo: { seconds: 0.75, pointTime: '2024-05-01T10:00:00.000Z', pointSeq: 1000, ackedTime: '2024-05-01T10:00:00.750Z', ackedSeq: 1003, note: null },
    teardown: { kept: false, discarded: true, overlayBytes: 4096, error: null },
    steps: [
      { name: 'status', startMs: 0, endMs: 10, ok: true, detail: null },
      { name: 'create-view', startMs: 10, endMs: 40, ok: true, detail: 'vol1-test-3f9a at epoch 42' },
      { name: 'check', startMs: 40, endMs: 950, ok: true, detail: 'passed' },
      { name: 'teardown', startMs: 950, endMs: 1500, ok: true, detail: null },
    ],
    volumeStatus: volumeStatus(),
    lagHistory: Array.from({ length: 12 }, (_, i) => ({
      time: new Date(Date.parse('2024-05-01T09:59:00.000Z') + i * 5000).toISOString(),
      lagSeconds: i === 7 ? 3 : 0.1 * i,
      lagBytes: i * 4096,
    })),
    definitions: { rtoExport: RTO_EXPORT_DEFINITION, rtoCheck: RTO_CHECK_DEFINITION, rpo: RPO_DEFINITION },
    ...overrides,
  };
}

function polylinePoints(html: string): [number, number][] {
  const m = /<polyline[^>]*points="([^"]*)"/.exec(html);
  if (!m) throw new Error('no polyline');
  return (m[1] ?? '').split(' ').map((p) => p.split(',').map(Number) as [number, number]);
}

describe('drill HTML report', () => {
  test('is one self-contained, balanced document with the key figures', () => {
    const html = renderDrillHtml(report());
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    expect(html.trimEnd().endsWith('</html>')).toBe(true);
    expect(html).not.toMatch(/<(script|link|img)\b/i);
    expect(html).not.toMatch(/(src|href)=/i);
    for (const tag of ['html', 'head', 'body', 'table', 'svg', 'style', 'title', 'tr', 'pre', 'div', 'p', 'h1', 'h2']) {
      const open = (html.match(new RegExp(`<${tag}[\\s>]`, 'g')) ?? []).length;
      const close = (html.match(new RegExp(`</${tag}>`, 'g')) ?? []).length;
      expect({ tag, open }).toEqual({ tag, open: close });
    }
    expect(html).toContain('PASSED');
    expect(html).toContain('40 ms');
    expect(html).toContain('950 ms');
    expect(html).toContain('0.750 s');
    expect(html).toContain('nbd://127.0.0.1:10810/vol1-test-3f9a');
    expect(html).toContain('nqn.2024-05.io.blockrep:vol1-test-3f9a');
  });

  test('the lag chart has one polyline vertex per sample, time ascending, peak at the top', () => {
    const r = report();
    const pts = polylinePoints(lagChartSvg(r.lagHistory));
    expect(pts).toHaveLength(r.lagHistory.length);
    for (let i = 1; i < pts.length; i++) expect(pts[i]![0]).toBeGreaterThan(pts[i - 1]![0]);
    const ys = pts.map((p) => p[1]);
    expect(Math.min(...ys)).toBe(ys[7]); // the 3 s peak is the highest point (smallest y)
    expect(polylinePoints(renderDrillHtml(r))).toEqual(pts);
    expect(lagChartSvg([])).toContain('no lag samples');
  });

  test('the timeline draws one bar per step', () => {
    const svg = timelineSvg(report().steps, 1500);
    expect((svg.match(/<rect /g) ?? []).length).toBe(4);
    expect(svg).toContain('create-view');
  });

  test('every string from the report is escaped', () => {
    const evil = '<script>alert("x")</script>';
    const html = renderDrillHtml(
      report({
        volume: evil,
        result: 'failed',
        error: { code: 'E_IO', message: `<img src=x onerror=alert(1)>` },
        view: viewJson({ id: evil, nbd: { uri: `nbd://h/${evil}`, host: 'h', port: 1, export: evil } }),
        check: { kind: 'command', command: `echo '${evil}'`, exitCode: 1, signal: null, outputTail: evil, passed: false, durationMs: 5 },
        steps: [{ name: evil, startMs: 0, endMs: 5, ok: false, detail: evil }],
      }),
    );
    expect(html).not.toContain('<script');
    expect(html).not.toContain('<img');
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;');
    expect(esc(`a&b<c>"d"'e'`)).toBe('a&amp;b&lt;c&gt;&quot;d&quot;&#39;e&#39;');
  });

  test('a checksum check and a missing view render too', () => {
    const html = renderDrillHtml(
      report({
        view: null,
        result: 'error',
        check: { kind: 'checksum', regionSize: 65536, regions: 16, bytes: 1 << 20, mismatches: [2, 5], mismatchCount: 2, detail: '2 of 16 regions differ', passed: false, durationMs: 30 },
      }),
    );
    expect(html).toContain('No view was created');
    expect(html).toContain('2 of 16 regions differ');
    expect(html).toContain('2, 5');
  });
});
