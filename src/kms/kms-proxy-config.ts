import type { Nsm } from '../attestation/nsm.js';
import type { RuntimeConfig } from '../config/schema.js';
import type { Logger } from '../core/log.js';
import { KmsClient } from './kms-client.js';
import { startKmsProxy, type KmsProxy } from './kms-proxy.js';
import { kmsDispatcher, kmsSettings } from './kms-settings.js';

/** The KMS proxy as [kms] configures it: the same client, credentials and way out as the boot secrets. */
export async function startKmsProxyFromConfig(
  config: Pick<RuntimeConfig, 'kms' | 'egress'>,
  nsm: Nsm,
  logger: Logger,
): Promise<KmsProxy> {
  const dispatcher = kmsDispatcher(config);
  try {
    const kms = new KmsClient({ ...kmsSettings(config.kms), dispatcher, logger });
    const proxy = await startKmsProxy({ listen: config.kms.proxyListen, kms, nsm, logger });
    return {
      address: proxy.address,
      stats: proxy.stats,
      close: async () => {
        await proxy.close();
        await dispatcher.close();
      },
    };
  } catch (error) {
    await dispatcher.close();
    throw error;
  }
}
