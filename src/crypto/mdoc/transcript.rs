//! The SessionTranscript a device signature covers, as OpenID4VP 1.0 Appendix B.2.6.1 defines it
//! for the redirect and `direct_post(.jwt)` response modes:
//!
//! ```text
//! SessionTranscript     = [null, null, OpenID4VPHandover]
//! OpenID4VPHandover     = ["OpenID4VPHandover", sha-256(cbor(OpenID4VPHandoverInfo))]
//! OpenID4VPHandoverInfo = [client_id, nonce, jwk_thumbprint / null, response_uri]
//! ```
//!
//! `jwk_thumbprint` is the RFC 7638 SHA-256 thumbprint (raw bytes) of the verifier's response
//! encryption key when the response is encrypted (`direct_post.jwt`), else null; `response_uri`
//! is the `redirect_uri` in the redirect response mode.

use ciborium::Value;
use sha2::{Digest, Sha256};

use super::encode;

/// The encoded SessionTranscript for one OpenID4VP request.
pub fn oid4vp(
    client_id: &str,
    nonce: &str,
    jwk_thumbprint: Option<&[u8]>,
    response_uri: &str,
) -> Vec<u8> {
    let info = Value::Array(vec![
        Value::Text(client_id.into()),
        Value::Text(nonce.into()),
        jwk_thumbprint.map_or(Value::Null, |t| Value::Bytes(t.to_vec())),
        Value::Text(response_uri.into()),
    ]);
    let handover = Value::Array(vec![
        Value::Text("OpenID4VPHandover".into()),
        Value::Bytes(Sha256::digest(encode(&info)).to_vec()),
    ]);
    encode(&Value::Array(vec![Value::Null, Value::Null, handover]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structure, byte for byte: an array of three, two nulls, then the handover whose digest
    /// covers exactly [client_id, nonce, null, response_uri].
    #[test]
    fn transcript_has_the_appendix_b_shape() {
        let t = oid4vp(
            "x509_san_dns:rp.example",
            "n-1",
            None,
            "https://rp.example/post",
        );
        let v = super::super::decode(&t).unwrap();
        let Value::Array(a) = &v else { panic!() };
        assert_eq!((a.len(), &a[0], &a[1]), (3, &Value::Null, &Value::Null));
        let Value::Array(h) = &a[2] else { panic!() };
        assert_eq!(h[0], Value::Text("OpenID4VPHandover".into()));
        let info = encode(&Value::Array(vec![
            Value::Text("x509_san_dns:rp.example".into()),
            Value::Text("n-1".into()),
            Value::Null,
            Value::Text("https://rp.example/post".into()),
        ]));
        assert_eq!(h[1], Value::Bytes(Sha256::digest(info).to_vec()));
        // every input changes it
        assert_ne!(
            t,
            oid4vp(
                "x509_san_dns:rp.example",
                "n-2",
                None,
                "https://rp.example/post"
            )
        );
        assert_ne!(
            t,
            oid4vp(
                "x509_san_dns:rp.example",
                "n-1",
                Some(&[1; 32]),
                "https://rp.example/post"
            )
        );
        assert_ne!(t, oid4vp("other", "n-1", None, "https://rp.example/post"));
        // the fixed prefix: 0x83 (array of 3), 0xf6 0xf6 (null, null)
        assert_eq!(&t[..3], &[0x83, 0xf6, 0xf6]);
    }
}
