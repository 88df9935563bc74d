/**
 * Benchmark sections beyond the front ends. Each prints rows and returns JSON.
 */
import { recoverySection } from './recovery';
import { replicationSection } from './replication';

export interface SectionOutput {
  rows: string[][];
  json: unknown;
}

export interface Section {
  name: string;
  title: string;
  run(dir: string, log: (s: string) => void): Promise<SectionOutput>;
}

export const SECTIONS: Section[] = [replicationSection, recoverySection];
