//! The engine on a store that fails on cue: what a client sees when the mediator's own writes
//! fail after it has handled a message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::model::{ks, Connection};
use super::MediatorService;
use crate::clock::Clock as _;
use crate::clock::FakeClock;
use crate::didcomm::client::{pickup, AgentKey};
use crate::roles::RoleContext;
use crate::store::test_wrapper::store_wrapper;
use crate::store::{BatchOp, Store, StoreError, StoreResult};

/// A store whose batches on the mediator's queue fail while `fail` is set (an acknowledgement,
/// which deletes what it acknowledges in one batch, cannot be written).
struct FailingAcks {
    inner: Arc<dyn Store>,
    fail: AtomicBool,
    /// Deletes on the queue passed on to `inner`.
    queue_deletes: std::sync::atomic::AtomicUsize,
}

store_wrapper!(FailingAcks, only batch {
    async fn batch(&self, ops: Vec<BatchOp>) -> StoreResult<()> {
        let on_queue = ops.iter().any(|op| match op {
            BatchOp::Put { keyspace, .. } | BatchOp::Delete { keyspace, .. } => *keyspace == ks::QUEUE,
        });
        if on_queue && self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("queue writes fail".into()));
        }
        let deletes = ops
            .iter()
            .filter(|op| matches!(op, BatchOp::Delete { keyspace, .. } if *keyspace == ks::QUEUE))
            .count();
        self.queue_deletes.fetch_add(deletes, Ordering::SeqCst);
        self.inner.batch(ops).await
    }
});

/// A mediator on a [`FailingAcks`] store, and `alice` with a granted mediation and one queued
/// message.
async fn mediated() -> (
    Arc<MediatorService>,
    Arc<FailingAcks>,
    Arc<FakeClock>,
    AgentKey,
) {
    let clock = FakeClock::new(1_800_000_000_000);
    let mut ctx = RoleContext::for_tests(clock.clone());
    let store = Arc::new(FailingAcks {
        inner: ctx.store.clone(),
        fail: AtomicBool::new(false),
        queue_deletes: Default::default(),
    });
    ctx.store = store.clone();
    let svc = super::init(&ctx, &crate::config::MediatorConfig::default())
        .await
        .unwrap();
    let alice = AgentKey::generate();
    let conn = Connection {
        id: "conn-alice".into(),
        their_did: alice.did_key(),
        their_verkey: alice.verkey.clone(),
        their_endpoint: None,
        their_label: "alice".into(),
        protocol: "didexchange/1.1".into(),
        state: "completed".into(),
        mediation: "granted".into(),
        invitation_id: None,
        via_single_use: false,
        keys: None,
        created_at_ms: 0,
    };
    svc.save_connection(&conn).await.unwrap();
    svc.enqueue(&conn.id, &alice.verkey, json!({"queued": "for alice"}))
        .await
        .unwrap();
    (svc, store, clock, alice)
}

/// Implicit pickup over HTTP hands out the oldest queued message and deletes it. When the delete
/// fails, the message was handled all the same: the answer is not an error (that would make the
/// client send it again) but the message, which stays queued and comes again once its lease
/// ends — at least once, never lost (the delete may have landed unseen).
#[tokio::test]
async fn a_failed_dequeue_after_the_message_was_handled_is_not_an_error() {
    let (svc, store, clock, alice) = mediated().await;
    let ping = || {
        alice.pack(
            &pickup::ping_no_response(),
            &svc.key.verifying_key().to_bytes(),
        )
    };
    let queued = json!({"queued": "for alice"});
    let as_json = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let got = svc.answer_http(&ping().unwrap()).await.unwrap().unwrap();
    assert_eq!(as_json(got), queued);
    assert_eq!(svc.stats().await.unwrap().queued_messages, 1);
    // leased meanwhile: not handed out twice at once
    store.fail.store(false, Ordering::SeqCst);
    assert_eq!(svc.answer_http(&ping().unwrap()).await.unwrap(), None);
    // the lease has ended: again, and now dequeued
    clock.advance_ms(60_000);
    let got = svc.answer_http(&ping().unwrap()).await.unwrap().unwrap();
    assert_eq!(as_json(got), queued);
    assert_eq!(svc.stats().await.unwrap().queued_messages, 0);
}

/// A mediator whose public invitation takes one connection, and that invitation's id.
async fn one_place_invitation() -> (Arc<MediatorService>, String) {
    invitation_with_places(1).await
}

