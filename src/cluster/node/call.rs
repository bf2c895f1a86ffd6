//! The internal RPC client: a request signed for the peer (and its incarnation), its answer's
//! signature checked, and the outcome told apart — never sent, sent and unanswered, refused.

use super::*;

/// The request MACs a call to a peer carries, after the peer's gossiped data protocol.
#[derive(Debug, Clone, Copy)]
pub(super) enum SignFor {
    /// Protocol 1: the whole request without a target ([`auth::sign_legacy`]).
    Legacy,
    /// Protocol 2: both MACs for the peer's id ([`auth::Target::Node`]).
    Node,
    /// Protocol 3 on: both MACs for the peer's id and this generation of it.
    Incarnation(u64),
}

/// Most bytes read of an answer whose head declares no signed length ([`auth::HEADER_RESP_LEN`])
/// from a node of an earlier data protocol (a rolling upgrade): the RPC body limit, and for the
/// anti-entropy calls, which run one at a time and list or fetch a keyspace, 1 GiB.
fn unsigned_answer_limit(path: &str) -> u64 {
    if path == PATH_VERSIONS || path == PATH_FETCH {
        1 << 30
    } else {
        64 << 20
    }
}

/// Most bytes read of an answer without a signed length from a node listed at a protocol that
/// sends one: a signed refusal is smaller (an incarnation that gossip has not yet shown to be of
/// an earlier release, after a rollback), anything larger is not a member's.
const UNLISTED_FORM_LIMIT: u64 = 64 * 1024;

/// A signed answer to one request.
pub(super) enum Sent {
    Answer(Vec<u8>),
    /// The peer's signed refusal: the request named another of its incarnations; this is its
    /// current generation.
    OtherIncarnation(u64),
}

#[derive(Debug)]
pub enum RpcError {
    /// Sent, but no answer came (a timeout, a connection lost mid-way, an answer not signed by
    /// a member): the peer may be down, or may have acted on it.
    Transport(String),
    /// Never reached the peer (no connection could be made): it did not act on it.
    Unsent(String),
    /// The peer answered with an error.
    Remote(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Transport(e) => write!(f, "transport: {e}"),
            RpcError::Unsent(e) => write!(f, "unreachable: {e}"),
            RpcError::Remote(e) => write!(f, "remote: {e}"),
        }
    }
}

