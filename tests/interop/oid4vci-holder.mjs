// OID4VCI holder driven by the Animo @openid4vc/openid4vci client.
// usage: node oid4vci-holder.mjs --offer <openid-credential-offer://...> [--tx-code 123456] [--key-alg ES256|EdDSA] [--config <id>]
// prints one JSON line: {credential_configuration_id, format, credentials, holder_private_jwk, claims, independently_verified}
import { parseArgs } from 'node:util';
import { Openid4vciClient } from '@openid4vc/openid4vci';
import { callbacks, holderKey, verifyCredential } from './lib.mjs';

const { values } = parseArgs({ options: { offer: { type: 'string' }, 'tx-code': { type: 'string' }, 'key-alg': { type: 'string', default: 'ES256' }, config: { type: 'string' }, 'auth-code': { type: 'boolean', default: false } } });

const client = new Openid4vciClient({ callbacks });
const credentialOffer = await client.resolveCredentialOffer(values.offer);
const issuerMetadata = await client.resolveIssuerMetadata(credentialOffer.credential_issuer);
let accessTokenResponse;
if (values['auth-code']) {
  // Authorization code flow with PKCE: the issuer consents at once for the offer's issuer_state,
  // so follow its redirect by hand instead of a browser.
  const redirectUri = 'https://wallet.example/callback';
  const { authorizationRequestUrl, pkce } = await client.createAuthorizationRequestUrlFromOffer({
    clientId: 'interop-wallet', redirectUri, credentialOffer, issuerMetadata,
  });
  const res = await fetch(authorizationRequestUrl, { redirect: 'manual' });
  if (res.status !== 302) throw new Error(`authorize: HTTP ${res.status} ${await res.text()}`);
  const location = new URL(res.headers.get('location'));
  const code = location.searchParams.get('code');
  ({ accessTokenResponse } = await client.retrieveAuthorizationCodeAccessTokenFromOffer({
    issuerMetadata, credentialOffer, authorizationCode: code, pkceCodeVerifier: pkce?.codeVerifier, redirectUri,
  }));
} else {
  ({ accessTokenResponse } = await client.retrievePreAuthorizedCodeAccessTokenFromOffer({
    credentialOffer,
    issuerMetadata,
    txCode: values['tx-code'],
  }));
}
const configId = values.config ?? credentialOffer.credential_configuration_ids[0];
const format = issuerMetadata.credentialIssuer.credential_configurations_supported[configId].format;
const holder = await holderKey(values['key-alg']);
const { c_nonce } = await client.requestNonce({ issuerMetadata });
const { jwt } = await client.createCredentialRequestJwtProof({
  issuerMetadata,
  credentialConfigurationId: configId,
  nonce: c_nonce,
  signer: { method: 'jwk', publicJwk: holder.publicJwk, alg: values['key-alg'] },
});
const response = await client.retrieveCredentials({
  issuerMetadata,
  accessToken: accessTokenResponse.access_token,
  credentialConfigurationId: configId,
  proofs: { jwt: [jwt] },
});
const credentials = response.credentialResponse.credentials.map((c) => c.credential);
const claims = await verifyCredential(format, credentials[0], holder.publicJwk);
console.log(JSON.stringify({
  credential_configuration_id: configId,
  format,
  credentials,
  holder_private_jwk: holder.privateJwk,
  holder_alg: values['key-alg'],
  claims,
  independently_verified: format !== 'ldp_vc',
}));