/// A mediator whose public invitation takes `places` connections, and that invitation's id.
async fn invitation_with_places(places: u64) -> (Arc<MediatorService>, String) {
    let ctx = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
    let cfg = crate::config::MediatorConfig {
        max_connections_per_invitation: places,
        ..Default::default()
    };
    let svc = super::init(&ctx, &cfg).await.unwrap();
    let q = serde_json::from_value(json!({})).unwrap();
    let inv = svc.invitation(&q).await.unwrap();
    let id = inv.invitation["@id"].as_str().unwrap().to_string();
    (svc, id)
}

/// The public invitation's pointer record (`public`) is not an invitation of its own: a
/// handshake naming it is refused, so the connections counted stay the configured number.
#[tokio::test]
async fn the_public_pointer_is_not_a_second_invitation() {
    let (svc, id) = one_place_invitation().await;
    let id = id.as_str();
    assert_eq!(
        svc.use_invitation(Some(id)).await.unwrap(),
        (id.to_string(), false)
    );
    let full = svc.use_invitation(Some(id)).await.unwrap_err();
    assert!(
        matches!(full, super::error::MediatorError::InvitationFull(1)),
        "{full:?}"
    );
    let by_pointer = svc.use_invitation(Some("public")).await.unwrap_err();
    assert!(
        matches!(by_pointer, super::error::MediatorError::BadMessage(_)),
        "{by_pointer:?}"
    );
}

/// A single-use invitation is stored under a digest of its id, never the id (a copy of the store
/// must not hand out unused ones), and is taken once by its id.
#[tokio::test]
async fn a_single_use_invitation_is_stored_by_digest_and_taken_once() {
    let (svc, _) = one_place_invitation().await;
    let q = serde_json::from_value(json!({"single_use": true})).unwrap();
    let inv = svc.invitation(&q).await.unwrap();
    let id = inv.invitation["@id"].as_str().unwrap().to_string();
    let stored = svc
        .ctx
        .store
        .scan_prefix(super::model::ks::INVITATIONS, "", 100)
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|(k, v)| !k.contains(&id) && !String::from_utf8_lossy(v).contains(&id)));
    // the digest a copy of the store shows is not the id
    let digest = format!("sha256:{}", crate::crypto::sha256_hex(&id));
    let e = svc.use_invitation(Some(&digest)).await.unwrap_err();
    assert!(
        matches!(e, super::error::MediatorError::BadMessage(_)),
        "{e:?}"
    );
    let (named, single) = svc.use_invitation(Some(&id)).await.unwrap();
    assert_eq!((named.as_str(), single), (id.as_str(), true));
    let again = svc.use_invitation(Some(&id)).await.unwrap_err();
    assert!(
        matches!(again, super::error::MediatorError::InvitationUsed),
        "{again:?}"
    );
}

/// Attacker review: every reply to a message without a return route was POSTed to the peer's
/// endpoint from a task of its own, unbounded; an endpoint that accepts and never answers, sent
/// trust pings at socket speed, ran the node out of file descriptors. At most four POSTs per
/// connection are in flight; the other replies wait in the peer's queue.
#[tokio::test]
async fn replies_to_an_endpoint_that_never_answers_are_bounded() {
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/", tarpit.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = tarpit.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(sock); // never answered
        }
    });
    let (svc, _store, _clock, alice) = mediated().await;
    let conn = svc.connection_by_key(&alice.verkey).await.unwrap();
    svc.update_connection(&conn.id, |c| c.their_endpoint = Some(endpoint.clone()))
        .await
        .unwrap();
    let queued_before = svc.stats().await.unwrap().queued_messages;
    for i in 0..40 {
        let ping = json!({"@type": "https://didcomm.org/trust_ping/1.0/ping",
                          "@id": format!("ping-{i}"), "response_requested": true});
        let packed = alice
            .pack(&ping, &svc.key.verifying_key().to_bytes())
            .unwrap();
        svc.answer_http(&packed).await.unwrap();
    }
    // the POSTs in flight reach the tarpit; give any others the time to (there must be none)
    for _ in 0..50 {
        if accepted.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "reply POSTs in flight");
    // the rest wait for alice's pickup
    let queued = svc.stats().await.unwrap().queued_messages;
    assert_eq!(queued - queued_before, 36);
}

