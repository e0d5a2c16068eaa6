import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface Frame {
  frame: string;
  selfMs: number;
  percent: number;
}

/**
 * The functions a `node --cpu-prof` profile spent its own time in (self time, not counting
 * callees), heaviest first, as shares of the busy time: the runtime idles whenever a peer's round
 * runs, so shares of the whole would only measure how long the peers took.
 */
export function topFrames(path: string, count = 15): Frame[] {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const names = new Map<number, string>();
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url
      ? `${url.replace(/^.*\/(node_modules|dist)\//, '$1/').replace(/^node:/, '')}:${lineNumber + 1}`
      : '';
    names.set(node.id, where ? `${functionName || '(anonymous)'} ${where}` : functionName);
  }
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const name = names.get(id) ?? '?';
    if (name === '(idle)') return;
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    total += ms;
    self.set(name, (self.get(name) ?? 0) + ms);
  });
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([frame, selfMs]) => ({ frame, selfMs, percent: (100 * selfMs) / total }));
}

/** Every profile `--cpu-prof` wrote into `dir`. */
export function profilesIn(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((name) => name.endsWith('.cpuprofile'))
      .map((name) => join(dir, name));
  } catch {
    return [];
  }
}
