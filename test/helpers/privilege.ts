import { spawnSync } from 'node:child_process';

/**
 * Why a root/netns test cannot run here, or undefined when it can.
 * Tests pass this as `skip`, so node's runner prints the reason; CI runs as root and has both.
 */
export function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  const probe = spawnSync('unshare', ['-n', 'true'], { stdio: 'ignore' });
  if (probe.status !== 0) return 'cannot create a network namespace (unshare -n failed)';
  return undefined;
}

export function commandMissing(command: string): string | undefined {
  const probe = spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
  return probe.status === 0 ? undefined : `${command} is not installed`;
}