impl Node {
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
    ) -> Result<Resp, RpcError> {
        self.call_within(peer, addr, path, req, self.settings.rpc_timeout)
            .await
    }

    /// [`Node::call`] with its own timeout (`cluster.rpc_timeout_ms` for every call but a
    /// forwarded consistent compare-and-swap, whose executor runs rounds of its own).
    pub(super) async fn call_within<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let res = self.call_inner(peer, addr, path, req, timeout).await;
        // a signed answer, even a refusal, is from a peer that answers
        if matches!(res, Ok(_) | Err(RpcError::Remote(_))) {
            self.trust(peer);
        }
        if let Err(e) = &res {
            let op = path.rsplit('/').next().unwrap_or(path);
            self.metrics.rpc_errors.with_label_values(&[op]).inc();
            if matches!(e, RpcError::Transport(_) | RpcError::Unsent(_)) {
                self.suspect(peer);
            }
            tracing::debug!(peer, op, error = %e, "cluster rpc failed");
        }
        res
    }

    /// One signed call to node `peer` at `addr`: both signatures name `peer` and the incarnation
    /// of it gossip told this node of, so only that node, and only until it restarts, accepts the
    /// request (a copy sent elsewhere or replayed after a restart is refused). When `peer`
    /// answers, in a response signed for this request, that it is another incarnation (it
    /// restarted and gossip has not told this node yet), the call is sent once more, as a new
    /// request signed for the generation that answer names.
    pub(super) async fn call_inner<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let body = serde_json::to_vec(req).map_err(|e| RpcError::Remote(e.to_string()))?;
        // Nodes of data protocols 1 and 2 (rolling upgrade) know only their own forms; every
        // other peer, and one not (yet) listed, gets and needs the incarnation-bound one.
        let listed = self
            .members()
            .iter()
            .find(|m| m.node_id == peer)
            .map(|m| (m.protocol, m.generation));
        let form = match listed {
            Some((p, _)) if p < auth::HEAD_SIG_SINCE_PROTOCOL => SignFor::Legacy,
            Some((p, _)) if p < auth::GENERATION_SINCE_PROTOCOL => SignFor::Node,
            Some((_, generation)) => SignFor::Incarnation(generation),
            None => SignFor::Incarnation(0),
        };
        // a node of an earlier protocol answers without a signed length
        let unsigned_len = listed.is_some_and(|(p, _)| p < auth::RESP_LEN_SINCE_PROTOCOL);
        let send = |form| self.send_signed(peer, addr, path, &body, form, unsigned_len, timeout);
        let bytes = match send(form).await? {
            Sent::Answer(bytes) => bytes,
            Sent::OtherIncarnation(current) => {
                tracing::debug!(
                    peer,
                    current,
                    "cluster rpc: peer restarted; signing for its new generation"
                );
                match send(SignFor::Incarnation(current)).await? {
                    Sent::Answer(bytes) => bytes,
                    // once only: two restarts during one call, or a peer that answers oddly
                    Sent::OtherIncarnation(again) => {
                        return Err(RpcError::Remote(format!(
                            "{peer} refused its generation {current} too (now {again})"
                        )))
                    }
                }
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| RpcError::Remote(format!("decode: {e}")))
    }

    /// Sends one request (new timestamp and nonce) signed in `form`, and checks the answer's
    /// signatures: an answer not signed for this request is no answer. Its head's signed length
    /// is checked before the body is read, and no more is read (`unsigned_len`: the peer is of
    /// a data protocol that sends none, and at most [`unsigned_answer_limit`] is read; from any
    /// other peer an answer without one is read to [`UNLISTED_FORM_LIMIT`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_signed(
        &self,
        peer: &str,
        addr: &str,
        path: &'static str,
        body: &[u8],
        form: SignFor,
        unsigned_len: bool,
        timeout: Duration,
    ) -> Result<Sent, RpcError> {
        let ts = self.now_ms();
        let nonce = crate::clock::random_token(12);
        let target = match form {
            SignFor::Incarnation(generation) => auth::Target::Incarnation(peer, generation),
            SignFor::Node | SignFor::Legacy => auth::Target::Node(peer),
        };
        let sig = match form {
            SignFor::Legacy => auth::sign_legacy(&self.rpc_key, "POST", path, ts, &nonce, body),
            _ => auth::sign(&self.rpc_key, target, "POST", path, ts, &nonce, body),
        };
        // checked by the server before it reads the body (see `auth::HEADER_HEAD_SIG`; a
        // protocol-1 peer ignores it)
        let head_sig = auth::sign_head(&self.rpc_key, target, "POST", path, ts, &nonce);
        let mut request = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .header(auth::HEADER_TS, ts.to_string())
            .header(auth::HEADER_NONCE, &nonce)
            .header(auth::HEADER_SIG, sig)
            .header(auth::HEADER_HEAD_SIG, head_sig)
            .header(auth::HEADER_NODE, self.id());
        if let SignFor::Incarnation(generation) = form {
            request = request.header(auth::HEADER_GENERATION, generation.to_string());
        }
        let resp = request
            .timeout(timeout)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RpcError::Unsent(e.to_string())
                } else {
                    RpcError::Transport(e.to_string())
                }
            })?;
        let status = resp.status();
        let resp_sig = resp
            .headers()
            .get(auth::HEADER_RESP_SIG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let declared = auth::verify_response_len(
            &self.rpc_key,
            path,
            &nonce,
            status.as_u16(),
            resp.headers()
                .get(auth::HEADER_RESP_LEN)
                .and_then(|v| v.to_str().ok()),
        );
        // a signed length is a member's word (read as said); otherwise a bound, and the body's
        // own signature below decides
        let (cap, reserve) = match declared {
            Some(n) => (n, n.min(64 << 20)),
            None if unsigned_len => (unsigned_answer_limit(path), 64 * 1024),
            None => (UNLISTED_FORM_LIMIT, 4 * 1024),
        };
        let bytes = read_at_most(resp, cap, reserve).await?;
        if declared.is_some_and(|n| n != bytes.len() as u64) {
            return Err(RpcError::Transport(format!(
                "{status} answer shorter than its head said"
            )));
        }
        // An answer not signed for this request is not from a member: treated like no answer
        // (the address does not reach the peer), so nothing it says is believed.
        if !auth::verify_response(
            &self.rpc_key,
            path,
            &nonce,
            status.as_u16(),
            &bytes,
            resp_sig.as_deref(),
        ) {
            return Err(RpcError::Transport(format!(
                "{status} answer not signed with the cluster key"
            )));
        }
        // (also for a request signed for the node only: this node's view listed `peer` at an
        // older protocol, and the incarnation answering is current)
        if status == reqwest::StatusCode::UNAUTHORIZED
            && matches!(form, SignFor::Incarnation(_) | SignFor::Node)
        {
            if let Some(current) = auth::other_incarnation(&bytes) {
                return Ok(Sent::OtherIncarnation(current));
            }
        }
        if !status.is_success() {
            return Err(RpcError::Remote(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        Ok(Sent::Answer(bytes))
    }
}

/// The body of `resp` (`reserve` bytes reserved first), refused (a transport failure) as soon as
/// it passes `cap` bytes.
async fn read_at_most(
    mut resp: reqwest::Response,
    cap: u64,
    reserve: u64,
) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::with_capacity(reserve as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| RpcError::Transport(e.to_string()))?
    {
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(RpcError::Transport(format!("answer over {cap} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
