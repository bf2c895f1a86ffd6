// mso_mdoc holder built from the Animo libraries alone: @openid4vc/openid4vci 0.4.6 receives the
// credential, @animo-id/mdoc 0.5.2 checks it (issuerAuth signature, x5chain to the given IACA,
// value digests, device key = our key) and builds the DeviceResponse, @openid4vc/openid4vp 0.4.6
// resolves the request and submits it. The crypto callbacks are node:crypto and jose, written here.
// usage: node mdoc-holder.mjs --offer <uri> [--tx-code 123456] [--config <id>] --trust <iaca.pem>
//                             [--present <openid4vp://...>] [--tamper transcript|element]
// prints one JSON line: {doctype, namespaces: {ns: {element: value}}, verified, presented?: {status, body}}
import crypto from 'node:crypto';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as jose from 'jose';
import { Openid4vciClient } from '@openid4vc/openid4vci';
import { Openid4vpClient } from '@openid4vc/openid4vp';
import {
  DataItem, DeviceRequest, DeviceResponse, MDoc, Verifier, cborEncode, parseIssuerSigned,
} from '@animo-id/mdoc';
import { callbacks, holderKey } from './lib.mjs';

const { values } = parseArgs({ options: {
  offer: { type: 'string' }, 'tx-code': { type: 'string' }, config: { type: 'string' },
  trust: { type: 'string' }, present: { type: 'string' }, tamper: { type: 'string' },
} });

const sha = (alg, bytes) => new Uint8Array(crypto.createHash(alg.replace('-', '').toLowerCase()).update(bytes).digest());
const COSE_ALGS = { ES256: 'sha256', ES384: 'sha384', ES512: 'sha512' };

// The MdocContext @animo-id/mdoc asks for: digests, COSE_Sign1 with node:crypto (raw r||s
// signatures as COSE wants), and X.509 with node's own X509Certificate.
const x509 = {
  getIssuerNameField: ({ certificate, field }) => new crypto.X509Certificate(certificate).issuer
    .split('\n').filter((l) => l.startsWith(`${field}=`)).map((l) => l.slice(field.length + 1)),
  getPublicKey: async ({ certificate }) => new crypto.X509Certificate(certificate).publicKey.export({ format: 'jwk' }),
  validateCertificateChain: async ({ trustedCertificates, x5chain }) => {
    const chain = x5chain.map((c) => new crypto.X509Certificate(c));
    const anchors = trustedCertificates.map((c) => new crypto.X509Certificate(c));
    const now = Date.now();
    for (const c of [...chain, ...anchors]) {
      if (Date.parse(c.validFrom) > now || Date.parse(c.validTo) < now) throw new Error(`certificate ${c.subject} is not valid now`);
    }
    for (let i = 0; i + 1 < chain.length; i++) {
      if (!chain[i].checkIssued(chain[i + 1]) || !chain[i].verify(chain[i + 1].publicKey)) throw new Error('x5chain is not a chain');
    }
    const last = chain[chain.length - 1];
    const anchored = anchors.some((a) => a.raw.equals(last.raw) || (last.checkIssued(a) && last.verify(a.publicKey)));
    if (!anchored) throw new Error('x5chain does not chain to a trusted IACA');
  },
  getCertificateData: async ({ certificate }) => {
    const c = new crypto.X509Certificate(certificate);
    return {
      issuerName: c.issuer, subjectName: c.subject, serialNumber: c.serialNumber,
      thumbprint: c.fingerprint256.replaceAll(':', '').toLowerCase(),
      notBefore: new Date(c.validFrom), notAfter: new Date(c.validTo), pem: c.toString(),
    };
  },
};
const context = {
  crypto: {
    random: (n) => new Uint8Array(crypto.randomBytes(n)),
    digest: ({ digestAlgorithm, bytes }) => sha(digestAlgorithm, bytes),
    calculateEphemeralMacKeyJwk: () => { throw new Error('MAC device authentication is not used here'); },
  },
  cose: {
    sign1: {
      sign: async ({ sign1, jwk }) => {
        const { data, alg } = sign1.getRawSigningData();
        const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
        return new Uint8Array(crypto.sign(COSE_ALGS[alg], data, { key, dsaEncoding: 'ieee-p1363' }));
      },
      verify: async ({ sign1, jwk, options }) => {
        const { data, alg, signature } = sign1.getRawVerificationData(options);
        const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
        return crypto.verify(COSE_ALGS[alg], data, { key, dsaEncoding: 'ieee-p1363' }, signature);
      },
    },
    mac0: {
      sign: () => { throw new Error('MAC is not used here'); },
      verify: () => { throw new Error('MAC is not used here'); },
    },
  },
  x509,
};

// ---- receive (OpenID4VCI 1.0, pre-authorized code) ----
const client = new Openid4vciClient({ callbacks });
const credentialOffer = await client.resolveCredentialOffer(values.offer);
const issuerMetadata = await client.resolveIssuerMetadata(credentialOffer.credential_issuer);
const { accessTokenResponse } = await client.retrievePreAuthorizedCodeAccessTokenFromOffer({
  credentialOffer, issuerMetadata, txCode: values['tx-code'],
});
const configId = values.config ?? credentialOffer.credential_configuration_ids[0];
const config = issuerMetadata.credentialIssuer.credential_configurations_supported[configId];
if (config.format !== 'mso_mdoc') throw new Error(`${configId} is ${config.format}, not mso_mdoc`);
const holder = await holderKey('ES256');
const { c_nonce } = await client.requestNonce({ issuerMetadata });
const { jwt } = await client.createCredentialRequestJwtProof({
  issuerMetadata, credentialConfigurationId: configId, nonce: c_nonce,
  signer: { method: 'jwk', publicJwk: holder.publicJwk, alg: 'ES256' },
});
const response = await client.retrieveCredentials({
  issuerMetadata, accessToken: accessTokenResponse.access_token, credentialConfigurationId: configId, proofs: { jwt: [jwt] },
});
const issuerSigned = Buffer.from(response.credentialResponse.credentials[0].credential, 'base64url');

