// Verifies idstack ldp_vc credentials with Digital Bazaar's @digitalbazaar/vc (DataIntegrityProof,
// eddsa-rdfc-2022), as an outside verifier would. The document loader serves only the standard
// contexts the libraries bundle (credentials v1/v2, data integrity) and did:key (resolved
// offline); every other URL must be under --server (fetched from the running idstack) or the
// load fails. Credential status is not checked here (idstack's own verifier does that): the
// `checkStatus` hook answers "not checked" only so that vc accepts credentialStatus entries.
// usage: node dbvc-verify.mjs --server <idstack base URL> --credential <JSON> [--credential <JSON> ...]
// prints one JSON line: {results: [{verified, error}], fetched: [urls loaded from the server], refused: [urls]}
import { parseArgs } from 'node:util';
import * as vc from '@digitalbazaar/vc';
import { DataIntegrityProof } from '@digitalbazaar/data-integrity';
import { cryptosuite as eddsaRdfc2022 } from '@digitalbazaar/eddsa-rdfc-2022-cryptosuite';
import * as Ed25519Multikey from '@digitalbazaar/ed25519-multikey';
import * as DidKey from '@digitalbazaar/did-method-key';
import { contexts as credentialsContexts } from '@digitalbazaar/credentials-context';
import dataIntegrityContext from '@digitalbazaar/data-integrity-context';

const { values } = parseArgs({ options: { server: { type: 'string' }, credential: { type: 'string', multiple: true } } });
const server = new URL(values.server);

const bundled = new Map([...credentialsContexts, ...dataIntegrityContext.contexts]);
const didKey = DidKey.driver();
didKey.use({ multibaseMultikeyHeader: 'z6Mk', fromMultibase: Ed25519Multikey.from });

const fetched = [];
const refused = [];
async function documentLoader(url) {
  if (bundled.has(url)) {
    return { contextUrl: null, documentUrl: url, document: structuredClone(bundled.get(url)) };
  }
  if (url.startsWith('did:key:')) {
    return { contextUrl: null, documentUrl: url, document: await didKey.get({ url }) };
  }
  let parsed;
  try { parsed = new URL(url); } catch { parsed = null; }
  if (!parsed || parsed.origin !== server.origin) {
    refused.push(url);
    throw new Error(`document loader: refusing ${url} (only ${server.origin} and bundled contexts)`);
  }
  const res = await fetch(url, { headers: { accept: 'application/ld+json, application/json' } });
  if (!res.ok) throw new Error(`document loader: ${url}: HTTP ${res.status}`);
  const type = res.headers.get('content-type') ?? '';
  if (!/^application\/(ld\+)?json/.test(type)) throw new Error(`document loader: ${url}: content-type ${type}`);
  fetched.push(url);
  return { contextUrl: null, documentUrl: url, document: await res.json() };
}

const results = [];
for (const raw of values.credential ?? []) {
  const credential = JSON.parse(raw);
  const suite = new DataIntegrityProof({ cryptosuite: eddsaRdfc2022 });
  const result = await vc.verifyCredential({
    credential,
    suite,
    documentLoader,
    checkStatus: async () => ({ verified: true, statusChecked: false }),
  });
  const errors = [result.error, ...(result.results ?? []).map((r) => r.error)]
    .filter(Boolean)
    .flatMap((e) => e.errors ?? [e])
    .map((e) => e.message ?? String(e));
  results.push({ verified: result.verified, errors });
}
console.log(JSON.stringify({ results, fetched: [...new Set(fetched)], refused: [...new Set(refused)] }));
