#!/usr/bin/env node
// credo-ts 0.6.3 OID4VCI issuer + OID4VP verifier ("party") for idstack interop tests.
//
//   node credo/credo-party.mjs            (LIB_ASKAR_PATH defaults to ./lib/x/aries_askar)
//
// Line protocol: one JSON command per stdin line, exactly one JSON line per command on stdout.
//   {"cmd":"offer","format":"dc+sd-jwt"|"jwt_vc_json"|"mso_mdoc"}
//       -> {"ok":true,"offer_uri":"openid-credential-offer://..."}
//   (mso_mdoc: an mDL signed by a document signer under the party's own IACA, see `info`)
//   {"cmd":"request","format":"dc+sd-jwt"|"jwt_vc_json"|"mso_mdoc","claims":["given_name"]}
//       (mso_mdoc: an mDL's org.iso.18013.5.1 elements; verified against the party's IACA)
//       -> {"ok":true,"request_uri":"openid4vp://...","id":"<verification session id>"}
//   {"cmd":"result","id":"..."}   (waits up to 20 s)
//       -> {"ok":true,"state":"ResponseVerified"|...,"verified":bool,"claims":{...}}
//   {"cmd":"info"} -> {"ok":true, base_url, issuer_did, verifier_did, iaca_pem, ...}
//   {"cmd":"shutdown"} -> {"ok":true} and exit 0
// Errors: {"ok":false,"error":"..."}; the process keeps running. Logs go to stderr only
// (CREDO_PARTY_VERBOSE=1 for the credo debug logger).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
if (!process.env.LIB_ASKAR_PATH) {
  const local = path.join(here, 'lib', 'x', 'aries_askar');
  if (fs.existsSync(path.join(local, 'libaries_askar.so'))) process.env.LIB_ASKAR_PATH = local;
}

// Anything written to stdout that is not a protocol answer would corrupt the protocol: send
// console.log/info/debug to stderr, and keep a private handle on the real stdout.
const out = process.stdout.write.bind(process.stdout);
for (const m of ['log', 'info', 'debug', 'warn']) console[m] = (...a) => process.stderr.write(a.map(String).join(' ') + '\n');
const log = (...a) => process.stderr.write(`[credo-party] ${a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ')}\n`);
const reply = (obj) => out(JSON.stringify(obj) + '\n');

// askar-nodejs MUST be imported before @credo-ts/askar.
const { askar } = await import('@openwallet-foundation/askar-nodejs');
const { AskarModule } = await import('@credo-ts/askar');
const core = await import('@credo-ts/core');
const { Agent, ConsoleLogger, LogLevel, W3cCredential, W3cCredentialSubject, ClaimFormat, Kms, X509KeyUsage, X509ExtendedKeyUsage } = core;
const { agentDependencies } = await import('@credo-ts/node');
const { OpenId4VcModule, OpenId4VcVerificationSessionState } = await import('@credo-ts/openid4vc');
const express = (await import('express')).default;

// ---------------------------------------------------------------------------------------------
// Fixed credential data
const CLAIMS = { given_name: 'Erika', family_name: 'Mustermann', email: 'erika@example.org' };
const SD_JWT_CONFIG_ID = 'PersonSdJwt';
const JWT_VC_CONFIG_ID = 'PersonJwtVc';
const SD_JWT_VCT = 'https://credo-party.example/vct/person';
const W3C_TYPE = ['VerifiableCredential', 'PersonCredential'];
const MDL_CONFIG_ID = 'PersonMdl';
const MDL_DOCTYPE = 'org.iso.18013.5.1.mDL';
const MDL_NAMESPACE = 'org.iso.18013.5.1';
// The country of the party's IACA and document signer: an mDL's issuing_country must equal it.
const MDL_COUNTRY = 'UT';
const ALGS = ['EdDSA', 'ES256'];

