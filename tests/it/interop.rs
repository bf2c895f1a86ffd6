//! Real third-party clients (tests/interop, installed by tests/interop/install.sh) against idstack.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::api::WalletUser;
use crate::common::Server;
use crate::holder::create_offer;

pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `node <script> args...`; returns the JSON line it printed. Panics with its stderr on failure.
pub fn node(script: &str, args: &[&str]) -> Value {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/@openid4vc/openid4vci").exists(),
        "interop clients are not installed: run tests/interop/install.sh (scripts/test.sh does)"
    );
    let out = Command::new("node")
        .current_dir(&dir)
        .arg(script)
        .args(args)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

fn identity() -> Value {
    json!({"given_name": "Erika", "family_name": "Mustermann", "birthdate": "1984-01-26", "email": "erika@example.org"})
}

#[tokio::test]
async fn animo_client_pre_authorized_flow_every_format() {
    let s = Server::start().await;
    for (config, tx, alg, by_value) in [
        ("IdentityCredential_dc_sd_jwt", true, "ES256", false),
        ("IdentityCredential_dc_sd_jwt", false, "EdDSA", true),
        ("IdentityCredential_jwt_vc_json", true, "EdDSA", false),
        ("IdentityCredential_jwt_vc_json", false, "ES256", true),
    ] {
        let mut body = json!({"credential_configuration_ids": [config], "claims": identity()});
        if tx {
            body["tx_code"] = json!({"length": 6, "input_mode": "numeric"});
        }
        let offer = create_offer(&s, "default", body).await;
        let uri = offer[if by_value {
            "offer_uri_by_value"
        } else {
            "offer_uri"
        }]
        .as_str()
        .unwrap();
        let mut args = vec!["--offer", uri, "--key-alg", alg];
        if tx {
            args.extend(["--tx-code", offer["tx_code"].as_str().unwrap()]);
        }
        let out = node("oid4vci-holder.mjs", &args);
        assert_eq!(out["independently_verified"], true, "{config}: {out}");
        assert_eq!(out["credential_configuration_id"], config);
        let claims = &out["claims"];
        let given = if config.ends_with("sd_jwt") {
            &claims["given_name"]
        } else {
            &claims["vc"]["credentialSubject"]["given_name"]
        };
        assert_eq!(given, "Erika", "{config}: {claims}");
    }
    s.stop();
}

#[tokio::test]
async fn animo_client_receives_ldp_vc_verified_with_ssi() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_ldp_vc"], "claims": identity()})).await;
    let out = node(
        "oid4vci-holder.mjs",
        &[
            "--offer",
            offer["offer_uri"].as_str().unwrap(),
            "--key-alg",
            "EdDSA",
        ],
    );
    let vc = &out["credentials"][0];
    assert_eq!(vc["proof"]["cryptosuite"], "eddsa-rdfc-2022", "{out}");
    assert_eq!(vc["credentialSubject"]["given_name"], "Erika");
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // the credential names the context the server serves; resolve it offline like the server
    idstack::crypto::di::register_context_origin(&s.base);
    idstack::crypto::di::verify_credential(vc, now)
        .expect("the Data Integrity proof verifies with ssi");
    s.stop();
}

#[tokio::test]
async fn animo_client_authorization_code_flow() {
    let s = Server::start().await;
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_jwt_vc_json"], "claims": identity(), "authorization_code": true})).await;
    let out = node(
        "oid4vci-holder.mjs",
        &[
            "--offer",
            offer["offer_uri"].as_str().unwrap(),
            "--auth-code",
        ],
    );
    assert_eq!(out["independently_verified"], true);
    assert_eq!(
        out["claims"]["vc"]["credentialSubject"]["email"],
        "erika@example.org"
    );
    s.stop();
}

