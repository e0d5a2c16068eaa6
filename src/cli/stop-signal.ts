import type { Logger } from '../core/log.js';

/** Signals closer together than this are one user action delivered twice. */
const SAME_SIGNAL_WINDOW_MS = 1000;

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

export interface StopSignal {
  /** Resolves with the first SIGTERM/SIGINT. */
  readonly received: Promise<NodeJS.Signals>;
  /** Removes the handlers, once the service has stopped. */
  dispose(): void;
}

/**
 * The first SIGTERM/SIGINT asks a long-running command to drain and stop; a second one, a second
 * or more later, exits at once. One Ctrl-C arrives twice under `npm start` (from the terminal and
 * forwarded by npm), so signals within SAME_SIGNAL_WINDOW_MS of the first count as one.
 */
export function waitForStopSignal(logger: Logger, onFirst?: (signal: NodeJS.Signals) => void): StopSignal {
  let firstAt: number | undefined;
  let handler: (signal: NodeJS.Signals) => void = () => {};
  const received = new Promise<NodeJS.Signals>((resolve) => {
    handler = (signal) => {
      if (firstAt !== undefined) {
        if (Date.now() - firstAt < SAME_SIGNAL_WINDOW_MS) return;
        logger.warn({ signal }, 'second signal: exiting without draining');
        process.exit(1);
      }
      firstAt = Date.now();
      logger.info({ signal }, 'shutting down');
      onFirst?.(signal);
      resolve(signal);
    };
  });
  for (const signal of STOP_SIGNALS) process.on(signal, handler);
  return {
    received,
    dispose: () => {
      for (const signal of STOP_SIGNALS) process.off(signal, handler);
    },
  };
}