// ---------------------------------------------------------------------------------------------
// HTTP server first (port 0), so the base URLs are known before the agent is built.
const app = express();
app.use((req, _res, next) => {
  log(`http ${req.method} ${req.originalUrl}`);
  next();
});
// Keep the raw direct_post bodies the wallet sends to the verifier, keyed by URL (= response_uri),
// so a failed `result` can show exactly what the wallet posted. Parsing here is harmless: credo's
// own body parsers see a finished request and keep req.body.
const postedResponses = new Map();
const tapUrlencoded = express.urlencoded({ extended: false });
const tapJson = express.json();
app.use('/oid4vp', (req, res, next) => {
  if (req.method !== 'POST') return next();
  tapUrlencoded(req, res, (e1) => {
    if (e1) return next(e1);
    tapJson(req, res, (e2) => {
      if (e2) return next(e2);
      postedResponses.set(`${baseUrl}${req.originalUrl}`, { ...req.body });
      next();
    });
  });
});
const server = await new Promise((resolve, reject) => {
  const s = app.listen(0, '127.0.0.1', () => resolve(s));
  s.on('error', reject);
});
const port = server.address().port;
const baseUrl = `http://127.0.0.1:${port}`;
const ISSUER_ID = 'party-issuer';
const VERIFIER_ID = 'party-verifier';
const issuerBaseUrl = `${baseUrl}/oid4vci`;
const verifierBaseUrl = `${baseUrl}/oid4vp`;

let issuerDidUrl; // set after agent init
let issuerDid;
let mdocSigner; // the document signer certificate (with its KMS key id), set after agent init

function credentialMapper({ holderBinding, credentialConfigurationId, credentialConfiguration }) {
  const now = Math.floor(Date.now() / 1000);
  if (credentialConfigurationId === SD_JWT_CONFIG_ID) {
    return {
      type: 'credentials',
      format: ClaimFormat.SdJwtDc,
      credentials: holderBinding.keys.map((k) => ({
        payload: { vct: credentialConfiguration.vct, iat: now, nbf: now, exp: now + 365 * 86400, ...CLAIMS },
        holder: k.method === 'did' ? { method: 'did', didUrl: k.didUrl } : { method: 'jwk', jwk: k.jwk },
        issuer: { method: 'did', didUrl: issuerDidUrl },
        disclosureFrame: { _sd: Object.keys(CLAIMS) },
      })),
    };
  }
  if (credentialConfigurationId === JWT_VC_CONFIG_ID) {
    return {
      type: 'credentials',
      format: ClaimFormat.JwtVc,
      credentials: holderBinding.keys.map((k) => {
        if (k.method !== 'did') throw new Error('jwt_vc_json requires did holder binding');
        return {
          verificationMethod: issuerDidUrl,
          credential: new W3cCredential({
            type: W3C_TYPE,
            issuer: issuerDid,
            issuanceDate: new Date().toISOString(),
            expirationDate: new Date(Date.now() + 365 * 86400 * 1000).toISOString(),
            credentialSubject: new W3cCredentialSubject({ id: k.didUrl.split('#')[0], claims: { ...CLAIMS } }),
          }),
        };
      }),
    };
  }
  if (credentialConfigurationId === MDL_CONFIG_ID) {
    return {
      type: 'credentials',
      format: ClaimFormat.MsoMdoc,
      credentials: holderBinding.keys.map((k) => {
        if (k.method !== 'jwk') throw new Error('mso_mdoc requires jwk holder binding');
        return {
          docType: MDL_DOCTYPE,
          issuerCertificate: mdocSigner,
          holderKey: k.jwk,
          namespaces: {
            [MDL_NAMESPACE]: {
              ...CLAIMS_MDL,
              issue_date: new core.DateOnly(new Date().toISOString().slice(0, 10)),
              expiry_date: new core.DateOnly(new Date(Date.now() + 365 * 86400 * 1000).toISOString().slice(0, 10)),
            },
          },
        };
      }),
    };
  }
  throw new Error(`unknown credential configuration ${credentialConfigurationId}`);
}

const CLAIMS_MDL = {
  given_name: CLAIMS.given_name, family_name: CLAIMS.family_name, age_over_18: true,
  issuing_country: MDL_COUNTRY, issuing_authority: 'credo-party DMV', document_number: 'CP-1',
};

