// OID4VP wallet driven by the Animo @openid4vc/openid4vp client.
// usage: node oid4vp-wallet.mjs --request <openid4vp://...> --credential <file: oid4vci-holder.mjs output>
//        [--disclose given_name,email] [--tamper nonce|aud|signature|disclosure] [--query-id id]
//    or: node oid4vp-wallet.mjs --requests <file: one request URI per line> --credential <file> [--concurrency 8]
//        presents to every request and prints {"count", "ok", "failures": [first 5 results not 200]}
// Builds the presentation itself (SD-JWT + KB-JWT, or a JWT VP), submits it with the library and
// prints {"status": <HTTP status>, "body": <verifier answer>, "request": <resolved request>}.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import * as jose from 'jose';
import { Openid4vpClient } from '@openid4vc/openid4vp';
import { callbacks, importHolder } from './lib.mjs';

const { values } = parseArgs({ options: {
  request: { type: 'string' }, credential: { type: 'string' }, disclose: { type: 'string' },
  tamper: { type: 'string' }, 'query-id': { type: 'string' }, replay: { type: 'boolean', default: false },
  requests: { type: 'string' }, concurrency: { type: 'string', default: '8' },
} });
const held = JSON.parse(fs.readFileSync(values.credential, 'utf8'));
const holder = await importHolder(held.holder_private_jwk, held.holder_alg);

const client = new Openid4vpClient({ callbacks });
async function present(request) {
  const parsed = client.parseOpenid4vpAuthorizationRequest({ authorizationRequest: request });
  const resolved = await client.resolveOpenId4vpAuthorizationRequest({ authorizationRequestPayload: parsed.params });
  const req = resolved.authorizationRequestPayload;
  const query = resolved.dcql?.query;
  const cq = query?.credentials.find((c) => values['query-id'] ? c.id === values['query-id'] : (c.format === held.format || (c.format === 'vc+sd-jwt' && held.format === 'dc+sd-jwt')));
  if (query && !cq) throw new Error('no credential query matches the held credential');
  const queryId = cq?.id ?? values['query-id'] ?? 'credential';
  const nonce = values.tamper === 'nonce' ? 'not-the-nonce' : req.nonce;
  const aud = values.tamper === 'aud' ? 'https://someone-else.example' : req.client_id;
  const iat = Math.floor(Date.now() / 1000);

  async function sign(header, payload) {
    return new jose.CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
      .setProtectedHeader({ ...header, alg: held.holder_alg })
      .sign(holder.privateKey);
  }

  let presentation;
  const credential = held.credentials[0];
  if (held.format === 'dc+sd-jwt') {
    const [jwt, ...disclosures] = credential.split('~').filter(Boolean);
    const wanted = values.disclose ? values.disclose.split(',') : (cq?.claims ?? []).map((c) => c.path[0]);
    let chosen = disclosures.filter((d) => wanted.includes(JSON.parse(Buffer.from(d, 'base64url').toString())[1]));
    if (values.tamper === 'disclosure') {
      chosen = [...chosen, Buffer.from(JSON.stringify(['salt', 'given_name', 'Mallory'])).toString('base64url')];
    }
    const sdJwt = `${jwt}~${chosen.map((d) => `${d}~`).join('')}`;
    const sd_hash = crypto.createHash('sha256').update(sdJwt).digest('base64url');
    let kb = await sign({ typ: 'kb+jwt' }, { iat, aud, nonce, sd_hash });
    if (values.tamper === 'signature') kb = kb.slice(0, -4) + (kb.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    presentation = sdJwt + kb;
  } else if (held.format === 'jwt_vc_json') {
    const holderDid = JSON.parse(Buffer.from(credential.split('.')[1], 'base64url').toString()).sub;
    let vp = await sign({ typ: 'JWT', kid: holderDid.startsWith('did:jwk:') ? `${holderDid}#0` : undefined, jwk: holderDid.startsWith('did:jwk:') ? undefined : holder.publicJwk }, {
      iss: holderDid, aud, nonce, iat, exp: iat + 300,
      vp: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiablePresentation'], holder: holderDid, verifiableCredential: [credential] },
    });
    if (values.tamper === 'signature') vp = vp.slice(0, -4) + (vp.endsWith('AAAA') ? 'BBBB' : 'AAAA');
    presentation = vp;
  } else {
    throw new Error(`cannot present ${held.format}`);
  }

  const responsePayload = query
    ? { vp_token: { [queryId]: [presentation] } }
    : {
        vp_token: presentation,
        presentation_submission: {
          id: crypto.randomUUID(),
          definition_id: req.presentation_definition.id,
          descriptor_map: [{ id: req.presentation_definition.input_descriptors[0].id, format: held.format === 'dc+sd-jwt' ? 'dc+sd-jwt' : 'jwt_vp_json', path: '$' }],
        },
      };
  const created = await client.createOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: req,
    authorizationResponsePayload: responsePayload,
    ...(req.response_mode === 'direct_post.jwt'
      ? { jarm: { encryption: { nonce: req.nonce }, serverMetadata: { authorization_signing_alg_values_supported: ['ES256'], authorization_encryption_alg_values_supported: ['ECDH-ES'], authorization_encryption_enc_values_supported: ['A256GCM', 'A128GCM'] } } }
      : {}),
  });
  const submitted = await client.submitOpenid4vpAuthorizationResponse({
    authorizationRequestPayload: req,
    authorizationResponsePayload: created.authorizationResponsePayload,
    jarm: created.jarm ? { responseJwt: created.jarm.responseJwt } : undefined,
  });
  async function answer(response) {
    const text = await response.text();
    try { return JSON.parse(text); } catch { return text; }
  }
  const body = await answer(submitted.response);
  const result = { status: submitted.response.status, body, response_mode: req.response_mode, client_id: req.client_id, signed: !!resolved.jar };
  if (values.replay) {
    // the same accepted response, sent again
    const again = await client.submitOpenid4vpAuthorizationResponse({
      authorizationRequestPayload: req,
      authorizationResponsePayload: created.authorizationResponsePayload,
      jarm: created.jarm ? { responseJwt: created.jarm.responseJwt } : undefined,
    });
    result.replay = { status: again.response.status, body: await answer(again.response) };
  }
  return result;
}

if (values.requests) {
  const requests = fs.readFileSync(values.requests, 'utf8').split('\n').filter(Boolean);
  let next = 0, ok = 0;
  const failures = [];
  async function worker() {
    while (next < requests.length) {
      const r = requests[next++];
      try {
        const res = await present(r);
        if (res.status === 200) ok++; else failures.push(res);
      } catch (e) {
        failures.push({ request: r, error: String(e?.message ?? e) });
      }
    }
  }
  await Promise.all(Array.from({ length: Number(values.concurrency) }, worker));
  console.log(JSON.stringify({ count: requests.length, ok, failures: failures.slice(0, 5) }));
} else {
  console.log(JSON.stringify(await present(values.request)));
}

