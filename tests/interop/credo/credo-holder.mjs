#!/usr/bin/env node
// credo-ts 0.6.3 OID4VC holder (Animo's full agent) for idstack interop tests.
//
//   LIB_ASKAR_PATH=... node credo/credo-holder.mjs --offer <openid-credential-offer://...> [--tx-code X]
//   LIB_ASKAR_PATH=... node credo/credo-holder.mjs --offer <...> [--tx-code X] --present <openid4vp://...>
//   ... [--trust <PEM file>]: X.509 trust anchors (an mdoc issuer's IACA) for receiving and presenting mdocs
//
// Prints JSON lines on stdout; exits 1 on failure. Run ../install.sh first (askar native library).
// askar-nodejs MUST be imported before @credo-ts/askar (otherwise key operations fail with
// "Cannot read properties of undefined (reading 'keyGetJwkSecret')").
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// Default LIB_ASKAR_PATH to the library install.sh unpacked from the PyPI aries-askar wheel.
const here = path.dirname(fileURLToPath(import.meta.url));
if (!process.env.LIB_ASKAR_PATH) {
  const local = path.join(here, 'lib', 'x', 'aries_askar');
  if (fs.existsSync(path.join(local, 'libaries_askar.so'))) process.env.LIB_ASKAR_PATH = local;
}
// Dynamic imports, in this order, after the environment is set.
const { askar } = await import('@openwallet-foundation/askar-nodejs');
const { AskarModule } = await import('@credo-ts/askar');
const { Agent, Kms, ConsoleLogger, LogLevel } = await import('@credo-ts/core');
const { agentDependencies } = await import('@credo-ts/node');
const { OpenId4VcModule } = await import('@credo-ts/openid4vc');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    if (!['--offer', '--tx-code', '--present', '--trust'].includes(k) || argv[i + 1] === undefined) throw new Error(`bad argument ${k}`);
    out[k.slice(2)] = argv[i + 1];
  }
  return out;
}

function summarize(record) {
  const json = typeof record.toJSON === 'function' ? record.toJSON() : record;
  return json;
}

async function run() {
  const args = parseArgs(process.argv.slice(2));
  if (!args.offer && !args.present) throw new Error('usage: credo-holder.mjs --offer <uri> [--tx-code X] [--present <openid4vp uri>]');
  const agent = new Agent({
    config: {
      allowInsecureHttpUrls: true,
      ...(process.env.INTEROP_VERBOSE ? { logger: new ConsoleLogger(LogLevel.debug) } : {}),
    },
    dependencies: agentDependencies,
    modules: {
      askar: new AskarModule({
        askar,
        store: {
          id: `interop-${crypto.randomUUID()}`, key: 'interop-test-key', keyDerivationMethod: 'kdf:argon2i:int',
          database: { type: 'sqlite', config: { inMemory: true } },
        },
      }),
      openid4vc: new OpenId4VcModule(),
    },
  });
  await agent.initialize();
  if (args.trust) {
    const pems = fs.readFileSync(args.trust, 'utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    for (const pem of pems) agent.x509.config.addTrustedCertificate(pem.replace(/-----[A-Z ]+-----|\s/g, ''));
  }
  const holder = agent.openid4vc.holder;
  try {
    if (args.offer) {
      const offer = await holder.resolveCredentialOffer(args.offer);
      const token = await holder.requestToken({ resolvedCredentialOffer: offer, ...(args['tx-code'] ? { txCode: args['tx-code'] } : {}) });
      const result = await holder.requestCredentials({
        resolvedCredentialOffer: offer,
        ...token,
        credentialBindingResolver: async ({ credentialFormat, proofTypes, supportedDidMethods, supportsAllDidMethods }) => {
          const algs = proofTypes.jwt?.supportedSignatureAlgorithms ?? ['ES256'];
          const useEd = !algs.includes('ES256') && algs.includes('EdDSA');
          const type = useEd ? { kty: 'OKP', crv: 'Ed25519' } : { kty: 'EC', crv: 'P-256' };
          if (credentialFormat === 'mso_mdoc') {
            // an mdoc's device key is a P-256 COSE key
            const key = await agent.kms.createKey({ type: { kty: 'EC', crv: 'P-256' } });
            return { method: 'jwk', keys: [Kms.PublicJwk.fromPublicJwk(key.publicJwk)] };
          }
          if (credentialFormat === 'dc+sd-jwt' || credentialFormat === 'vc+sd-jwt') {
            const key = await agent.kms.createKey({ type });
            return { method: 'jwk', keys: [Kms.PublicJwk.fromPublicJwk(key.publicJwk)] };
          }
          // W3C JWT VCs are bound to a DID: did:jwk or did:key, whichever the issuer lists.
          const method = supportsAllDidMethods || supportedDidMethods?.includes('did:key') ? 'key' : supportedDidMethods?.includes('did:jwk') ? 'jwk' : 'key';
          const did = await agent.dids.create({ method, options: { createKey: { type } } });
          if (did.didState.state !== 'finished') throw new Error(`did:key creation failed: ${JSON.stringify(did.didState)}`);
          const vm = did.didState.didDocument.verificationMethod[0].id;
          return { method: 'did', didUrls: [vm] };
        },
      });
      const stored = [];
      for (const c of result.credentials) {
        // credo 0.6: each entry carries a record with the verified credential(s); store it in the wallet.
        const record = c.record ?? c;
        if (record.type === 'MdocRecord' || c.credentialConfiguration?.format === 'mso_mdoc') await agent.mdoc.store({ record });
        else if (record.type === 'SdJwtVcRecord' || c.credentialConfiguration?.format?.includes('sd-jwt')) await agent.sdJwtVc.store({ record });
        else if (record.type === 'W3cCredentialRecord') await agent.w3cCredentials.store({ record });
        else if (agent.w3cCredentials?.store) await agent.w3cCredentials.store({ record });
        stored.push({ configuration_id: c.credentialConfigurationId, type: record.type, record: summarize(record) });
      }
      process.stdout.write(JSON.stringify({ ok: true, credentials: stored }) + '\n');
    }
    if (args.present) {
      const resolved = await holder.resolveOpenId4VpAuthorizationRequest(args.present);
      if (!resolved.dcql) throw new Error('request has no DCQL query');
      if (!resolved.dcql.queryResult.can_be_satisfied) throw new Error(`wallet cannot satisfy the DCQL query: ${JSON.stringify(resolved.dcql.queryResult)}`);
      const credentials = holder.selectCredentialsForDcqlRequest(resolved.dcql.queryResult);
      const answer = await holder.acceptOpenId4VpAuthorizationRequest({ authorizationRequestPayload: resolved.authorizationRequestPayload, dcql: { credentials } });
      process.stdout.write(JSON.stringify({ ok: answer.ok, server_response: answer.serverResponse }) + '\n');
      if (!answer.ok) throw new Error(`verifier refused: ${JSON.stringify(answer.serverResponse)}`);
    }
  } finally {
    await agent.shutdown();
  }
}

run().then(() => process.exit(0), (e) => {
  process.stderr.write(`error: ${e?.stack ?? e}\n`);
  process.exit(1);
});
