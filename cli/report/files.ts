/**
 * Where drill reports go and how they are written: PATH.json + PATH.html next
 * to each other. The default stem is ./drill-<volume>-<UTC timestamp>; a
 * --report PATH ending in .json or .html names the stem without it. Paths are
 * resolved against an explicit cwd (no process.cwd() in here).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DrillReport } from '../commands/drill';
import { renderDrillHtml } from './html';

export interface ReportPaths {
  json: string;
  html: string;
}

/** 2024-05-01T10:02:03.456Z -> 20240501T100203Z */
function stamp(date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, 'Z').replace(/[-:]/g, '');
}

export function reportPaths(option: string | undefined, volume: string, startedAt: Date, cwd: string): ReportPaths {
  let stem: string;
  if (option && option.length > 0) stem = option.replace(/\.(json|html)$/i, '');
  else stem = `drill-${volume.replace(/[^A-Za-z0-9._-]/g, '_')}-${stamp(startedAt)}`;
  const abs = path.resolve(cwd, stem);
  return { json: `${abs}.json`, html: `${abs}.html` };
}

export async function writeReport(paths: ReportPaths, report: DrillReport): Promise<void> {
  await fs.promises.mkdir(path.dirname(paths.json), { recursive: true });
  await fs.promises.writeFile(paths.json, `${JSON.stringify(report, null, 2)}\n`);
  await fs.promises.writeFile(paths.html, renderDrillHtml(report));
}