/// Attacker review: a handshake was counted against its invitation before it was checked, so
/// refused requests used up the public invitation's places. Now only a request whose authcrypt
/// sender is a key of the DID it presents takes one; and a socket carries at most
/// `MAX_HANDSHAKES_PER_SOCKET` handshakes.
#[tokio::test]
async fn a_refused_handshake_takes_no_place_of_its_invitation() {
    let (svc, id) = one_place_invitation().await;
    let id = id.as_str();
    let (alice, mallory) = (AgentKey::generate(), AgentKey::generate());
    let request = |did: String| {
        json!({"@type": "https://didcomm.org/didexchange/1.1/request", "@id": "r",
               "~thread": {"pthid": id}, "did": did, "label": "a"})
    };
    for _ in 0..3 {
        let refused = svc
            .didexchange_request(&request(mallory.did_key()), &alice.verkey, "1.1")
            .await
            .unwrap_err();
        assert!(
            !matches!(refused, super::error::MediatorError::InvitationFull(_)),
            "{refused:?}"
        );
    }
    svc.didexchange_request(&request(alice.did_key()), &alice.verkey, "1.1")
        .await
        .unwrap();

    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let socket = svc.new_socket(tx);
    for _ in 0..super::socket::MAX_HANDSHAKES_PER_SOCKET {
        assert!(socket.count_handshake());
    }
    assert!(!socket.count_handshake());
}

/// Attacker review (DIDComm): a second handshake from a key that has a connection made the key
/// point at a new, empty connection: the agent's pickups read that one while forwards kept
/// filling the old one and its routing keys stayed there (a replayed request did the same). A
/// key has one connection: the same request again is answered again on it, another DID is
/// refused, neither spends an invitation, and a racing one loses at the claim. And an authcrypted message naming another recipient besides
/// the mediator is refused: that recipient could re-encrypt anything as its sender (RFC 0019).
#[tokio::test]
async fn a_key_has_one_connection_and_speaks_for_itself_alone() {
    let (svc, id) = invitation_with_places(2).await;
    let request = |who: &AgentKey| {
        json!({"@type": "https://didcomm.org/didexchange/1.1/request", "@id": "r",
               "~thread": {"pthid": id}, "did": who.did_key(), "label": "a"})
    };
    let (alice, bob) = (AgentKey::generate(), AgentKey::generate());
    svc.didexchange_request(&request(&alice), &alice.verkey, "1.1")
        .await
        .unwrap();
    let first = svc.connection_by_key(&alice.verkey).await.unwrap();
    // the same request again (its answer lost, or replayed): answered again, same connection
    let again = svc
        .didexchange_request(&request(&alice), &alice.verkey, "1.1")
        .await
        .unwrap();
    assert_eq!(
        again["@type"],
        "https://didcomm.org/didexchange/1.1/response"
    );
    assert_eq!(
        svc.connection_by_key(&alice.verkey).await.unwrap().id,
        first.id
    );
    // the key presenting another DID: refused
    let mut other = request(&alice);
    other["did"] = json!("did:example:another");
    let e = svc
        .didexchange_request(&other, &alice.verkey, "1.1")
        .await
        .unwrap_err();
    assert!(format!("{e}").contains("connection with this key"), "{e}");
    // neither took a place: the invitation's second place is bob's
    svc.didexchange_request(&request(&bob), &bob.verkey, "1.1")
        .await
        .unwrap();
    // a request that passed the check at the same time loses at the claim, and leaves nothing
    let racing = Connection {
        id: "conn-racing".into(),
        ..first.clone()
    };
    assert!(svc.save_connection(&racing).await.is_err());
    assert_eq!(
        svc.connection_by_key(&alice.verkey).await.unwrap().id,
        first.id
    );
    assert!(svc
        .ctx
        .store
        .get(super::model::ks::CONNECTIONS, "conn-racing")
        .await
        .unwrap()
        .is_none());
    // alice's connection answers her; an envelope naming bob too is refused
    let ping = json!({"@type": "https://didcomm.org/trust_ping/1.0/ping", "@id": "p",
                      "response_requested": true, "~transport": {"return_route": "all"}});
    let answer = ask(&svc, &alice, ping.clone()).await;
    assert_eq!(
        answer["@type"],
        "https://didcomm.org/trust_ping/1.0/ping_response"
    );
    let med = svc.key.verifying_key().to_bytes();
    let shared = alice
        .pack_to_all(&ping, &[med, bob.verkey_bytes()])
        .unwrap();
    let e = svc.answer_http(&shared).await.unwrap_err();
    assert!(format!("{e}").contains("only recipient"), "{e}");
}

