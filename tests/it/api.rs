//! A small typed client for the integration tests: `s.anon()`, `s.admin()` (the admin token) or
//! `s.bearer(token)` (a wallet session), then `get` / `post` / `put` / `delete` for the JSON body
//! or the `*_resp` forms for the response itself (status, headers, problem checks). Paths are
//! relative to the server (`/api/...`) or absolute URLs. And the one wallet-user helper
//! ([`WalletUser`]) the suites share.

use reqwest::{Method, RequestBuilder, Response};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};

use crate::common::{client, Server, ADMIN_TOKEN};

/// Calls to one server as one caller.
pub struct Api {
    base: String,
    bearer: Option<String>,
}

impl Server {
    /// Calls without credentials.
    pub fn anon(&self) -> Api {
        Api {
            base: self.base.clone(),
            bearer: None,
        }
    }

    /// Calls with the admin token.
    pub fn admin(&self) -> Api {
        self.bearer(ADMIN_TOKEN)
    }

    /// Calls with `token` as the bearer (a wallet session, an access token).
    pub fn bearer(&self, token: impl Into<String>) -> Api {
        Api {
            base: self.base.clone(),
            bearer: Some(token.into()),
        }
    }
}

impl Api {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// A request with this caller's credentials, for what the shortcuts below do not cover.
    pub fn request(&self, method: Method, path: impl AsRef<str>) -> RequestBuilder {
        let r = client().request(method, self.url(path.as_ref()));
        match &self.bearer {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap()
    }

    pub async fn get_resp(&self, path: impl AsRef<str>) -> Response {
        self.send(Method::GET, path.as_ref(), None).await
    }

    pub async fn post_resp(&self, path: impl AsRef<str>, body: &impl Serialize) -> Response {
        let body = serde_json::to_value(body).unwrap();
        self.send(Method::POST, path.as_ref(), Some(body)).await
    }

    pub async fn put_resp(&self, path: impl AsRef<str>, body: &impl Serialize) -> Response {
        let body = serde_json::to_value(body).unwrap();
        self.send(Method::PUT, path.as_ref(), Some(body)).await
    }

    pub async fn delete_resp(&self, path: impl AsRef<str>) -> Response {
        self.send(Method::DELETE, path.as_ref(), None).await
    }

    /// The JSON body of a GET, whatever the status (panics when it is not JSON).
    pub async fn get(&self, path: impl AsRef<str>) -> Value {
        self.get_resp(path).await.json().await.unwrap()
    }

    /// The JSON body of a POST of `body`, whatever the status.
    pub async fn post(&self, path: impl AsRef<str>, body: &impl Serialize) -> Value {
        self.post_resp(path, body).await.json().await.unwrap()
    }

    /// The body of a GET as `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: impl AsRef<str>) -> T {
        self.get_resp(path).await.json().await.unwrap()
    }

    /// The text body of a GET, whatever the status.
    pub async fn text(&self, path: impl AsRef<str>) -> String {
        self.get_resp(path).await.text().await.unwrap()
    }

    /// Status and JSON body (`null` when empty or not JSON) of any call.
    pub async fn call(
        &self,
        method: Method,
        path: impl AsRef<str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = self.send(method, path.as_ref(), body).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// A wallet user: an account, logged in, with one wallet (`main`).
pub struct WalletUser {
    pub token: String,
    pub wallet: String,
}

/// The password every test account uses.
pub const PASSWORD: &str = "correct horse battery";

impl WalletUser {
    /// Registers `email`, logs in and creates a wallet.
    pub async fn signup(s: &Server, email: &str) -> WalletUser {
        let creds = json!({"email": email, "password": PASSWORD});
        let r = s.anon().post_resp("/wallet/auth/register", &creds).await;
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r = s.anon().post_resp("/wallet/auth/login", &creds).await;
        assert_eq!(r.status(), 200);
        let login: Value = r.json().await.unwrap();
        let token = login["token"].as_str().unwrap().to_string();
        let r = s
            .bearer(&token)
            .post_resp("/wallet/wallets", &json!({"name": "main"}))
            .await;
        assert!(r.status().is_success(), "{}", r.status());
        let w: Value = r.json().await.unwrap();
        WalletUser {
            token,
            wallet: w["id"].as_str().unwrap().to_string(),
        }
    }

    /// This user's calls.
    pub fn api(&self, s: &Server) -> Api {
        s.bearer(&self.token)
    }

    /// A `method` call to `/wallet/wallets/{wallet}{path}` (with `body` as JSON).
    pub async fn send(
        &self,
        s: &Server,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let path = format!("/wallet/wallets/{}{path}", self.wallet);
        self.api(s).send(method, &path, body).await
    }

    /// Status and body of a POST to `/wallet/wallets/{wallet}{path}`.
    pub async fn call(&self, s: &Server, path: &str, body: Value) -> (u16, Value) {
        let path = format!("/wallet/wallets/{}{path}", self.wallet);
        self.api(s).call(Method::POST, path, Some(body)).await
    }
}
