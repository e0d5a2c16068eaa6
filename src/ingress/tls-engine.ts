/**
 * Which engine terminates TLS on ingress (`ingress.tls_engine`): "node" (Node's TLSSocket, every
 * feature, in the main thread or worker threads), "native" (the addon's relay, worker threads only),
 * or "auto": native where the config asks for nothing it lacks and ingress runs in worker threads,
 * else node. The rule of what the native engine lacks is the config's (nativeEngineConflicts), so
 * an explicit "native" is refused for exactly what makes "auto" choose node.
 */
import { nativeEngineConflicts } from '../config/validate.js';
import type { RuntimeConfig } from '../config/schema.js';
import { RuntimeError } from '../core/errors.js';

export interface TlsEngineChoice {
  engine: 'node' | 'native';
  /** Why "auto" chose node; undefined when nothing kept it from native (or the engine was named). */
  why?: string;
}

/** `nativeUnavailable`: why the addon cannot load here (nativeUnavailable()), undefined when it can. */
export function chooseTlsEngine(config: RuntimeConfig, nativeUnavailable: string | undefined): TlsEngineChoice {
  const { ingress } = config;
  if (ingress.tlsEngine === 'node') return { engine: 'node' };
  if (ingress.tlsEngine === 'native') {
    if (nativeUnavailable !== undefined)
      throw new RuntimeError(
        'ERR_NATIVE_MISSING',
        `ingress.tls_engine = "native" needs the addon: ${nativeUnavailable}`,
      );
    return { engine: 'native' };
  }
  if (!config.tls.enabled) return { engine: 'node', why: 'tls.enabled = false' };
  if (ingress.workers === 1) return { engine: 'node', why: 'ingress.workers = 1 keeps ingress in the main thread' };
  if (nativeUnavailable !== undefined) return { engine: 'node', why: `the addon: ${nativeUnavailable}` };
  const conflicts = nativeEngineConflicts(config);
  if (conflicts.length > 0) return { engine: 'node', why: conflicts.join('; ') };
  return { engine: 'native' };
}
