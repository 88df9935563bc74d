/**
 * Prometheus metrics of one hub instance, in its own prom-client Registry (two
 * hubs in one process, as in tests, never share counters). Counters are bumped
 * on the hot path; gauges that mirror state (lag, journal bytes, connected
 * agents, fsyncs) are computed at scrape time from a snapshot provider.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SessionObserver } from './session';

export interface MetricsSnapshot {
  connectedAgents: number;
  volumes: { name: string; lagSeconds: number; journalBytes: number; fsyncs: number; journalDirectIo: boolean }[];
}

export class HubMetrics implements SessionObserver {
  readonly registry = new Registry();
  private readonly bytesReceived: Counter<'volume'>;
  private readonly records: Counter<'volume' | 'type'>;
  private readonly ackLatency: Histogram<'volume'>;
  private readonly historyShortened: Counter<'volume'>;
  private readonly refusedTotal: Counter<'code'>;
  /** Last fsync count seen per volume (the counter advances by the difference). */
  private readonly fsyncSeen = new Map<string, number>();

  constructor(snapshot: () => MetricsSnapshot) {
    const registers = [this.registry];
    this.bytesReceived = new Counter({
      name: 'rephub_bytes_received_total',
      help: 'Payload bytes received from agents',
      labelNames: ['volume'],
      registers,
    });
    this.records = new Counter({
      name: 'rephub_records_total',
      help: 'Records received from agents, by type',
      labelNames: ['volume', 'type'],
      registers,
    });
    this.ackLatency = new Histogram({
      name: 'rephub_ack_latency_seconds',
      help: 'Time from receiving a Seal to sending its Ack (journal group commit)',
      labelNames: ['volume'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.historyShortened = new Counter({
      name: 'rephub_history_shortened_total',
      help: 'Times the journal byte budget forced older recovery points to be dropped',
      labelNames: ['volume'],
      registers,
    });
    this.refusedTotal = new Counter({
      name: 'rephub_agents_refused_total',
      help: 'Agent handshakes refused, by reason',
      labelNames: ['code'],
      registers,
    });
    const fsyncs = new Counter({
      name: 'rephub_fsyncs_total',
      help: 'Journal fdatasync calls (each covers a group of records)',
      labelNames: ['volume'],
      registers,
      collect: () => {
        for (const v of snapshot().volumes) {
          const delta = v.fsyncs - (this.fsyncSeen.get(v.name) ?? 0);
          if (delta > 0) fsyncs.inc({ volume: v.name }, delta);
          this.fsyncSeen.set(v.name, v.fsyncs);
        }
      },
    });
    const lag = new Gauge({
      name: 'rephub_lag_seconds',
      help: 'Age of the newest recovery point relative to the agent (0 when in sync)',
      labelNames: ['volume'],
      registers,
      collect: () => {
        lag.reset();
        for (const v of snapshot().volumes) lag.set({ volume: v.name }, v.lagSeconds);
      },
    });
    const journal = new Gauge({
      name: 'rephub_journal_bytes',
      help: 'Bytes of journal segments retained per volume',
      labelNames: ['volume'],
      registers,
      collect: () => {
        journal.reset();
        for (const v of snapshot().volumes) journal.set({ volume: v.name }, v.journalBytes);
      },
    });
    const direct = new Gauge({
      name: 'rephub_journal_direct_io',
      help: '1 while the volume journal appends bypass the page cache (O_DIRECT), 0 when they go through it',
      labelNames: ['volume'],
      registers,
      collect: () => {
        direct.reset();
        for (const v of snapshot().volumes) direct.set({ volume: v.name }, v.journalDirectIo ? 1 : 0);
      },
    });
    const connected: Gauge = new Gauge({
      name: 'rephub_connected_agents',
      help: 'Agent sessions currently streaming',
      registers,
      collect: (): void => {
        connected.set(snapshot().connectedAgents);
      },
    });
  }

  record(volume: string, type: string, bytes: number): void {
    this.records.inc({ volume, type });
    if (bytes > 0) this.bytesReceived.inc({ volume }, bytes);
  }

  ack(volume: string, latencySeconds: number): void {
    this.ackLatency.observe({ volume }, latencySeconds);
  }

  shortened(volume: string): void {
    this.historyShortened.inc({ volume });
  }

  refused(code: string): void {
    this.refusedTotal.inc({ code });
  }
}
