/**
 * A fake AWS KMS for tests and dev, on loopback: the KMS JSON protocol (POST /, X-Amz-Target
 * TrentService.*, application/x-amz-json-1.1), SigV4 checked against known credentials, and the
 * Recipient handling of the real service: the attestation document must verify against the given
 * root and match a PCR set of the key policy, and the answer is CiphertextForRecipient, a CMS
 * EnvelopedData made by `openssl cms -encrypt` for the document's public_key. Test code only.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import { verifyAttestation } from '../../src/verify/verifier.js';
import { defaultSimulatedPcr } from '../../src/attestation/sim-nsm.js';
import { opensslCmsEncrypt } from './openssl-cms.js';
import { errorCode } from '../../src/core/errors.js';

const MAX_REQUEST_BYTES = 1024 * 1024;
const BLOB_MAGIC = Buffer.from('fkms1');
/** KMS refuses documents older than this (its own limit is a few minutes). */
const MAX_DOCUMENT_AGE_MS = 5 * 60 * 1000;

export interface FakeKmsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface FakeKmsOptions {
  /** PEM of the root that documents must chain to; read on every request (the runtime may create it after the fake starts). */
  root: () => string;
  /** The key policy's kms:RecipientAttestation:PCRn conditions: a document must match one whole set. */
  expectedPcrs: Array<Record<number, Uint8Array>>;
  credentials: FakeKmsCredentials;
  region?: string;
}

export interface FakeKmsCall {
  target: string;
  recipient: boolean;
  status: number;
  kmsCode?: string;
}

export interface FakeKms {
  readonly url: string;
  readonly region: string;
  readonly keyArn: string;
  readonly alias: string;
  /** Every request, in order: operation, whether it carried a Recipient, and the answer's status and error. */
  readonly calls: FakeKmsCall[];
  /** Errors to answer with, first in first out, before any real handling (throttling, 5xx). */
  readonly script: Array<{ status: number; type: string }>;
  /** A CiphertextBlob that only this fake can decrypt, as `aws kms encrypt` would return. */
  encrypt(plaintext: Uint8Array): Buffer;
  close(): Promise<void>;
}

class KmsFault extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