/// credo-ts 0.6.3 (a full agent) receives from our issuer and presents to our verifier.
#[tokio::test]
async fn credo_holder_receives_and_presents_both_jwt_formats() {
    assert!(
        interop_dir()
            .join("credo/node_modules/@credo-ts/openid4vc")
            .exists(),
        "credo-ts is not installed: run tests/interop/install.sh"
    );
    let s = Server::start().await;
    let vct = s.url("/issuers/default/vct/IdentityCredential");
    for (config, format, path, meta) in [
        (
            "IdentityCredential_dc_sd_jwt",
            "dc+sd-jwt",
            json!(["given_name"]),
            json!({"vct_values": [vct]}),
        ),
        (
            "IdentityCredential_jwt_vc_json",
            "jwt_vc_json",
            json!(["credentialSubject", "given_name"]),
            json!({"type_values": [["IdentityCredential"]]}),
        ),
    ] {
        let offer = create_offer(&s, "default", json!({"credential_configuration_ids": [config], "claims": identity(), "tx_code": {"length": 6}})).await;
        let session: Value = s.admin().post("/api/verifiers/default/sessions", &json!({"dcql_query": {"credentials": [{"id": "q", "format": format, "meta": meta, "claims": [{"path": path}]}]}})).await;
        let stdout = credo_holder(&[
            "--offer",
            offer["offer_uri"].as_str().unwrap(),
            "--tx-code",
            offer["tx_code"].as_str().unwrap(),
            "--present",
            session["authorization_request"].as_str().unwrap(),
        ]);
        assert!(stdout.contains("\"ok\":true"), "{config}: {stdout}");
        let result = session_result(&s, &session).await;
        assert_eq!(result["verified"], true, "{config}: {result}");
        let claims = &result["credentials"][0]["claims"];
        assert_eq!(claims["given_name"], "Erika", "{config}: {claims}");
        if format == "dc+sd-jwt" {
            assert!(
                claims.get("email").is_none(),
                "credo disclosed only what was asked: {claims}"
            );
        }
    }
    s.stop();
}

/// Runs `credo/credo-holder.mjs` (credo-ts 0.6.3) with `args`; its stdout, after asserting success.
fn credo_holder(args: &[&str]) -> String {
    let out = Command::new("node")
        .current_dir(interop_dir())
        .arg("credo/credo-holder.mjs")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "credo failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// mso_mdoc with a third-party holder: credo-ts 0.6.3 receives an mDL from our issuer over
/// OpenID4VCI (verifying issuerAuth against our sandbox IACA, published at
/// `/issuers/default/mdoc-iaca`) and presents it to our verifier over OpenID4VP 1.0 with DCQL
/// `mso_mdoc`; the session is verified with only the requested elements.
#[tokio::test]
async fn credo_receives_an_mdl_and_presents_it() {
    let s = Server::start().await;
    let (_dir, trust) = crate::holder::sandbox_iaca_file(&s).await;
    let trust = trust.to_str().unwrap();
    let claims = mdl_claims();
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["org.iso.18013.5.1.mDL"], "claims": claims, "tx_code": {"length": 6}})).await;
    let session = mdl_session(&s).await;
    credo_holder(&[
        "--offer",
        offer["offer_uri"].as_str().unwrap(),
        "--tx-code",
        offer["tx_code"].as_str().unwrap(),
        "--trust",
        trust,
        "--present",
        session["authorization_request"].as_str().unwrap(),
    ]);
    let result = session_result(&s, &session).await;
    assert_eq!(result["verified"], true, "{result}");
    let c = &result["credentials"][0];
    assert_eq!(c["format"], "mso_mdoc");
    let ns = &c["claims"]["org.iso.18013.5.1"];
    assert_eq!(ns["family_name"], "Mustermann", "{c}");
    assert_eq!(ns["age_over_18"], true, "{c}");
    assert!(
        ns.get("birth_date").is_none(),
        "only the requested elements: {c}"
    );
    s.stop();
}

