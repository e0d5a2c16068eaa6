/**
 * What PID 1 of an enclave must do that no init system does for it: bring `lo` up (every
 * listener of the runtime and the app is on loopback), set the hostname, and reap orphans.
 * `[runtime] init = "auto"` does them only when the runtime really is PID 1, never on a dev machine.
 */
import { hostname } from 'node:os';
import { setHostname, setInterfaceUp } from '../native/native-binding.js';
import { setChildSubreaper } from '../native/native-reaper.js';
import type { RuntimeConfig } from '../config/schema.js';
import { errorCode, RuntimeError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { ZombieReaper } from './zombie-reaper.js';

export interface InitDuties {
  /** Whether the duties were done (PID 1, or `init = "on"`). */
  readonly active: boolean;
  readonly reaper: ZombieReaper | undefined;
  stop(): void;
}

/** Does the PID 1 duties when they apply; a failure to bring `lo` up is fatal, a hostname failure is not. */
export function startInitDuties(
  settings: Pick<RuntimeConfig['runtime'], 'init' | 'hostname'>,
  logger: Logger,
  pid = process.pid,
): InitDuties {
  const active = settings.init === 'on' || (settings.init === 'auto' && pid === 1);
  if (!active) return { active, reaper: undefined, stop: () => {} };
  try {
    setInterfaceUp('lo');
  } catch (error) {
    throw new RuntimeError('ERR_INIT_LOOPBACK', `cannot bring lo up: ${(error as Error).message}`, { cause: error });
  }
  if (hostname() !== settings.hostname) {
    try {
      setHostname(settings.hostname);
    } catch (error) {
      // A local `docker run` without CAP_SYS_ADMIN lands here; the hostname is cosmetic, lo is not.
      logger.warn({ hostname: settings.hostname, code: errorCode(error) }, 'cannot set the hostname');
    }
  }
  if (pid !== 1) setChildSubreaper();
  const reaper = ZombieReaper.start(logger);
  logger.info({ pid, hostname: hostname(), subreaper: pid !== 1 }, 'init duties done: lo up, reaping orphans');
  return { active, reaper, stop: () => reaper.stop() };
}