/// Attacker review: 64 connections holding 4 reply POSTs each took every place, and the next
/// agent's handshake response went to a queue it does not read. The last 64 of the 256 places go
/// only to handshake responses of connections with nothing in flight; the total never passes 256
/// (a larger reserve brought the descriptor exhaustion back), and replies to pings cannot take
/// the reserve.
#[tokio::test]
async fn peers_holding_every_reply_place_leave_one_for_the_next_agent() {
    let (svc, _store, _clock, _alice) = mediated().await;
    let posts = &svc.reply_posts;
    let mut held: Vec<_> = (0..48)
        .flat_map(|c| (0..4).map(move |_| c))
        .map(|c| posts.take(&format!("greedy-{c}"), false).unwrap())
        .collect();
    assert!(posts.take("greedy-0", false).is_none());
    assert!(
        posts.take("pinger", false).is_none(),
        "a ping reply takes no reserved place"
    );
    held.push(
        posts
            .take("greedy-49", true)
            .expect("a handshake reply from the reserve"),
    );
    assert!(
        posts.take("greedy-49", true).is_none(),
        "one from the reserve"
    );
    for c in 0..63 {
        held.push(posts.take(&format!("newcomer-{c}"), true).unwrap());
    }
    assert!(posts.take("one-too-many", true).is_none(), "256 in all");
}

/// Attacker review: a forward whose `msg` is a string of 127 nested arrays parsed, was stored a
/// level deeper in its queue record — past serde_json's read limit — and stalled the recipient's
/// pickup behind a record nobody could read, for the message TTL. It is refused.
#[tokio::test]
async fn a_forward_nested_past_the_read_limit_is_refused() {
    let (svc, store, _clock, alice) = mediated().await;
    store
        .put(ks::ROUTES, &alice.verkey, b"conn-alice".to_vec(), None)
        .await
        .unwrap();
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let e = svc
        .forward(&json!({"to": alice.verkey, "msg": deep}))
        .await
        .unwrap_err();
    assert!(
        matches!(e, super::error::MediatorError::BadMessage(_)),
        "{e:?}"
    );
    svc.forward(&json!({"to": alice.verkey, "msg": {"protected": "p", "ciphertext": "c"}}))
        .await
        .unwrap();
    assert_eq!(svc.stats().await.unwrap().queued_messages, 2);
}

/// `m` from `alice` over HTTP with return route: the answer, unpacked.
async fn ask(svc: &MediatorService, alice: &AgentKey, m: serde_json::Value) -> serde_json::Value {
    let env = alice.pack(&m, &svc.key.verifying_key().to_bytes()).unwrap();
    let got = svc.answer_http(&env).await.unwrap().unwrap();
    alice.unpack(&got).unwrap().0
}

/// A pickup is not starved by what sits ahead of the messages it may take: queue records nobody
/// can read (deleted when the index is built, not skipped at every pickup for the message TTL),
/// and, for a `delivery-request` filtered by `recipient_key`, another key's messages (the keys
/// are public: anyone can fill that window). Before, `claim` read the first `limit + leased`
/// rows and filtered them afterwards.
#[tokio::test]
async fn a_pickup_is_not_starved_by_unreadable_rows_or_another_keys_messages() {
    let (svc, _store, clock, alice) = mediated().await;
    let other = AgentKey::generate();
    for i in 0..5 {
        clock.advance_ms(1);
        svc.enqueue("conn-alice", &other.verkey, json!({"for": "other", "n": i}))
            .await
            .unwrap();
    }
    clock.advance_ms(1);
    svc.enqueue(
        "conn-alice",
        &alice.verkey,
        json!({"queued": "again for alice"}),
    )
    .await
    .unwrap();
    // records older than every message that cannot be read as one; the index is rebuilt (as
    // after missed bus events)
    for i in 0..3 {
        svc.ctx
            .store
            .put(
                ks::QUEUE,
                &format!("conn-alice/0000000000000bad{i}"),
                b"not a queued message".to_vec(),
                None,
            )
            .await
            .unwrap();
    }
    svc.forget_indexes();
    let mut req = pickup::delivery_request(2);
    req["recipient_key"] = json!(alice.did_key());
    let delivery = ask(&svc, &alice, req).await;
    let got: Vec<serde_json::Value> = pickup::attachments(&delivery)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        got,
        [
            json!({"queued": "for alice"}),
            json!({"queued": "again for alice"})
        ],
        "{delivery}"
    );
    // the unreadable records are gone; the other key's five wait
    assert_eq!(svc.stats().await.unwrap().queued_messages, 7);
    let delivery = ask(&svc, &alice, pickup::delivery_request(10)).await;
    assert_eq!(pickup::attachments(&delivery).len(), 5, "{delivery}");
}

