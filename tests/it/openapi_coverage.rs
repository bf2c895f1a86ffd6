//! A route that is mounted but missing from the OpenAPI document fails here, both ways:
//! - statically: every actix route macro in src/ must carry `#[utoipa::path]` (pages excepted);
//! - at runtime: every documented path must reach a handler (not the route_not_found fallback).

use std::path::Path;

use crate::common::{client, Server, ADMIN_TOKEN};

/// Files whose routes are deliberately outside the API document: pages and assets, and the
/// internal cluster RPC (an HMAC-signed peer protocol, mounted on the public listener only when
/// `cluster.rpc_addr` is that listener).
const PAGE_FILES: &[&str] = &["src/http/web.rs", "src/cluster/rpc.rs"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_route_macro_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut missing = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if PAGE_FILES.contains(&rel.as_str()) {
            continue;
        }
        let body = std::fs::read_to_string(&f).unwrap();
        // in-module unit tests (after `#[cfg(test)]`) mount throwaway routes: not part of the API
        let lines: Vec<&str> = body
            .lines()
            .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
            .collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_route = [
                "#[get(",
                "#[post(",
                "#[put(",
                "#[delete(",
                "#[patch(",
                "#[route(",
            ]
            .iter()
            .any(|m| t.starts_with(m));
            if !is_route {
                continue;
            }
            // the utoipa attribute sits in the attribute block right above
            let documented = lines[..i]
                .iter()
                .rev()
                .take_while(|p| {
                    let p = p.trim_start();
                    p.starts_with("#[")
                        || p.starts_with("///")
                        || p.starts_with(')')
                        || p.starts_with('(')
                        || p.starts_with("//")
                        || p.ends_with(',')
                        || p.ends_with('(')
                })
                .any(|p| p.contains("#[utoipa::path"));
            if !documented {
                missing.push(format!("{rel}:{}: {t}", i + 1));
            }
        }
        // hand-registered resources bypass the document; only the app's own /openapi.json may.
        for (i, l) in lines.iter().enumerate() {
            if (l.contains("web::resource(") || l.contains(".route(\"/"))
                && !l.contains("/openapi.json")
            {
                missing.push(format!(
                    "{rel}:{}: hand-registered route: {}",
                    i + 1,
                    l.trim()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from OpenAPI:\n{}",
        missing.join("\n")
    );
}

#[tokio::test]
async fn every_documented_path_is_mounted() {
    let s = Server::start().await;
    let c = client();
    let doc: serde_json::Value = s.anon().get("/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 4);
    // session creation: exactly one of the two query languages (oneOf), options alongside (allOf)
    let body = &paths["/api/verifiers/{verifier}/sessions"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    let schema = match body["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => body,
    };
    let one_of = schema["allOf"][1]["oneOf"].as_array().expect("oneOf");
    let required: Vec<&serde_json::Value> = one_of.iter().map(|s| &s["required"]).collect();
    assert_eq!(
        required,
        [
            &serde_json::json!(["dcql_query"]),
            &serde_json::json!(["presentation_definition"])
        ],
        "{schema}"
    );
    assert!(schema["allOf"][0]["properties"]["dcql_query"].is_object());
    // Swagger's Authorize: the cloud wallet's routes take a wallet session, not the admin token
    assert!(doc["components"]["securitySchemes"]["wallet_session"].is_object());
    let mut wallet_ops = 0;
    for (path, ops) in paths.iter().filter(|(p, _)| p.starts_with("/wallet/")) {
        for (method, op) in ops.as_object().unwrap() {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s.as_object().unwrap().keys().map(String::as_str))
                .collect();
            let public = path.ends_with("/auth/register") || path.ends_with("/auth/login");
            let expected: &[&str] = if public { &[] } else { &["wallet_session"] };
            assert_eq!(schemes, expected, "{method} {path}");
            wallet_ops += 1;
        }
    }
    assert!(wallet_ops >= 25, "{wallet_ops} wallet operations");
    for (path, ops) in paths {
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = c
                .request(m, s.url(&concrete))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert!(
                !body.contains("route_not_found"),
                "{method} {path} is documented but not mounted ({status}): {body}"
            );
        }
    }
    s.stop();
}

/// What a default node serves at `/openapi.json` is the committed `openapi.json`, byte for byte
/// (the lib test `committed_openapi_json_is_current` builds it without a server).
#[cfg(all(
    feature = "issuer",
    feature = "verifier",
    feature = "wallet",
    feature = "mediator",
    feature = "cluster",
    feature = "swagger-ui",
    feature = "redis"
))]
#[tokio::test]
async fn the_served_document_is_the_committed_file() {
    let s = Server::start().await;
    let served = s.anon().text("/openapi.json").await;
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json"))
            .unwrap();
    assert!(
        served == committed,
        "/openapi.json differs from the committed openapi.json: regenerate it with \
         IDSTACK_UPDATE_OPENAPI=1 cargo test --lib committed_openapi_json_is_current"
    );
    s.stop();
}