const agent = new Agent({
  config: {
    allowInsecureHttpUrls: true,
    ...(process.env.CREDO_PARTY_VERBOSE ? { logger: new ConsoleLogger(LogLevel.debug) } : {}),
  },
  dependencies: agentDependencies,
  modules: {
    askar: new AskarModule({
      askar,
      store: {
        id: `party-${crypto.randomUUID()}`, key: 'party-test-key', keyDerivationMethod: 'kdf:argon2i:int',
        database: { type: 'sqlite', config: { inMemory: true } },
      },
    }),
    openid4vc: new OpenId4VcModule({
      app,
      issuer: {
        baseUrl: issuerBaseUrl,
        credentialRequestToCredentialMapper: credentialMapper,
        statefulCredentialOfferExpirationInSeconds: 600,
        accessTokenExpiresInSeconds: 600,
        cNonceExpiresInSeconds: 300,
      },
      verifier: {
        baseUrl: verifierBaseUrl,
        authorizationRequestExpirationInSeconds: 600,
      },
    }),
  },
});
await agent.initialize();

// did:key Ed25519 for issuer and verifier (request signer).
async function createDidKey() {
  const r = await agent.dids.create({ method: 'key', options: { createKey: { type: { kty: 'OKP', crv: 'Ed25519' } } } });
  if (r.didState.state !== 'finished') throw new Error(`did:key creation failed: ${JSON.stringify(r.didState)}`);
  return { did: r.didState.did, didUrl: r.didState.didDocument.verificationMethod[0].id };
}
const issuerKey = await createDidKey();
issuerDid = issuerKey.did;
issuerDidUrl = issuerKey.didUrl;
const verifierKey = await createDidKey();

// mso_mdoc: an IACA (self-signed CA) and a document signer under it (ISO 18013-5 Annex B:
// digitalSignature, extended key usage mdlDS), P-256 keys in the agent's KMS.
async function createMdocPki() {
  const p256 = { type: { kty: 'EC', crv: 'P-256' } };
  const iacaKey = await agent.kms.createKey(p256);
  const dsKey = await agent.kms.createKey(p256);
  const iacaName = { countryName: MDL_COUNTRY, commonName: 'credo-party IACA' };
  const validity = { notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 365 * 86400 * 1000) };
  const authorityKey = Kms.PublicJwk.fromPublicJwk(iacaKey.publicJwk);
  const iaca = await agent.x509.createCertificate({
    authorityKey, issuer: iacaName, validity,
    extensions: {
      basicConstraints: { ca: true, pathLenConstraint: 0, markAsCritical: true },
      keyUsage: { usages: [X509KeyUsage.KeyCertSign, X509KeyUsage.CrlSign], markAsCritical: true },
      subjectKeyIdentifier: { include: true },
    },
  });
  const ds = await agent.x509.createCertificate({
    authorityKey, subjectPublicKey: Kms.PublicJwk.fromPublicJwk(dsKey.publicJwk),
    issuer: iacaName, subject: { countryName: MDL_COUNTRY, commonName: 'credo-party document signer' }, validity,
    extensions: {
      keyUsage: { usages: [X509KeyUsage.DigitalSignature], markAsCritical: true },
      extendedKeyUsage: { usages: [X509ExtendedKeyUsage.MdlDs], markAsCritical: true },
      authorityKeyIdentifier: { include: true },
      subjectKeyIdentifier: { include: true },
    },
  });
  ds.keyId = dsKey.keyId;
  return { iaca, ds };
}
const mdocPki = await createMdocPki();
mdocSigner = mdocPki.ds;
agent.x509.config.setTrustedCertificates([mdocPki.iaca.toString('base64')]);