// ---- check it (no idstack code) ----
const doc = parseIssuerSigned(new Uint8Array(issuerSigned), config.doctype);
const iaca = new crypto.X509Certificate(fs.readFileSync(values.trust)).raw;
const verifier = new Verifier();
await verifier.verifyIssuerSignature({
  trustedCertificates: [new Uint8Array(iaca)], issuerAuth: doc.issuerSigned.issuerAuth, disableCertificateChainValidation: false,
}, context);
const failures = [];
await verifier.verifyData({ mdoc: doc, onCheckG: (c) => { if (c.status === 'FAILED') failures.push(c.check); } }, context);
if (failures.length) throw new Error(`issuerSigned data checks failed: ${failures.join('; ')}`);
const mso = doc.issuerSigned.issuerAuth.decodedPayload;
const deviceKey = mso.deviceKeyInfo.deviceKey;
const dkX = Buffer.from(deviceKey.get ? deviceKey.get(-2) : deviceKey[-2]).toString('base64url');
if (dkX !== holder.publicJwk.x) throw new Error('the MSO device key is not the key of our proof');
const namespaces = {};
for (const ns of doc.issuerSignedNameSpaces) namespaces[ns] = Object.fromEntries(doc.getIssuerNameSpace(ns));
const out = { doctype: doc.docType, namespaces, verified: true };

// ---- present (OpenID4VP 1.0, DCQL mso_mdoc, SessionTranscript per Appendix B.2.6) ----
if (values.present) {
  const vp = new Openid4vpClient({ callbacks });
  const parsed = vp.parseOpenid4vpAuthorizationRequest({ authorizationRequest: values.present });
  const resolved = await vp.resolveOpenId4vpAuthorizationRequest({ authorizationRequestPayload: parsed.params });
  const req = resolved.authorizationRequestPayload;
  const cq = resolved.dcql.query.credentials.find((c) => c.format === 'mso_mdoc' && c.meta?.doctype_value === doc.docType);
  if (!cq) throw new Error('no mso_mdoc credential query for our doctype');
  const requested = new Map();
  for (const { path } of cq.claims ?? []) {
    if (!requested.has(path[0])) requested.set(path[0], new Map());
    requested.get(path[0]).set(path[1], false);
  }
  const encrypted = req.response_mode === 'direct_post.jwt';
  const encJwk = encrypted ? req.client_metadata.jwks.keys.find((k) => k.use === 'enc' || !k.use) : null;
  const thumbprint = encJwk ? Buffer.from(await jose.calculateJwkThumbprint(encJwk, 'sha256'), 'base64url') : null;
  const nonce = values.tamper === 'transcript' ? 'not-the-nonce' : req.nonce;
  const handover = sha('SHA-256', cborEncode([req.client_id, nonce, thumbprint ? new Uint8Array(thumbprint) : null, req.response_uri]));
  const transcript = cborEncode(DataItem.fromData([null, null, ['OpenID4VPHandover', handover]]));
  const signed = await DeviceResponse.from(new MDoc([doc]))
    .usingDeviceRequest(DeviceRequest.from('1.0', [{ itemsRequestData: { docType: doc.docType, nameSpaces: requested } }]))
    .authenticateWithSignature(holder.privateJwk, 'ES256')
    .usingSessionTranscriptBytes(transcript)
    .sign(context);
  let deviceResponse = Buffer.from(signed.encode());
  if (values.tamper === 'element') {
    // flip one byte inside the first disclosed element value's text: its digest no longer matches
    const name = Buffer.from(String(out.namespaces[cq.claims[0].path[0]][cq.claims[0].path[1]]));
    const at = deviceResponse.indexOf(name);
    if (at < 0) throw new Error('element value not found to tamper with');
    deviceResponse[at] ^= 0x01;
  }
  const created = await vp.createOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: req,
    authorizationResponsePayload: { vp_token: { [cq.id]: [deviceResponse.toString('base64url')] } },
    ...(encrypted
      ? { jarm: { encryption: { nonce: req.nonce }, serverMetadata: { authorization_signing_alg_values_supported: ['ES256'], authorization_encryption_alg_values_supported: ['ECDH-ES'], authorization_encryption_enc_values_supported: ['A256GCM', 'A128GCM'] } } }
      : {}),
  });
  const submitted = await vp.submitOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: req,
    authorizationResponsePayload: created.authorizationResponsePayload,
    jarm: created.jarm ? { responseJwt: created.jarm.responseJwt } : undefined,
  });
  const text = await submitted.response.text();
  let body; try { body = JSON.parse(text); } catch { body = text; }
  out.presented = { status: submitted.response.status, body, response_mode: req.response_mode };
}
console.log(JSON.stringify(out, (k, v) => (v instanceof Map ? Object.fromEntries(v) : v instanceof Uint8Array ? Buffer.from(v).toString('base64url') : v)));
