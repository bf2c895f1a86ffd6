//! Handshakes on one of our invitations: DID exchange 1.1 / 1.0 (RFC 0023) and connections 1.0
//! (RFC 0160). Each request spends the invitation, records a connection after checking that the
//! authcrypt sender is a key of the DID it presents, and is answered with our DID (a
//! `did_rotate~attach` JWS for DID exchange, a signed legacy DIDDoc for connections 1.0).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use serde_json::{json, Value};

use super::error::MediatorResult;
use super::message::{thread_id, DIDCOMM};
use super::model::Connection;
use super::service::{endpoints, MediatorService, OrRefused as _, Required as _};
use crate::clock::random_id;
use crate::didcomm::peer;

/// Longest DID a handshake may present (a did:peer:2 with a few keys and a service is under
/// 1 KiB; did:peer:4 long forms a few KiB).
const MAX_DID_BYTES: usize = 8192;
/// A connection's label is kept to this many characters.
const MAX_LABEL_CHARS: usize = 256;

impl MediatorService {
    /// DID exchange `request` (`version` 1.1 or 1.0) from `sender`: the connection, and our
    /// `response`.
    pub(super) async fn didexchange_request(
        &self,
        msg: &Value,
        sender: &str,
        version: &str,
    ) -> MediatorResult<Value> {
        let pthid = msg.pointer("/~thread/pthid").and_then(Value::as_str);
        let did = msg
            .get("did")
            .and_then(Value::as_str)
            .required(self, "DID exchange request without did")?;
        let attached = match msg.get("did_doc~attach") {
            Some(att) => {
                let bytes = peer::attachment_bytes(att).or_refused(self)?;
                let doc = serde_json::from_slice::<Value>(&bytes)
                    .or_refused_in(self, "did_doc~attach")?;
                Some(doc)
            }
            None => None,
        };
        // checked before the invitation counts it: a refused request takes no place; the key's
        // own connection asked again (its answer lost, or the request replayed) is answered again
        if !self.already_connected(sender, did).await? {
            let info = self.sender_of(did, attached.as_ref(), sender)?;
            let invitation = self.use_invitation(pthid).await?;
            self.open_connection(
                msg,
                sender,
                did,
                info,
                format!("didexchange/{version}"),
                invitation,
            )
            .await?;
        }
        let rotate = self.signed_attachment(self.did.as_bytes(), None);
        Ok(json!({
            "@type": format!("{DIDCOMM}didexchange/{version}/response"),
            "@id": random_id(),
            "~thread": {"thid": thread_id(msg), "pthid": pthid},
            "did": self.did,
            "did_rotate~attach": rotate,
        }))
    }