/// Cross-vendor for the cloud wallet: credo-ts 0.6.3 as issuer and verifier, our wallet as holder.
#[tokio::test]
async fn wallet_receives_from_and_presents_to_credo() {
    use std::io::{BufRead, BufReader, Write};
    assert!(
        interop_dir()
            .join("credo/node_modules/@credo-ts/openid4vc")
            .exists(),
        "credo-ts is not installed: run tests/interop/install.sh"
    );
    let s = Server::start().await;
    let WalletUser { token, wallet: wid } = WalletUser::signup(&s, "x@example.org").await;

    let mut party = Command::new("node")
        .current_dir(interop_dir())
        .arg("credo/credo-party.mjs")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = party.stdin.take().unwrap();
    let mut stdout = BufReader::new(party.stdout.take().unwrap());
    let mut ask = |cmd: Value| -> Value {
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("credo-party answered {line:?}: {e}"))
    };
    for format in ["dc+sd-jwt", "jwt_vc_json"] {
        let offer = ask(json!({"cmd": "offer", "format": format}));
        assert_eq!(offer["ok"], true, "{offer}");
        let r = s
            .bearer(&token)
            .post_resp(
                &format!("/wallet/wallets/{wid}/exchange/accept-offer"),
                &json!({"offer": offer["offer_uri"]}),
            )
            .await;
        assert_eq!(
            r.status(),
            200,
            "{format}: accept from credo: {}",
            r.text().await.unwrap()
        );
        let req = ask(json!({"cmd": "request", "format": format, "claims": ["given_name"]}));
        assert_eq!(req["ok"], true, "{req}");
        let r = s
            .bearer(&token)
            .post_resp(
                &format!("/wallet/wallets/{wid}/exchange/present"),
                &json!({"request": req["request_uri"]}),
            )
            .await;
        assert_eq!(
            r.status(),
            200,
            "{format}: present to credo: {}",
            r.text().await.unwrap()
        );
        let result = ask(json!({"cmd": "result", "id": req["id"]}));
        assert_eq!(result["verified"], true, "{format}: {result}");
        assert_eq!(
            result["claims"]["given_name"], "Erika",
            "{format}: {result}"
        );
        if format == "dc+sd-jwt" {
            assert!(
                result["claims"].get("email").is_none(),
                "only given_name disclosed: {result}"
            );
        }
    }
    ask(json!({"cmd": "shutdown"}));
    let _ = party.wait();
    s.stop();
}