/// One message may not ask for unbounded store work: a `keylist-update` carries at most 100
/// updates (each is up to two writes) and a `messages-received` names at most 1,000 messages
/// (each a delete); past that the whole message is refused and nothing is changed.
#[tokio::test]
async fn one_message_asks_for_bounded_store_work() {
    let (svc, _store, _clock, alice) = mediated().await;
    let send = |m: serde_json::Value| {
        let env = alice.pack(&m, &svc.key.verifying_key().to_bytes()).unwrap();
        let svc = svc.clone();
        async move { svc.answer_http(&env).await }
    };
    let updates: Vec<serde_json::Value> = (0..101)
        .map(|_| json!({"recipient_key": AgentKey::generate().verkey, "action": "add"}))
        .collect();
    let mut m = crate::didcomm::client::new_message(
        "coordinate-mediation/1.0/keylist-update",
        json!({"updates": updates}),
    );
    m["~transport"] = json!({"return_route": "all"});
    let err = send(m).await.expect_err("101 updates must be refused");
    assert!(err.to_string().contains("more than 100 updates"), "{err}");
    assert_eq!(svc.stats().await.unwrap().registered_keys, 0);
    let ids: Vec<String> = (0..1001).map(|i| format!("id-{i}")).collect();
    let err = send(pickup::messages_received(&ids))
        .await
        .expect_err("1,001 ids must be refused");
    assert!(err.to_string().contains("more than 1000"), "{err}");
    assert_eq!(svc.stats().await.unwrap().queued_messages, 1);
    // ids are ours or nothing: a 100 KB "id" is not deleted, counted, nor carried to other nodes
    send(pickup::messages_received(&["0".repeat(100_000)]))
        .await
        .unwrap();
    assert_eq!(svc.stats().await.unwrap().acknowledged_total, 0);
}

/// An acknowledgement deletes what the connection holds and writes nothing for other ids: in a
/// cluster each delete, of a key that exists or not, is a tombstone every node keeps for a week
/// (attacker review: a client naming made-up ids filled every node's disk and memory).
#[tokio::test]
async fn acknowledging_what_is_not_queued_writes_nothing() {
    let (svc, store, clock, alice) = mediated().await;
    let now = clock.now_ms();
    let made_up: Vec<String> = [now, now - 1_000, 1_700_000_000_000]
        .iter()
        .map(|t| format!("{t}madeUp"))
        .collect();
    ask_ack(&svc, &alice, &made_up).await;
    assert_eq!(store.queue_deletes.load(Ordering::SeqCst), 0);
    let stats = svc.stats().await.unwrap();
    assert_eq!((stats.acknowledged_total, stats.queued_messages), (0, 1));
    // the queued message, named with them, is deleted alone
    let delivery = ask(&svc, &alice, pickup::delivery_request(10)).await;
    let mut ids: Vec<String> = pickup::attachments(&delivery)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 1, "{delivery}");
    ids.extend(made_up);
    ask_ack(&svc, &alice, &ids).await;
    assert_eq!(store.queue_deletes.load(Ordering::SeqCst), 1);
    let stats = svc.stats().await.unwrap();
    assert_eq!((stats.acknowledged_total, stats.queued_messages), (1, 0));
}

/// A socket that does not read holds a bounded weight of unacknowledged messages: four
/// `max_message_bytes` (and one more delivery), not 500 messages of any size (attacker review:
/// 11–17 MB per socket that never read, 256 sockets per address).
#[tokio::test]
async fn a_socket_holds_a_bounded_weight_of_unacknowledged_messages() {
    let (svc, _store, _clock, alice) = mediated().await;
    let pad = "x".repeat(120_000);
    for _ in 0..20 {
        svc.enqueue("conn-alice", &alice.verkey, json!({ "pad": pad }))
            .await
            .unwrap();
    }
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let s = svc.new_socket(tx);
    svc.set_mode("conn-alice", &s, Some(super::socket::Mode::Implicit));
    svc.pump(&s).await.unwrap();
    let one = crate::config::MediatorConfig::default().max_message_bytes as u64;
    let (held, bytes) = (s.inflight_len(), s.inflight_bytes());
    assert!(bytes <= 5 * one, "{held} messages, {bytes} bytes held");
    assert!(
        (8..21).contains(&held),
        "{held} messages, {bytes} bytes held"
    );
}