    /// A detached-payload JWS attachment signed with the mediator key, as RFC 0023 / credo do.
    fn signed_attachment(&self, payload: &[u8], mime: Option<&str>) -> Value {
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
        });
        let protected = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "jwk": jwk}).to_string());
        let payload_b64 = URL_SAFE_NO_PAD.encode(payload);
        let sig = self
            .key
            .sign(format!("{protected}.{payload_b64}").as_bytes());
        let mut att = json!({
            "@id": random_id(),
            "data": {
                "base64": payload_b64,
                "jws": {
                    "header": {"kid": self.did_key},
                    "protected": protected,
                    "signature": URL_SAFE_NO_PAD.encode(sig.to_bytes()),
                }
            }
        });
        if let Some(m) = mime {
            att["mime-type"] = json!(m);
        }
        att
    }

    /// Connections 1.0 `request` from `sender`: the connection, and our `response` with its
    /// `connection~sig`.
    pub(super) async fn connections_request(
        &self,
        msg: &Value,
        sender: &str,
    ) -> MediatorResult<Value> {
        let pthid = msg.pointer("/~thread/pthid").and_then(Value::as_str);
        let c = msg
            .get("connection")
            .required(self, "connection request without connection")?;
        let did = c
            .get("DID")
            .or_else(|| c.get("did"))
            .and_then(Value::as_str)
            .required(self, "connection request without DID")?;
        let doc = c.get("DIDDoc").or_else(|| c.get("did_doc"));
        if !self.already_connected(sender, did).await? {
            let info = self.sender_of(did, doc, sender)?;
            let invitation = self.use_invitation(pthid).await?;
            self.open_connection(msg, sender, did, info, "connections/1.0".into(), invitation)
                .await?;
        }
        let connection = self.legacy_connection();
        let mut sig_data = (self.now() / 1000).to_be_bytes().to_vec();
        sig_data.extend_from_slice(connection.to_string().as_bytes());
        let signature = self.key.sign(&sig_data);
        Ok(json!({
            "@type": format!("{DIDCOMM}connections/1.0/response"),
            "@id": random_id(),
            "~thread": {"thid": thread_id(msg)},
            "connection~sig": {
                "@type": format!("{DIDCOMM}signature/1.0/ed25519Sha512_single"),
                "signature": URL_SAFE_NO_PAD.encode(signature.to_bytes()),
                "sig_data": URL_SAFE_NO_PAD.encode(&sig_data),
                "signer": self.verkey,
            }
        }))
    }

    /// Our legacy DID (first 16 bytes of the verkey, base58) and DIDDoc, as connections 1.0
    /// wants them.
    fn legacy_connection(&self) -> Value {
        let vk = self.key.verifying_key().to_bytes();
        let our_did = bs58::encode(&vk[..16]).into_string();
        let services: Vec<Value> = endpoints(&self.ctx)
            .into_iter()
            .enumerate()
            .map(|(i, ep)| {
                json!({
                    "id": format!("did:sov:{our_did};indy{}", if i == 0 { String::new() } else { i.to_string() }),
                    "type": "IndyAgent",
                    "priority": i,
                    "recipientKeys": [self.verkey],
                    "routingKeys": [],
                    "serviceEndpoint": ep,
                })
            })
            .collect();
        json!({
            "DID": our_did,
            "DIDDoc": {
                "@context": "https://w3id.org/did/v1",
                "id": format!("did:sov:{our_did}"),
                "publicKey": [{
                    "id": format!("did:sov:{our_did}#1"),
                    "type": "Ed25519VerificationKey2018",
                    "controller": format!("did:sov:{our_did}"),
                    "publicKeyBase58": self.verkey,
                }],
                "authentication": [{"type": "Ed25519SignatureAuthentication2018", "publicKey": format!("did:sov:{our_did}#1")}],
                "service": services,
            }
        })
    }

    /// The DID a handshake request presents, resolved, once the authcrypt sender is checked to
    /// be one of its keys.
    fn sender_of(
        &self,
        did: &str,
        attached_doc: Option<&Value>,
        sender: &str,
    ) -> MediatorResult<peer::PeerInfo> {
        // Kept in the connection record, read with every message on it, and the endpoint logged
        // when a reply fails: bounded before anything is resolved (attacker review: a 190 KB
        // did:peer:2 with a 140 KB service endpoint made a 330 KB record).
        if did.len() > MAX_DID_BYTES {
            return Err(self.refuse(format!("a DID is at most {MAX_DID_BYTES} bytes here")));
        }
        let info = peer::resolve(did, attached_doc).or_refused(self)?;
        if info
            .endpoint
            .as_deref()
            .is_some_and(|e| e.len() > crate::http::webhook::MAX_URL_CHARS)
        {
            return Err(self.refuse(format!(
                "a DIDComm service endpoint is at most {} characters",
                crate::http::webhook::MAX_URL_CHARS
            )));
        }
        if !info.verkeys.iter().any(|k| k == sender) {
            return Err(
                self.refuse("the request was not authcrypted with a key of the DID it presents")
            );
        }
        Ok(info)
    }

    /// Records a connection from a checked handshake request ([`Self::sender_of`]).
    async fn open_connection(
        &self,
        msg: &Value,
        sender: &str,
        did: &str,
        info: peer::PeerInfo,
        protocol: String,
        (invitation_id, via_single_use): (String, bool),
    ) -> MediatorResult<Connection> {
        let conn = Connection {
            id: random_id(),
            their_did: did.to_string(),
            their_verkey: sender.to_string(),
            their_endpoint: info.endpoint,
            their_label: msg
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(MAX_LABEL_CHARS)
                .collect(),
            protocol,
            state: "response-sent".into(),
            mediation: "none".into(),
            invitation_id: Some(invitation_id),
            via_single_use,
            keys: Some(0),
            created_at_ms: self.now(),
        };
        self.save_connection(&conn).await?;
        Ok(conn)
    }
}