const proofTypes = { jwt: { proof_signing_alg_values_supported: ALGS } };
await agent.openid4vc.issuer.createIssuer({
  issuerId: ISSUER_ID,
  display: [{ name: 'credo-party issuer', locale: 'en' }],
  credentialConfigurationsSupported: {
    [SD_JWT_CONFIG_ID]: {
      format: 'dc+sd-jwt',
      vct: SD_JWT_VCT,
      scope: 'person_sd_jwt',
      cryptographic_binding_methods_supported: ['jwk', 'did:key', 'did:jwk'],
      credential_signing_alg_values_supported: ['EdDSA'],
      proof_types_supported: proofTypes,
      credential_metadata: {
        display: [{ name: 'Person (SD-JWT)', locale: 'en' }],
        claims: Object.keys(CLAIMS).map((c) => ({ path: [c], display: [{ name: c, locale: 'en' }] })),
      },
    },
    [JWT_VC_CONFIG_ID]: {
      format: 'jwt_vc_json',
      scope: 'person_jwt_vc',
      credential_definition: { type: W3C_TYPE },
      cryptographic_binding_methods_supported: ['did:key', 'did:jwk'],
      credential_signing_alg_values_supported: ['EdDSA'],
      proof_types_supported: proofTypes,
      credential_metadata: {
        display: [{ name: 'Person (JWT VC)', locale: 'en' }],
        claims: Object.keys(CLAIMS).map((c) => ({ path: ['credentialSubject', c], display: [{ name: c, locale: 'en' }] })),
      },
    },
    [MDL_CONFIG_ID]: {
      format: 'mso_mdoc',
      doctype: MDL_DOCTYPE,
      scope: 'person_mdl',
      cryptographic_binding_methods_supported: ['cose_key'],
      credential_signing_alg_values_supported: [-7],
      proof_types_supported: { jwt: { proof_signing_alg_values_supported: ['ES256'] } },
      credential_metadata: {
        display: [{ name: 'mDL', locale: 'en' }],
        claims: Object.keys(CLAIMS_MDL).map((c) => ({ path: [MDL_NAMESPACE, c], display: [{ name: c, locale: 'en' }] })),
      },
    },
  },
});
await agent.openid4vc.verifier.createVerifier({ verifierId: VERIFIER_ID, clientMetadata: { client_name: 'credo-party verifier' } });

log(`ready on ${baseUrl} issuer=${issuerDid} verifier=${verifierKey.did}`);

// ---------------------------------------------------------------------------------------------
const FORMATS = ['dc+sd-jwt', 'jwt_vc_json', 'mso_mdoc'];
function checkFormat(f) {
  if (!FORMATS.includes(f)) throw new Error(`format must be one of ${FORMATS.join(', ')}`);
}
const OFFERED = { 'dc+sd-jwt': SD_JWT_CONFIG_ID, jwt_vc_json: JWT_VC_CONFIG_ID, mso_mdoc: MDL_CONFIG_ID };

async function cmdOffer({ format }) {
  const configId = OFFERED[format];
  if (!configId) throw new Error(`format must be one of ${Object.keys(OFFERED).join(', ')}`);
  const { credentialOffer, issuanceSession } = await agent.openid4vc.issuer.createCredentialOffer({
    issuerId: ISSUER_ID,
    credentialConfigurationIds: [configId],
    preAuthorizedCodeFlowConfig: {},
    version: 'v1',
  });
  log(`offer session ${issuanceSession.id}: ${credentialOffer}`);
  return { offer_uri: credentialOffer, issuance_session_id: issuanceSession.id };
}

async function cmdRequest({ format, claims }) {
  checkFormat(format);
  if (!Array.isArray(claims) || claims.length === 0 || !claims.every((c) => typeof c === 'string')) {
    throw new Error('claims must be a non-empty array of claim names');
  }
  const credential = {
    'dc+sd-jwt': { id: 'person', format: 'dc+sd-jwt', meta: { vct_values: [SD_JWT_VCT] }, claims: claims.map((c) => ({ path: [c] })) },
    jwt_vc_json: { id: 'person', format: 'jwt_vc_json', meta: { type_values: [W3C_TYPE] }, claims: claims.map((c) => ({ path: ['credentialSubject', c] })) },
    mso_mdoc: { id: 'person', format: 'mso_mdoc', meta: { doctype_value: MDL_DOCTYPE }, claims: claims.map((c) => ({ path: [MDL_NAMESPACE, c], intent_to_retain: false })) },
  }[format];
  const { authorizationRequest, verificationSession } = await agent.openid4vc.verifier.createAuthorizationRequest({
    verifierId: VERIFIER_ID,
    requestSigner: { method: 'did', didUrl: verifierKey.didUrl },
    dcql: { query: { credentials: [credential] } },
    responseMode: 'direct_post',
    version: 'v1',
  });
  log(`verification session ${verificationSession.id}: ${authorizationRequest}`);
  return { request_uri: authorizationRequest, id: verificationSession.id };
}

