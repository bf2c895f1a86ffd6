// Shared helpers for the interop clients: crypto callbacks for the Animo @openid4vc libraries (built
// on node:crypto and jose), and independent credential verification (did:key / did:jwk decoding
// written here, signatures checked with jose) that shares no code with idstack.
import crypto from 'node:crypto';
import * as jose from 'jose';
import { setGlobalConfig } from '@openid4vc/utils';
import { clientAuthenticationAnonymous } from '@openid4vc/oauth2';

setGlobalConfig({ allowInsecureUrls: true });

export const callbacks = {
  clientAuthentication: clientAuthenticationAnonymous(),
  hash: (data, alg) => new Uint8Array(crypto.createHash(alg.replace('-', '').toLowerCase()).update(data).digest()),
  generateRandom: (n) => new Uint8Array(crypto.randomBytes(n)),
  signJwt: async (signer, { header, payload }) => {
    const key = signerKeys.get(JSON.stringify(signer.publicJwk ?? signer.didUrl));
    if (!key) throw new Error('no private key for signer');
    const jwt = await new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ ...header, alg: signer.alg })
      .sign(key.privateKey);
    return { jwt, signerJwk: key.publicJwk };
  },
  encryptJwe: async (encryptor, data) => {
    const key = await jose.importJWK(encryptor.publicJwk, 'ECDH-ES');
    const enc = new jose.CompactEncrypt(new TextEncoder().encode(data))
      .setProtectedHeader({ alg: 'ECDH-ES', enc: encryptor.enc, kid: encryptor.publicJwk.kid })
      .setKeyManagementParameters({
        ...(encryptor.apu ? { apu: Buffer.from(encryptor.apu, 'base64url') } : {}),
        ...(encryptor.apv ? { apv: Buffer.from(encryptor.apv, 'base64url') } : {}),
      });
    return { jwe: await enc.encrypt(key), encryptionJwk: encryptor.publicJwk };
  },
  decryptJwe: async () => ({ decrypted: false }),
  verifyJwt: async (signer, { compact }) => {
    try {
      const jwk = signer.publicJwk ?? (await resolveKid(signer.didUrl));
      await jose.compactVerify(compact, await jose.importJWK(jwk, signer.alg));
      return { verified: true, signerJwk: jwk };
    } catch {
      return { verified: false };
    }
  },
};

const signerKeys = new Map();

/** A holder key; registered so the signJwt callback can find it. */
export async function holderKey(alg = 'ES256') {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { crv: alg === 'EdDSA' ? 'Ed25519' : undefined, extractable: true });
  const publicJwk = await jose.exportJWK(publicKey);
  const privateJwk = await jose.exportJWK(privateKey);
  const entry = { privateKey, publicJwk, privateJwk, alg };
  signerKeys.set(JSON.stringify(publicJwk), entry);
  return entry;
}

export async function importHolder(privateJwk, alg) {
  const { d, ...publicJwk } = privateJwk;
  const entry = { privateKey: await jose.importJWK(privateJwk, alg), publicJwk, privateJwk, alg };
  signerKeys.set(JSON.stringify(publicJwk), entry);
  return entry;
}

// ---- independent DID resolution (did:key, did:jwk) ----
const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
function base58decode(s) {
  let n = 0n;
  for (const c of s) {
    const i = B58.indexOf(c);
    if (i < 0) throw new Error('bad base58');
    n = n * 58n + BigInt(i);
  }
  const bytes = [];
  while (n > 0n) { bytes.unshift(Number(n & 0xffn)); n >>= 8n; }
  for (const c of s) { if (c === '1') bytes.unshift(0); else break; }
  return Uint8Array.from(bytes);
}
const b64u = (b) => Buffer.from(b).toString('base64url');

export async function resolveKid(kid) {
  const did = kid.split('#')[0];
  if (did.startsWith('did:jwk:')) return JSON.parse(Buffer.from(did.slice(8), 'base64url').toString());
  if (did.startsWith('did:key:z')) {
    const bytes = base58decode(did.slice(9));
    if (bytes[0] === 0xed && bytes[1] === 0x01) return { kty: 'OKP', crv: 'Ed25519', x: b64u(bytes.slice(2)) };
    if (bytes[0] === 0x80 && bytes[1] === 0x24) {
      // compressed P-256 point: let node decompress it
      const spkiPrefix = Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex');
      const key = crypto.createPublicKey({ key: Buffer.concat([spkiPrefix, Buffer.from(bytes.slice(2))]), format: 'der', type: 'spki' });
      return key.export({ format: 'jwk' });
    }
    throw new Error('unsupported did:key multicodec');
  }
  if (did.startsWith('did:web:')) {
    const [host, ...path] = did.slice(8).split(':');
    const h = decodeURIComponent(host);
    const scheme = h.startsWith('127.0.0.1') || h.startsWith('localhost') ? 'http' : 'https';
    const url = path.length ? `${scheme}://${h}/${path.join('/')}/did.json` : `${scheme}://${h}/.well-known/did.json`;
    const doc = await (await fetch(url)).json();
    const vm = doc.verificationMethod.find((m) => m.id === kid) ?? doc.verificationMethod[0];
    return vm.publicKeyJwk;
  }
  throw new Error(`cannot resolve ${kid}`);
}

/** Verifies a credential without idstack code; returns the decoded claims. Throws on failure. */
export async function verifyCredential(format, credential, holderJwk) {
  if (format === 'dc+sd-jwt') {
    const [jwt, ...rest] = credential.split('~');
    const header = jose.decodeProtectedHeader(jwt);
    if (header.typ !== 'dc+sd-jwt') throw new Error(`typ ${header.typ}`);
    const key = await jose.importJWK(await resolveKid(header.kid), header.alg);
    const { payload } = await jose.jwtVerify(jwt, key);
    const digests = new Set(payload._sd ?? []);
    const claims = { ...payload };
    for (const d of rest.filter(Boolean)) {
      const digest = crypto.createHash('sha256').update(d).digest('base64url');
      if (!digests.has(digest)) throw new Error('disclosure digest not in _sd');
      const [, name, value] = JSON.parse(Buffer.from(d, 'base64url').toString());
      claims[name] = value;
    }
    delete claims._sd; delete claims._sd_alg;
    if (holderJwk && JSON.stringify(claims.cnf.jwk.x) !== JSON.stringify(holderJwk.x)) throw new Error('cnf is not the holder key');
    return claims;
  }
  if (format === 'jwt_vc_json') {
    const header = jose.decodeProtectedHeader(credential);
    const key = await jose.importJWK(await resolveKid(header.kid), header.alg);
    const { payload } = await jose.jwtVerify(credential, key);
    if (!payload.vc?.credentialSubject) throw new Error('no vc.credentialSubject');
    return payload;
  }
  if (format === 'ldp_vc') {
    // No independent JSON-LD canonicalizer is installed here: check shape only; the proof is
    // verified by the caller with ssi (a third-party implementation of eddsa-rdfc-2022).
    if (credential?.proof?.cryptosuite !== 'eddsa-rdfc-2022') throw new Error('no eddsa-rdfc-2022 proof');
    return credential;
  }
  throw new Error(`no independent verifier for ${format}`);
}
