/**
 * Terminal progress for initial sync and resync: one cli-progress bar per
 * volume while a resync runs, only when stderr is a terminal (logs carry the
 * same facts as structured events otherwise).
 */
import { MultiBar, Presets, SingleBar } from 'cli-progress';
import type { Agent, AgentEvent } from '../agent';
import { formatBytes } from '../common/size';

export function attachProgress(agent: Agent, stream: NodeJS.WriteStream = process.stderr): () => void {
  if (!stream.isTTY) return () => undefined;
  const multi = new MultiBar(
    {
      stream,
      format: '{volume} {kind} [{bar}] {percentage}% {done}/{total} eta {eta_formatted}',
      hideCursor: true,
      clearOnComplete: false,
    },
    Presets.shades_classic,
  );
  const bars = new Map<string, SingleBar>();
  const onEvent = (e: AgentEvent): void => {
    if (e.type === 'resync-start') {
      bars.get(e.volume)?.stop();
      const bar = multi.create(e.totalBytes, 0, {
        volume: e.volume,
        kind: e.full ? 'initial sync' : 'resync',
        done: formatBytes(0),
        total: formatBytes(e.totalBytes),
      });
      bars.set(e.volume, bar);
    } else if (e.type === 'resync-progress') {
      bars.get(e.volume)?.update(e.doneBytes, { done: formatBytes(e.doneBytes), total: formatBytes(e.totalBytes) });
    } else if (e.type === 'resync-end' || e.type === 'disconnect') {
      const bar = bars.get(e.volume);
      if (bar) {
        if (e.type === 'resync-end') bar.update(bar.getTotal());
        bar.stop();
        multi.remove(bar);
        bars.delete(e.volume);
      }
    }
  };
  agent.on('event', onEvent);
  return () => {
    agent.off('event', onEvent);
    multi.stop();
  };
}