/// `messages-received` naming `ids`, from `alice`, answered with a status.
async fn ask_ack(svc: &MediatorService, alice: &AgentKey, ids: &[String]) {
    let mut m = pickup::messages_received(ids);
    m["~transport"] = json!({"return_route": "all"});
    let status = ask(svc, alice, m).await;
    assert!(
        status["@type"].as_str().unwrap().ends_with("/status"),
        "{status}"
    );
}

/// Two nodes on one store and bus (as on Redis, or a cluster): a message one queues, and its
/// acknowledgement on the other, reach the other node's index of that queue as changes on the
/// bus, not as a signal to rebuild it from the store (each rebuild read the whole queue, once per
/// message another node queued). A record written straight into the store, which only a
/// rebuild would find, shows which happened.
#[tokio::test]
async fn another_nodes_queue_changes_update_the_index_without_a_rescan() {
    let clock = FakeClock::new(1_800_000_000_000);
    let ctx = RoleContext::for_tests(clock.clone());
    let cfg = crate::config::MediatorConfig::default();
    let (a, b) = (
        super::init(&ctx, &cfg).await.unwrap(),
        super::init(&ctx, &cfg).await.unwrap(),
    );
    let alice = AgentKey::generate();
    let count = |svc: Arc<MediatorService>| async move {
        svc.status("conn-alice", &json!({}), None).await.unwrap()["message_count"]
            .as_u64()
            .unwrap()
    };
    // both nodes have built their index of the (empty) queue
    assert_eq!((count(a.clone()).await, count(b.clone()).await), (0, 0));
    let hidden = super::model::QueuedMessage {
        id: "0000000000001hidden".into(),
        recipient_key: alice.verkey.clone(),
        received_at_ms: 1_800_000_000_000,
        msg: json!({"only": "a rebuild finds me"}),
    };
    ctx.store
        .put(
            ks::QUEUE,
            "conn-alice/0000000000001hidden",
            serde_json::to_vec(&hidden).unwrap(),
            None,
        )
        .await
        .unwrap();
    a.enqueue("conn-alice", &alice.verkey, json!({"n": 1}))
        .await
        .unwrap();
    let until = |svc: Arc<MediatorService>, want: u64| async move {
        for _ in 0..200 {
            if count(svc.clone()).await == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!(
            "the index says {} messages, not {want}",
            count(svc.clone()).await
        );
    };
    until(b.clone(), 1).await;
    // what `svc` hands out to an HTTP pickup: the message a queued (the hidden one skipped)
    let claimed = |svc: Arc<MediatorService>| async move {
        svc.claim("conn-alice", None, 10, None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .find(|id| id != "0000000000001hidden")
            .expect("the message a queued")
    };
    // acknowledged on b: out of a's index too
    let id = claimed(b.clone()).await;
    b.acknowledge("conn-alice", &[id], None).await.unwrap();
    until(a.clone(), 0).await;
    assert_eq!(count(b.clone()).await, 0);
    // A message a handed out (here to an HTTP pickup on a) and b's index has not heard of yet
    // (its bus event still on the way: here, taken out of b's index) is acknowledged on b, as
    // credo acknowledges over HTTP what a socket on another node delivered: b passes the id on
    // the bus and a, which holds it, deletes it and ends its lease. b writes nothing itself.
    a.enqueue("conn-alice", &alice.verkey, json!({"n": 2}))
        .await
        .unwrap();
    until(b.clone(), 1).await;
    let id = claimed(a.clone()).await;
    b.book().forget("conn-alice", std::slice::from_ref(&id));
    let acked =
        |svc: Arc<MediatorService>| async move { svc.stats().await.unwrap().acknowledged_total };
    let (a_before, b_before) = (acked(a.clone()).await, acked(b.clone()).await);
    b.acknowledge("conn-alice", std::slice::from_ref(&id), None)
        .await
        .unwrap();
    let key = format!("conn-alice/{id}");
    for _ in 0..200 {
        if ctx.store.get(ks::QUEUE, &key).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(ctx.store.get(ks::QUEUE, &key).await.unwrap(), None);
    assert_eq!(acked(a.clone()).await, a_before + 1);
    assert_eq!(acked(b.clone()).await, b_before);
}

/// A store that parks queue writes (after they land) and queue scans at a gate while `hold` is
/// set, and says when one got there: a request cancelled at that point (its client went away).
struct Gated {
    inner: Arc<dyn Store>,
    hold: AtomicBool,
    entered: tokio::sync::Notify,
    gate: tokio::sync::Semaphore,
}

impl Gated {
    async fn park(&self, keyspace: &str) {
        if keyspace == ks::QUEUE && self.hold.load(Ordering::SeqCst) {
            self.entered.notify_one();
            let _ = self.gate.acquire().await.map(|p| p.forget());
        }
    }
}

struct GatedScans(Gated);
struct GatedPuts(Gated);

impl std::ops::Deref for GatedScans {
    type Target = Gated;
    fn deref(&self) -> &Gated {
        &self.0
    }
}

impl std::ops::Deref for GatedPuts {
    type Target = Gated;
    fn deref(&self) -> &Gated {
        &self.0
    }
}

store_wrapper!(GatedScans, only scan_prefix {
    async fn scan_prefix(
        &self,
        keyspace: &'static str,
        prefix: &str,
        limit: usize,
    ) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.park(keyspace).await;
        self.inner.scan_prefix(keyspace, prefix, limit).await
    }
});

store_wrapper!(GatedPuts {
    async fn get(&self, keyspace: &'static str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get(keyspace, key).await
    }
    async fn put(
        &self,
        keyspace: &'static str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<std::time::Duration>,
    ) -> StoreResult<()> {
        let written = self.inner.put(keyspace, key, value, ttl).await;
        self.park(keyspace).await;
        written
    }
    async fn compare_and_swap(
        &self,
        keyspace: &'static str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Option<(Vec<u8>, Option<std::time::Duration>)>,
    ) -> StoreResult<crate::store::Cas> {
        self.inner.compare_and_swap(keyspace, key, expected, new).await
    }
});

fn gated(inner: Arc<dyn Store>) -> Gated {
    Gated {
        inner,
        hold: AtomicBool::new(false),
        entered: tokio::sync::Notify::new(),
        gate: tokio::sync::Semaphore::new(0),
    }
}

/// A mediator on a [`Gated`] store (`wrap` picks what is gated), and that store.
async fn on_gated_store<W: Store>(wrap: fn(Gated) -> W) -> (Arc<MediatorService>, Arc<W>) {
    let mut ctx = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
    let store = Arc::new(wrap(gated(ctx.store.clone())));
    ctx.store = store.clone();
    let svc = super::init(&ctx, &crate::config::MediatorConfig::default())
        .await
        .unwrap();
    (svc, store)
}

async fn count_of(svc: &MediatorService, conn: &str) -> u64 {
    svc.status(conn, &json!({}), None).await.unwrap()["message_count"]
        .as_u64()
        .unwrap()
}

/// A request cancelled while it builds a queue's index (a forward or pickup whose client reset
/// the connection mid-scan) does not leave the index "being built" for ever: the next caller
/// builds it itself. Before, every later caller for that queue — forwards, pickups, the live
/// socket's pump — waited on a build nobody would finish.
#[tokio::test]
async fn an_index_build_whose_caller_went_away_holds_nobody_up() {
    let (svc, store) = on_gated_store(GatedScans).await;
    store.hold.store(true, Ordering::SeqCst);
    let builder = tokio::spawn({
        let svc = svc.clone();
        async move { count_of(&svc, "conn-x").await }
    });
    store.entered.notified().await;
    builder.abort();
    assert!(builder.await.is_err(), "the build was to be cancelled");
    store.hold.store(false, Ordering::SeqCst);
    assert!(
        matches!(
            svc.book().try_run("conn-x", 0, |_, _| ()),
            Err((_, super::book::Pending::Started(_)))
        ),
        "the cancelled build still holds the index"
    );
    svc.book().abandon_index("conn-x", u64::MAX);
    svc.forget_indexes();
    assert_eq!(count_of(&svc, "conn-x").await, 0);
}

/// A forward whose sender goes away after the message is stored (during the flush, say) still
/// gets the message into the index: a claim hands out only what the index holds, so a stored
/// message the index did not know would wait unseen (and uncounted by the queue caps) until a
/// restart.
#[tokio::test]
async fn a_forward_cancelled_after_its_write_is_still_indexed() {
    let (svc, store) = on_gated_store(GatedPuts).await;
    let alice = AgentKey::generate();
    assert_eq!(count_of(&svc, "conn-alice").await, 0);
    store.hold.store(true, Ordering::SeqCst);
    let sender = tokio::spawn({
        let (svc, key) = (svc.clone(), alice.verkey.clone());
        async move { svc.enqueue("conn-alice", &key, json!({"n": 1})).await }
    });
    store.entered.notified().await;
    sender.abort();
    let _ = sender.await;
    store.hold.store(false, Ordering::SeqCst);
    store.gate.add_permits(1);
    for _ in 0..200 {
        if count_of(&svc, "conn-alice").await == 1 {
            let got = svc.claim("conn-alice", None, 10, None).await.unwrap();
            assert_eq!(got.len(), 1);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the stored message never reached the index");
}

/// A node takes at most `mediator.max_sockets` WebSockets, all clients together (an outsider
/// with many addresses could otherwise open them without end, each able to hold a message's
/// fragments): beyond it an upgrade is refused 503 with Retry-After, and a closed socket's place
/// is taken again.
#[tokio::test]
async fn a_node_takes_at_most_max_sockets_websockets() {
    let ctx = RoleContext::for_tests(FakeClock::new(1_800_000_000_000));
    let cfg = crate::config::MediatorConfig {
        max_sockets: 2,
        ..Default::default()
    };
    let svc = super::init(&ctx, &cfg).await.unwrap();
    let first = svc.accept_socket().unwrap();
    let _second = svc.accept_socket().unwrap();
    let full = crate::error::ApiError::from(svc.accept_socket().unwrap_err());
    assert_eq!(full.code, crate::error::Code::Unavailable);
    assert!(full.retry_after.is_some());
    drop(first);
    assert!(svc.accept_socket().is_ok());
}

/// What a handshake leaves in the connection record is bounded (attacker review: a 190 KB
/// did:peer:2 with a 140 KB service endpoint was stored, read with every message on the
/// connection, and its endpoint logged whole each time a reply failed): a DID over 8 KiB or an
/// endpoint over 2,048 characters is refused, a label is kept to 256 characters.
#[tokio::test]
async fn a_handshake_stores_no_outsized_did_endpoint_or_label() {
    let (svc, id) = invitation_with_places(10).await;
    let alice = AgentKey::generate();
    let request = |did: String, label: String| {
        json!({"@type": "https://didcomm.org/didexchange/1.1/request", "@id": "r",
               "~thread": {"pthid": id}, "did": did, "label": label})
    };
    let peer_did = |endpoint: String| {
        crate::didcomm::peer::did_peer_2(&alice.verkey_bytes(), &[endpoint], &[]).unwrap()
    };
    let long_endpoint = format!("https://agent.example/{}", "a".repeat(3000));
    for did in [
        peer_did(long_endpoint),
        format!("did:key:z{}", "1".repeat(9000)),
    ] {
        let e = svc
            .didexchange_request(&request(did, "a".into()), &alice.verkey, "1.1")
            .await
            .unwrap_err();
        assert!(
            matches!(e, super::error::MediatorError::BadMessage(_)),
            "{e:?}"
        );
    }
    let did = peer_did("https://agent.example/didcomm".into());
    svc.didexchange_request(&request(did, "l".repeat(5000)), &alice.verkey, "1.1")
        .await
        .unwrap();
    let conn = svc.connection_by_key(&alice.verkey).await.unwrap();
    assert_eq!(conn.their_label.chars().count(), 256);
    assert_eq!(
        conn.their_endpoint.as_deref(),
        Some("https://agent.example/didcomm")
    );
}

/// Concurrent `keylist-update`s cannot pass `max_keys_per_connection` together: each reserves
/// its adds on the connection's count before writing a route (attacker review: each message
/// checked the cap on the count its connection record had when it arrived, so messages in
/// flight together all passed it, and routes whose count update gave up went uncounted). Here
/// every update is judged with one record read before any of them, as racing messages are.
#[tokio::test]
async fn concurrent_keylist_updates_stay_within_the_key_cap() {
    let (svc, _store, _clock, alice) = mediated().await;
    let max = crate::config::MediatorConfig::default().max_keys_per_connection;
    svc.update_connection("conn-alice", |c| c.keys = Some(0))
        .await
        .unwrap();
    let stale = svc.connection_by_key(&alice.verkey).await.unwrap();
    for _ in 0..20 {
        let updates: Vec<serde_json::Value> = (0..100)
            .map(|_| json!({"recipient_key": AgentKey::generate().verkey, "action": "add"}))
            .collect();
        svc.keylist_update(&stale, &json!({"updates": updates}))
            .await
            .unwrap();
    }
    let registered = svc.stats().await.unwrap().registered_keys;
    assert!(registered <= max, "{registered} keys for a cap of {max}");
    let conn = svc.connection_by_key(&alice.verkey).await.unwrap();
    assert_eq!(
        conn.keys,
        Some(registered),
        "the count is what is registered"
    );
}