/// ldp_vc credentials issued by idstack (OID4VCI and VC-API) verify with Digital Bazaar's
/// `@digitalbazaar/vc`, whose document loader knows only the standard contexts and did:key and
/// otherwise fetches from this server alone: the idstack context the credentials name is served
/// here. Tampering and a context URL nobody serves are caught by the same verifier.
#[tokio::test]
async fn digital_bazaar_vc_verifies_our_ldp_vc() {
    let s = Server::start().await;
    let context_url = s.url("/contexts/credentials/v1");
    for path in ["/contexts/credentials/v1", "/contexts/credentials-v1"] {
        let r = s.anon().get_resp(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "application/ld+json", "{path}");
        let served: Value = r.json().await.unwrap();
        let bundled: Value = serde_json::from_str(idstack::crypto::di::IDSTACK_CONTEXT).unwrap();
        assert_eq!(served, bundled, "{path}");
    }

    // OID4VCI ldp_vc, received by the Animo client
    let offer = create_offer(&s, "default", json!({"credential_configuration_ids": ["IdentityCredential_ldp_vc"], "claims": identity()})).await;
    let out = node(
        "oid4vci-holder.mjs",
        &[
            "--offer",
            offer["offer_uri"].as_str().unwrap(),
            "--key-alg",
            "EdDSA",
        ],
    );
    let oid4vci = out["credentials"][0].clone();
    assert_eq!(
        oid4vci["@context"],
        json!(["https://www.w3.org/ns/credentials/v2", context_url]),
        "{oid4vci}"
    );

    // VC-API issue, naming the served context
    let r = s.admin().post_resp("/vc-api/credentials/issue", &json!({"credential": {
            "@context": ["https://www.w3.org/ns/credentials/v2", context_url],
            "issuer": s.default_issuer_did().await,
            "type": ["VerifiableCredential", "IdentityCredential"],
            "credentialSubject": {"id": "did:example:alice", "given_name": "Alice", "email": "alice@example.org"}
        }})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let vc_api = r.json::<Value>().await.unwrap()["verifiableCredential"].clone();

    let mut tampered = oid4vci.clone();
    tampered["credentialSubject"]["given_name"] = json!("Mallory");
    // the pre-change context URL: bundled by idstack, served by nobody; refused by the loader
    let mut unserved = vc_api.clone();
    unserved["@context"][1] = json!(idstack::crypto::di::IDSTACK_CONTEXT_URL);

    let creds: Vec<String> = [&oid4vci, &vc_api, &tampered, &unserved]
        .iter()
        .map(|v| v.to_string())
        .collect();
    let base = s.url("");
    let mut args = vec!["--server", base.as_str()];
    for cred in &creds {
        args.extend(["--credential", cred.as_str()]);
    }
    let out = node("dbvc-verify.mjs", &args);
    let results = &out["results"];
    assert_eq!(results[0]["verified"], true, "OID4VCI ldp_vc: {out}");
    assert_eq!(results[1]["verified"], true, "VC-API ldp_vc: {out}");
    assert_eq!(results[2]["verified"], false, "tampered: {out}");
    assert_eq!(results[3]["verified"], false, "unserved context: {out}");
    assert_eq!(out["fetched"], json!([context_url]), "{out}");
    assert_eq!(
        out["refused"],
        json!([idstack::crypto::di::IDSTACK_CONTEXT_URL]),
        "{out}"
    );
    s.stop();
}

/// mso_mdoc with the Animo libraries alone (tests/interop/mdoc-holder.mjs): @openid4vc/openid4vci
/// 0.4.6 receives an mDL and a PID from our issuer, @animo-id/mdoc 0.5.2 verifies issuerAuth
/// against our sandbox IACA (and the value digests and the device key) and builds the
/// DeviceResponse that @openid4vc/openid4vp 0.4.6 presents to our verifier, once with
/// `direct_post` and once with an encrypted `direct_post.jwt` response (whose SessionTranscript
/// carries the encryption key's thumbprint). A device signature over another nonce, a tampered
/// element and a document signer the holder does not trust all fail.
#[tokio::test]
async fn animo_mdoc_holder_receives_an_mdl_and_a_pid_and_presents_them() {
    let s = Server::start().await;
    let (dir, trust) = crate::holder::sandbox_iaca_file(&s).await;
    let trust = trust.to_str().unwrap().to_string();
    let mdl = mdl_claims();
    let pid = json!({
        "family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
        "age_over_18": true, "nationality": ["DE"], "issuance_date": "2026-01-01",
        "expiry_date": "2031-01-01", "issuing_authority": "Sandbox PID Provider", "issuing_country": "UT",
    });
    let cases = [
        (
            "org.iso.18013.5.1.mDL",
            "org.iso.18013.5.1",
            &mdl,
            ["family_name", "age_over_18"],
            "birth_date",
            "direct_post",
        ),
        (
            "eu.europa.ec.eudi.pid.1",
            "eu.europa.ec.eudi.pid.1",
            &pid,
            ["nationality", "age_over_18"],
            "family_name",
            "direct_post.jwt",
        ),
    ];
    for (doctype, ns, claims, wanted, withheld, mode) in cases {
        let session = mdoc_session(&s, doctype, ns, &wanted, mode).await;
        let out = animo_mdoc(&s, &trust, doctype, claims, &session, None).await;
        assert_eq!(out["verified"], true, "{out}");
        assert_eq!(out["doctype"], doctype);
        assert_eq!(out["namespaces"][ns]["given_name"], "Erika", "{out}");
        assert_eq!(out["presented"]["status"], 200, "{out}");
        assert_eq!(out["presented"]["response_mode"], mode, "{out}");
        let result = session_result(&s, &session).await;
        assert_eq!(result["verified"], true, "{result}");
        let got = &result["credentials"][0]["claims"][ns];
        assert_eq!(got["age_over_18"], true, "{result}");
        assert_eq!(got[wanted[0]], claims[wanted[0]], "{result}");
        assert!(
            got.get(withheld).is_none(),
            "only the requested elements: {result}"
        );
    }

    // attacks from a holder that owns a genuine mDL
    for (tamper, failed) in [
        ("transcript", "mdoc_device_auth_failed"),
        ("element", "mdoc_digest_mismatch"),
    ] {
        let session = mdl_session(&s).await;
        let mdl_type = "org.iso.18013.5.1.mDL";
        let out = animo_mdoc(&s, &trust, mdl_type, &mdl, &session, Some(tamper)).await;
        assert_eq!(out["presented"]["status"], 400, "{tamper}: {out}");
        let why = out["presented"]["body"]["error_description"]
            .as_str()
            .unwrap_or_default();
        assert!(why.contains(failed), "{tamper}: {out}");
        let result = session_result(&s, &session).await;
        assert_ne!(result["verified"], true, "{tamper}: {result}");
    }

    // the holder's own check: a document signer that does not chain to the IACA it trusts
    let other = rcgen::generate_simple_self_signed(vec!["other-iaca.example".into()]).unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let offer = create_offer(
        &s,
        "default",
        json!({"credential_configuration_ids": ["org.iso.18013.5.1.mDL"], "claims": mdl}),
    )
    .await;
    let out = Command::new("node")
        .current_dir(interop_dir())
        .args([
            "mdoc-holder.mjs",
            "--offer",
            offer["offer_uri"].as_str().unwrap(),
        ])
        .args(["--trust", other_pem.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an untrusted document signer was accepted"
    );
    s.stop();
}

/// mdoc-holder.mjs receives a `doctype` mdoc with `claims` from the default issuer (trusting the
/// IACA in file `trust`) and presents it to `session`, tampered with as `tamper` says.
async fn animo_mdoc(
    s: &Server,
    trust: &str,
    doctype: &str,
    claims: &Value,
    session: &Value,
    tamper: Option<&str>,
) -> Value {
    let offer = create_offer(
        s,
        "default",
        json!({"credential_configuration_ids": [doctype], "claims": claims}),
    )
    .await;
    let mut args = vec![
        "--offer",
        offer["offer_uri"].as_str().unwrap(),
        "--trust",
        trust,
    ];
    args.extend([
        "--present",
        session["authorization_request"].as_str().unwrap(),
    ]);
    if let Some(t) = tamper {
        args.extend(["--tamper", t]);
    }
    node("mdoc-holder.mjs", &args)
}

/// The claims of the sandbox mDL the tests issue.
fn mdl_claims() -> Value {
    json!({
        "family_name": "Mustermann", "given_name": "Erika", "birth_date": "1984-01-26",
        "issue_date": "2026-01-01", "expiry_date": "2036-01-01", "issuing_country": "UT",
        "issuing_authority": "Sandbox DMV", "document_number": "D-123",
        "driving_privileges": [{"vehicle_category_code": "B", "issue_date": "2026-01-01"}],
        "un_distinguishing_sign": "D", "age_over_18": true,
    })
}

/// A verifier session asking for the mDL's family_name and age_over_18 (`direct_post`).
async fn mdl_session(s: &Server) -> Value {
    let elements = ["family_name", "age_over_18"];
    mdoc_session(
        s,
        "org.iso.18013.5.1.mDL",
        "org.iso.18013.5.1",
        &elements,
        "direct_post",
    )
    .await
}

/// A verifier session asking for `elements` of `ns` in one `doctype` mdoc, answered with `mode`.
async fn mdoc_session(s: &Server, doctype: &str, ns: &str, elements: &[&str], mode: &str) -> Value {
    let claims: Vec<Value> = elements.iter().map(|e| json!({"path": [ns, e]})).collect();
    s.admin().post("/api/verifiers/default/sessions", &json!({"response_mode": mode, "dcql_query": {"credentials": [{"id": "doc", "format": "mso_mdoc",
            "meta": {"doctype_value": doctype}, "claims": claims}]}})).await
}

/// The verifier's view of `session` (admin API).
async fn session_result(s: &Server, session: &Value) -> Value {
    crate::wallet::session_result(s, session["id"].as_str().unwrap()).await
}