function toPlain(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

// Disclosed claims out of the verified DCQL presentations.
function extractClaims(dcql) {
  const claims = {};
  for (const [, presList] of Object.entries(dcql?.presentations ?? {})) {
    for (const p of Array.isArray(presList) ? presList : [presList]) {
      if (Array.isArray(p?.documents)) {
        // mdoc DeviceResponse: the disclosed issuer-signed elements, by namespace.
        for (const d of p.documents) Object.assign(claims, toPlain(d.issuerSignedNamespaces));
      } else if (p?.prettyClaims) {
        // SD-JWT VC: the disclosed payload (minus the registered JWT claims).
        const { iss, iat, nbf, exp, cnf, vct, status, sub, _sd_alg, ...rest } = p.prettyClaims;
        Object.assign(claims, rest);
      } else if (p?.presentation?.verifiableCredential || p?.verifiableCredential) {
        const vp = p.presentation ?? p;
        const vcs = Array.isArray(vp.verifiableCredential) ? vp.verifiableCredential : [vp.verifiableCredential];
        for (const vc of vcs) {
          const cred = vc.credential ?? vc;
          const subjects = Array.isArray(cred.credentialSubject) ? cred.credentialSubject : [cred.credentialSubject];
          for (const s of subjects) Object.assign(claims, toPlain(s?.claims ?? s) ?? {});
        }
      }
    }
  }
  delete claims.id;
  return claims;
}

async function cmdResult({ id }) {
  if (typeof id !== 'string') throw new Error('id must be a string');
  const deadline = Date.now() + 20_000;
  let session = await agent.openid4vc.verifier.getVerificationSessionById(id);
  const done = (s) => s.state === OpenId4VcVerificationSessionState.ResponseVerified || s.state === OpenId4VcVerificationSessionState.Error;
  while (!done(session) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    session = await agent.openid4vc.verifier.getVerificationSessionById(id);
  }
  const result = { state: session.state, verified: session.state === OpenId4VcVerificationSessionState.ResponseVerified, claims: {} };
  if (session.errorMessage) result.error_message = session.errorMessage;
  // On failure, hand back what the wallet posted (for diagnosing the wallet side).
  if (session.state === OpenId4VcVerificationSessionState.Error) {
    let payload = session.authorizationResponsePayload;
    if (!payload) {
      let responseUri = session.authorizationRequestPayload?.response_uri;
      if (!responseUri && session.authorizationRequestJwt) {
        responseUri = JSON.parse(Buffer.from(session.authorizationRequestJwt.split('.')[1], 'base64url')).response_uri;
      }
      payload = responseUri && postedResponses.get(responseUri);
    }
    if (payload) result.response_payload = toPlain(payload);
  }
  if (result.verified) {
    const verified = await agent.openid4vc.verifier.getVerifiedAuthorizationResponse(id);
    result.claims = extractClaims(verified.dcql);
    if (verified.dcql?.presentationResult) result.dcql_can_be_satisfied = verified.dcql.presentationResult.can_be_satisfied;
  } else if (!done(session)) {
    result.timeout = true;
  }
  return result;
}

let shuttingDown = false;
async function shutdown(code = 0) {
  if (shuttingDown) return;
  shuttingDown = true;
  try { await agent.shutdown(); } catch (e) { log(`agent shutdown: ${e}`); }
  server.close();
  process.exit(code);
}

const handlers = { offer: cmdOffer, request: cmdRequest, result: cmdResult, info: async () => ({ base_url: baseUrl, issuer_did: issuerDid, verifier_did: verifierKey.did, issuer_url: `${issuerBaseUrl}/${ISSUER_ID}`, vct: SD_JWT_VCT, w3c_type: W3C_TYPE, iaca_pem: mdocPki.iaca.toString('pem') }) };

// Commands are processed strictly in order (one answer line per command, in order).
let chain = Promise.resolve();
const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      reply({ ok: false, error: `invalid JSON: ${e.message}` });
      return;
    }
    if (msg?.cmd === 'shutdown') {
      reply({ ok: true });
      await shutdown(0);
      return;
    }
    const h = handlers[msg?.cmd];
    if (!h) {
      reply({ ok: false, error: `unknown cmd ${JSON.stringify(msg?.cmd)}` });
      return;
    }
    try {
      reply({ ok: true, ...(await h(msg)) });
    } catch (e) {
      log(`${msg.cmd} failed: ${e?.stack ?? e}`);
      reply({ ok: false, error: String(e?.message ?? e) });
    }
  });
});
rl.on('close', () => chain.then(() => shutdown(0)));
process.on('SIGTERM', () => shutdown(0));
process.on('unhandledRejection', (e) => log(`unhandled rejection: ${e?.stack ?? e}`));