/** Starts the fake on 127.0.0.1 with an ephemeral port. */
export async function startFakeKms(options: FakeKmsOptions): Promise<FakeKms> {
  const region = options.region ?? 'us-east-1';
  const masterKey = randomBytes(32);
  const keyUuid = randomUUID();
  const keyArn = `arn:aws:kms:${region}:111122223333:key/${keyUuid}`;
  const alias = 'alias/enclave-secrets';
  const calls: FakeKmsCall[] = [];
  const script: Array<{ status: number; type: string }> = [];
  const signer = new SignatureV4({
    service: 'kms',
    region,
    credentials: options.credentials,
    sha256: Hash.bind(null, 'sha256'),
  });

  const encrypt = (plaintext: Uint8Array): Buffer => {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', masterKey, iv);
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([BLOB_MAGIC, iv, cipher.getAuthTag(), body]);
  };
  const decryptBlob = (blob: Buffer): Buffer => {
    if (blob.length < BLOB_MAGIC.length + 28 || !blob.subarray(0, BLOB_MAGIC.length).equals(BLOB_MAGIC))
      throw new KmsFault(400, 'InvalidCiphertextException', 'not a ciphertext of this KMS');
    const iv = blob.subarray(5, 17);
    const tag = blob.subarray(17, 33);
    try {
      const decipher = createDecipheriv('aes-256-gcm', masterKey, iv);
      decipher.setAuthTag(tag);
      return Buffer.concat([decipher.update(blob.subarray(33)), decipher.final()]);
    } catch {
      throw new KmsFault(400, 'InvalidCiphertextException', 'the ciphertext is invalid');
    }
  };
  const checkKeyId = (keyId: unknown) => {
    if (keyId !== undefined && keyId !== keyArn && keyId !== alias && keyId !== keyUuid)
      throw new KmsFault(
        400,
        'IncorrectKeyException',
        'the key ID in the request does not identify the key that encrypted the ciphertext',
      );
  };

  /** What KMS does with a Recipient: verify the document and its PCRs, then encrypt to its public_key. */
  const forRecipient = async (recipient: unknown, plaintext: Buffer): Promise<string> => {
    const { AttestationDocument, KeyEncryptionAlgorithm } = (recipient ?? {}) as Record<string, unknown>;
    if (KeyEncryptionAlgorithm !== 'RSAES_OAEP_SHA_256')
      throw new KmsFault(400, 'ValidationException', 'KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256');
    if (typeof AttestationDocument !== 'string')
      throw new KmsFault(400, 'ValidationException', 'AttestationDocument is required');
    let document;
    try {
      document = verifyAttestation(Buffer.from(AttestationDocument, 'base64'), {
        root: options.root(),
        expectedPcrs: options.expectedPcrs,
      }).document;
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ERR_ATTESTATION_PCR')
        throw new KmsFault(
          400,
          'AccessDeniedException',
          'the attestation document does not satisfy the kms:RecipientAttestation:PCR conditions of the key policy',
        );
      throw new KmsFault(400, 'ValidationException', `the attestation document is not valid (${code})`);
    }
    if (Math.abs(Date.now() - document.timestamp) > MAX_DOCUMENT_AGE_MS)
      throw new KmsFault(400, 'ValidationException', 'the attestation document is too old');
    if (document.publicKey === null)
      throw new KmsFault(400, 'ValidationException', 'the attestation document has no public key');
    const envelope = await opensslCmsEncrypt(plaintext, document.publicKey, { stream: true, keyid: true });
    return envelope.toString('base64');
  };

  const handle = async (target: string, input: Record<string, unknown>): Promise<Record<string, unknown>> => {
    const recipient = input.Recipient !== undefined;
    switch (target) {
      case 'Decrypt': {
        if (typeof input.CiphertextBlob !== 'string')
          throw new KmsFault(400, 'ValidationException', 'CiphertextBlob is required');
        checkKeyId(input.KeyId);
        const plaintext = decryptBlob(Buffer.from(input.CiphertextBlob, 'base64'));
        try {
          const answer = recipient
            ? { CiphertextForRecipient: await forRecipient(input.Recipient, plaintext) }
            : { Plaintext: plaintext.toString('base64') };
          return { KeyId: keyArn, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT', ...answer };
        } finally {
          plaintext.fill(0);
        }
      }
      case 'GenerateDataKey': {
        checkKeyId(input.KeyId);
        const size =
          typeof input.NumberOfBytes === 'number' ? input.NumberOfBytes : input.KeySpec === 'AES_128' ? 16 : 32;
        const dataKey = randomBytes(size);
        const answer = recipient
          ? { CiphertextForRecipient: await forRecipient(input.Recipient, dataKey) }
          : { Plaintext: dataKey.toString('base64') };
        return { KeyId: keyArn, CiphertextBlob: encrypt(dataKey).toString('base64'), ...answer };
      }
      case 'GenerateRandom': {
        const size = typeof input.NumberOfBytes === 'number' ? input.NumberOfBytes : 32;
        const random = randomBytes(size);
        return recipient
          ? { CiphertextForRecipient: await forRecipient(input.Recipient, random) }
          : { Plaintext: random.toString('base64') };
      }
      default:
        throw new KmsFault(400, 'UnknownOperationException', `unknown operation ${target}`);
    }
  };

  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    let size = 0;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_REQUEST_BYTES) chunks.push(chunk);
    });
    request.on('end', () => {
      const targetHeader = String(request.headers['x-amz-target'] ?? '');
      const target = targetHeader.startsWith('TrentService.')
        ? targetHeader.slice('TrentService.'.length)
        : targetHeader;
      const body = Buffer.concat(chunks).toString('utf8');
      let recipient = false;
      const answer = async (): Promise<Record<string, unknown>> => {
        if (size > MAX_REQUEST_BYTES) throw new KmsFault(413, 'ValidationException', 'request too large');
        if (request.method !== 'POST' || request.url !== '/')
          throw new KmsFault(404, 'UnknownOperationException', 'POST / only');
        if (request.headers['content-type'] !== 'application/x-amz-json-1.1')
          throw new KmsFault(400, 'ValidationException', 'content-type must be application/x-amz-json-1.1');
        await checkSignature(signer, options.credentials, region, request, body);
        const input = JSON.parse(body) as Record<string, unknown>;
        recipient = input.Recipient !== undefined;
        const scripted = script.shift();
        if (scripted) throw new KmsFault(scripted.status, scripted.type, 'scripted failure');
        return handle(target, input);
      };
      answer().then(
        (json) => {
          calls.push({ target, recipient, status: 200 });
          response.writeHead(200, { 'content-type': 'application/x-amz-json-1.1' }).end(JSON.stringify(json));
        },
        (error: unknown) => {
          const fault = error instanceof KmsFault ? error : new KmsFault(500, 'KMSInternalException', 'internal error');
          calls.push({ target, recipient, status: fault.status, kmsCode: fault.type });
          response
            .writeHead(fault.status, {
              'content-type': 'application/x-amz-json-1.1',
              'x-amzn-errortype': `${fault.type}:http://internal.amazon.com/coral/com.amazon.coral.service/`,
            })
            .end(JSON.stringify({ __type: `com.amazonaws.kms#${fault.type}`, message: fault.message }));
        },
      );
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    region,
    keyArn,
    alias,
    calls,
    script,
    encrypt,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Recomputes the SigV4 signature over the headers the client says it signed, at the time it says it signed. */
async function checkSignature(
  signer: SignatureV4,
  credentials: FakeKmsCredentials,
  region: string,
  request: http.IncomingMessage,
  body: string,
): Promise<void> {
  const authorization = String(request.headers.authorization ?? '');
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/kms\/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}$/.exec(
      authorization,
    );
  if (!match) throw new KmsFault(400, 'IncompleteSignatureException', 'missing or malformed Authorization');
  const [, accessKeyId, , scopeRegion, signedHeaders] = match;
  if (accessKeyId !== credentials.accessKeyId)
    throw new KmsFault(400, 'UnrecognizedClientException', 'the security token included in the request is invalid');
  if (scopeRegion !== region)
    throw new KmsFault(400, 'InvalidSignatureException', `credential scope region ${scopeRegion} is not ${region}`);
  const names = signedHeaders!.split(';');
  for (const required of ['host', 'x-amz-date', 'x-amz-target', 'content-type']) {
    if (!names.includes(required)) throw new KmsFault(400, 'InvalidSignatureException', `${required} is not signed`);
  }
  if (credentials.sessionToken !== undefined && request.headers['x-amz-security-token'] !== credentials.sessionToken) {
    throw new KmsFault(400, 'UnrecognizedClientException', 'the session token is missing or wrong');
  }
  const date = String(request.headers['x-amz-date'] ?? '');
  const parsed = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(date);
  if (!parsed) throw new KmsFault(400, 'InvalidSignatureException', 'bad X-Amz-Date');
  const signingDate = new Date(
    Date.UTC(+parsed[1]!, +parsed[2]! - 1, +parsed[3]!, +parsed[4]!, +parsed[5]!, +parsed[6]!),
  );
  if (Math.abs(Date.now() - signingDate.getTime()) > 5 * 60 * 1000)
    throw new KmsFault(400, 'InvalidSignatureException', 'signature expired');
  const headers: Record<string, string> = {};
  for (const name of names) headers[name] = String(request.headers[name] ?? '');
  const [hostname, port] = (headers.host ?? '').split(':');
  const expected = await signer.sign(
    {
      method: 'POST',
      protocol: 'http:',
      hostname: hostname!,
      ...(port ? { port: Number(port) } : {}),
      path: '/',
      query: {},
      headers,
      body,
    },
    { signingDate },
  );
  if (expected.headers.authorization !== authorization)
    throw new KmsFault(400, 'InvalidSignatureException', 'the request signature does not match');
}

/**
 * A fake KMS whose key policy names the simulated NSM's default PCR0-2 and whose documents must
 * chain to the root the runtime writes into `stateDir` (it may appear after the fake starts).
 */
export function startFakeKmsForStateDir(stateDir: () => string, credentials: FakeKmsCredentials): Promise<FakeKms> {
  return startFakeKms({
    root: () => readFileSync(join(stateDir(), 'sim-nsm-root.pem'), 'utf8'),
    expectedPcrs: [{ 0: defaultSimulatedPcr(0), 1: defaultSimulatedPcr(1), 2: defaultSimulatedPcr(2) }],
    credentials,
  });
}
