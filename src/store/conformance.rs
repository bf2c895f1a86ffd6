//! Backend-generic tests of the [`Store`] semantics: every backend runs the same functions
//! (`backend_tests!(factory)` in its test module), so sled and Redis cannot drift apart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use super::{BatchOp, Cas, Store, StoreError};
use crate::clock::FakeClock;

const KS: &str = "test";

/// Generates one `#[tokio::test]` per conformance check; `$factory().await` must return
/// `(Arc<dyn Store>, Arc<FakeClock>)`, a fresh empty store on a fake clock.
macro_rules! backend_tests {
    // a store that answers every compare-and-swap with its outcome (sled, Redis)
    ($factory:ident) => {
        crate::store::conformance::backend_tests!($factory, false);
    };
    // `replicated`: a store that may answer `Unavailable` for an outcome it could not learn (a
    // cluster); the racing checks then count those as unknown instead of failing
    ($factory:ident, $replicated:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_put_get_delete() {
            let (s, c) = $factory().await;
            crate::store::conformance::put_get_delete(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_expired_records_are_absent_then_swept() {
            let (s, c) = $factory().await;
            crate::store::conformance::expired_records_are_absent_then_swept(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_cas_is_single_use() {
            let (s, c) = $factory().await;
            crate::store::conformance::cas_is_single_use(s, c, $replicated).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_concurrent_updates_do_not_lose_writes() {
            let (s, c) = $factory().await;
            crate::store::conformance::concurrent_updates_do_not_lose_writes(s, c, $replicated)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_prefix_scan_and_atomic_batch() {
            let (s, c) = $factory().await;
            crate::store::conformance::prefix_scan_and_atomic_batch(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_scan_skips_expired_and_counts_only_live() {
            let (s, c) = $factory().await;
            crate::store::conformance::scan_skips_expired_and_counts_only_live(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_ttl_is_replaced_by_a_later_put() {
            let (s, c) = $factory().await;
            crate::store::conformance::ttl_is_replaced_by_a_later_put(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_awkward_keys() {
            let (s, c) = $factory().await;
            crate::store::conformance::awkward_keys(s, c).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_export_import_round_trip() {
            let (a, _) = $factory().await;
            let (b, _) = $factory().await;
            crate::store::conformance::export_import_round_trip(a, b).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_concurrent_probes_all_pass() {
            let (s, _) = $factory().await;
            crate::store::conformance::concurrent_probes_all_pass(s).await;
        }
    };
}
pub(crate) use backend_tests;

fn put(ks: &'static str, key: &str, value: &[u8]) -> BatchOp {
    BatchOp::Put {
        keyspace: ks,
        key: key.into(),
        value: value.to_vec(),
        ttl: None,
    }
}

pub async fn put_get_delete(s: Arc<dyn Store>, _: Arc<FakeClock>) {
    s.put(KS, "a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(s.get(KS, "a").await.unwrap().as_deref(), Some(&b"1"[..]));
    s.put(KS, "a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(s.get(KS, "a").await.unwrap().as_deref(), Some(&b"2"[..]));
    // the settled read (at the primary in a cluster) agrees with a current copy
    assert_eq!(
        s.get_settled(KS, "a").await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(s.get("other", "a").await.unwrap(), None);
    assert_eq!(s.get_settled("other", "a").await.unwrap(), None);
    assert!(s.delete(KS, "a").await.unwrap());
    assert!(!s.delete(KS, "a").await.unwrap());
    assert_eq!(s.get(KS, "a").await.unwrap(), None);
    // a tombstone reads as absent there too
    assert_eq!(s.get_settled(KS, "a").await.unwrap(), None);
    assert!(s.scan_prefix(KS, "", 10).await.unwrap().is_empty());
}

pub async fn expired_records_are_absent_then_swept(s: Arc<dyn Store>, clock: Arc<FakeClock>) {
    s.put(KS, "t", b"x".to_vec(), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    s.put(KS, "p", b"y".to_vec(), None).await.unwrap();
    clock.advance_ms(9_999);
    assert!(s.get(KS, "t").await.unwrap().is_some());
    clock.advance_ms(1);
    assert_eq!(s.get(KS, "t").await.unwrap(), None);
    assert_eq!(s.get_settled(KS, "t").await.unwrap(), None);
    assert!(s.scan_prefix(KS, "", 10).await.unwrap().len() == 1);
    assert_eq!(s.sweep_expired().await.unwrap(), 1);
    assert_eq!(s.sweep_expired().await.unwrap(), 0);
    assert!(s.get(KS, "p").await.unwrap().is_some());
    assert_eq!(s.get(KS, "t").await.unwrap(), None);
}

pub async fn cas_is_single_use(s: Arc<dyn Store>, clock: Arc<FakeClock>, replicated: bool) {
    assert!(s.insert_new_json(KS, "code", "fresh", None).await.unwrap());
    assert!(!s.insert_new_json(KS, "code", "again", None).await.unwrap());
    let fresh = serde_json::to_vec("fresh").unwrap();
    // many redeemers race: exactly one wins, the others see the winner's value. A replicated
    // store may answer `Unavailable` (outcome unknown: it may or may not have applied) — never
    // two wins, and never none unless some outcome is unknown. Other stores always know.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let fresh = fresh.clone();
            tokio::spawn(async move {
                s.compare_and_swap(
                    KS,
                    "code",
                    Some(fresh),
                    Some((format!("used-{i}").into_bytes(), None)),
                )
                .await
            })
        })
        .collect();
    let (mut wins, mut unknown) = (0, 0);
    for r in racers {
        match r.await.unwrap() {
            Ok(Cas::Swapped) => wins += 1,
            Ok(Cas::Conflict(Some(v))) => assert!(v.starts_with(b"used-")),
            Ok(Cas::Conflict(None)) => panic!("conflict must report the winner's value"),
            Err(StoreError::Unavailable(_)) if replicated => unknown += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(wins <= 1, "{wins} racers won");
    assert!(wins + unknown >= 1, "no racer won");
    assert!(s
        .get(KS, "code")
        .await
        .unwrap()
        .unwrap()
        .starts_with(b"used-"));
    // CAS to delete, then the slot is free again
    let now = s.get(KS, "code").await.unwrap().unwrap();
    assert_eq!(
        s.compare_and_swap(KS, "code", Some(now), None)
            .await
            .unwrap(),
        Cas::Swapped
    );
    assert_eq!(s.get(KS, "code").await.unwrap(), None);
    // an expired record counts as absent for CAS
    s.put(KS, "n", b"v".to_vec(), Some(Duration::from_millis(5)))
        .await
        .unwrap();
    clock.advance_ms(10);
    assert_eq!(
        s.compare_and_swap(KS, "n", Some(b"v".to_vec()), None)
            .await
            .unwrap(),
        Cas::Conflict(None)
    );
    assert_eq!(
        s.compare_and_swap(KS, "n", None, Some((b"w".to_vec(), None)))
            .await
            .unwrap(),
        Cas::Swapped
    );
    assert_eq!(s.get(KS, "n").await.unwrap(), Some(b"w".to_vec()));
}

pub async fn concurrent_updates_do_not_lose_writes(
    s: Arc<dyn Store>,
    _: Arc<FakeClock>,
    replicated: bool,
) {
    s.put_json(KS, "ctr", &0u64, None).await.unwrap();
    // 8 tasks × 25 acknowledged increments. An increment answered `Unavailable` (a replicated
    // store that could not learn or decide the outcome) may or may not have been applied: it is
    // retried and counted, so the counter ends between 200 and 200 + unknown outcomes. A lost
    // update ends below 200. A store that is not replicated always knows: exactly 200.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let (mut acked, mut unknown) = (0u64, 0u64);
            while acked < 25 {
                match s
                    .update_json::<u64, StoreError, _>(KS, "ctr", None, |n| Ok(n + 1))
                    .await
                {
                    Ok(Some(_)) => acked += 1,
                    Ok(None) => panic!("the counter vanished"),
                    Err(StoreError::Unavailable(_)) if replicated => unknown += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            unknown
        }));
    }
    let mut unknown = 0;
    for h in handles {
        unknown += h.await.unwrap();
    }
    let n = s.get_json::<u64>(KS, "ctr").await.unwrap().unwrap();
    assert!(
        (200..=200 + unknown).contains(&n),
        "counter {n} after 200 acknowledged increments and {unknown} of unknown outcome"
    );
}

pub async fn prefix_scan_and_atomic_batch(s: Arc<dyn Store>, _: Arc<FakeClock>) {
    s.batch(vec![
        put(KS, "u/1", b"a"),
        put(KS, "u/2", b"b"),
        put("other", "u/3", b"c"),
        put(KS, "v/1", b"d"),
        put(KS, "u", b"e"),
        put(KS, "t/9", b"f"),
    ])
    .await
    .unwrap();
    let got = s.scan_prefix(KS, "u/", 10).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["u/1", "u/2"]
    );
    assert_eq!(got[1].1, b"b".to_vec());
    assert_eq!(s.scan_prefix(KS, "u/", 1).await.unwrap().len(), 1);
    assert_eq!(s.scan_prefix(KS, "", 100).await.unwrap().len(), 5);
    assert_eq!(s.scan_prefix("other", "", 100).await.unwrap().len(), 1);
    s.batch(vec![
        BatchOp::Delete {
            keyspace: KS,
            key: "u/1".into(),
        },
        BatchOp::Delete {
            keyspace: "other",
            key: "u/3".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get(KS, "u/1").await.unwrap(), None);
    assert_eq!(s.get("other", "u/3").await.unwrap(), None);
    assert_eq!(
        s.scan_prefix(KS, "u", 10)
            .await
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["u", "u/2"]
    );
}

pub async fn scan_skips_expired_and_counts_only_live(s: Arc<dyn Store>, clock: Arc<FakeClock>) {
    for i in 0..10 {
        let ttl = (i % 2 == 0).then_some(Duration::from_secs(5));
        s.put(KS, &format!("q/{i:02}"), vec![i], ttl).await.unwrap();
    }
    assert_eq!(s.scan_prefix(KS, "q/", 100).await.unwrap().len(), 10);
    clock.advance_ms(5_000);
    // the limit counts live records only: 3 of the 5 odd ones, skipping the expired even ones
    let got = s.scan_prefix(KS, "q/", 3).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["q/01", "q/03", "q/05"]
    );
    assert_eq!(s.scan_prefix(KS, "q/", 100).await.unwrap().len(), 5);
    // counting agrees with scanning: live records only, up to the limit
    assert_eq!(s.count_prefix(KS, "q/", 100).await.unwrap(), 5);
    assert_eq!(s.count_prefix(KS, "q/", 3).await.unwrap(), 3);
    assert_eq!(s.count_prefix(KS, "none/", 3).await.unwrap(), 0);
    let (n, bytes) = s.measure_prefix(KS, "q/", 100).await.unwrap();
    let rows = s.scan_prefix(KS, "q/", 100).await.unwrap();
    assert_eq!((n, bytes), (5, rows.iter().map(|(_, v)| v.len()).sum()));
    assert_eq!(s.measure_prefix(KS, "q/", 3).await.unwrap().0, 3);
    assert_eq!(s.measure_prefix(KS, "none/", 3).await.unwrap(), (0, 0));

    // past one page of a backend's scan (Redis pages by 256 members): every live record once,
    // in key order, with deleted and expired ones in between, and counted alike
    for i in 0..700u32 {
        let ttl = (i % 5 == 0).then_some(Duration::from_secs(5));
        s.put(KS, &format!("p/{i:04}"), vec![1], ttl).await.unwrap();
    }
    for i in (0..700u32).step_by(3) {
        s.delete(KS, &format!("p/{i:04}")).await.unwrap();
    }
    clock.advance_ms(5_000);
    let want: Vec<String> = (0..700u32)
        .filter(|i| i % 3 != 0 && i % 5 != 0)
        .map(|i| format!("p/{i:04}"))
        .collect();
    let got: Vec<String> = s
        .scan_prefix(KS, "p/", usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, want);
    let first: Vec<String> = s
        .scan_prefix(KS, "p/", 300)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(first, want[..300]);
    assert_eq!(
        s.count_prefix(KS, "p/", usize::MAX).await.unwrap(),
        want.len()
    );
    assert_eq!(s.count_prefix(KS, "p/", 300).await.unwrap(), 300);
}

pub async fn ttl_is_replaced_by_a_later_put(s: Arc<dyn Store>, clock: Arc<FakeClock>) {
    s.put(KS, "k", b"1".to_vec(), Some(Duration::from_secs(2)))
        .await
        .unwrap();
    s.put(KS, "k", b"2".to_vec(), None).await.unwrap();
    clock.advance_ms(3_000);
    assert_eq!(s.get(KS, "k").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.sweep_expired().await.unwrap(), 0);
    assert_eq!(s.scan_prefix(KS, "k", 10).await.unwrap().len(), 1);
}

pub async fn awkward_keys(s: Arc<dyn Store>, _: Arc<FakeClock>) {
    let keys = [
        "a:b:c",
        "ü/é/😀",
        "{tag}",
        "sp ace",
        "[x",
        "-",
        "+",
        "a\u{7f}",
    ];
    for (i, k) in keys.iter().enumerate() {
        s.put(KS, k, vec![i as u8, b':', 0xff], None).await.unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            s.get(KS, k).await.unwrap(),
            Some(vec![i as u8, b':', 0xff]),
            "{k}"
        );
    }
    assert_eq!(s.scan_prefix(KS, "ü/", 10).await.unwrap().len(), 1);
    assert_eq!(s.scan_prefix(KS, "[", 10).await.unwrap().len(), 1);
    assert_eq!(s.scan_prefix(KS, "a", 10).await.unwrap().len(), 2);
    assert_eq!(s.scan_prefix(KS, "", 100).await.unwrap().len(), keys.len());
}

pub async fn export_import_round_trip(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.put(KS, "k1", b"v1".to_vec(), None).await.unwrap();
    a.put("ks2", "k2", vec![0, 255, 7], Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let dump = a.export_all().await.unwrap();
    assert_eq!(dump.len(), 2);
    assert_eq!(b.import(dump.clone()).await.unwrap(), 2);
    assert_eq!(b.get("ks2", "k2").await.unwrap(), Some(vec![0, 255, 7]));
    assert_eq!(b.scan_prefix(KS, "k", 10).await.unwrap().len(), 1);
    let mut again = b.export_all().await.unwrap();
    again.sort_by(|x, y| x.key.cmp(&y.key));
    let mut dump = dump;
    dump.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(again, dump);
}

pub async fn concurrent_probes_all_pass(s: Arc<dyn Store>) {
    let probes: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.probe().await })
        })
        .collect();
    for p in probes {
        p.await.unwrap().unwrap();
    }
    assert!(
        s.export_all().await.unwrap().is_empty(),
        "probes leave nothing behind"
    );
}

/// A redis-server for tests: `IDSTACK_TEST_REDIS_URL` when set, else one started once per test
/// process on a free 127.0.0.1 port in a temp dir (no persistence), stopped by a watchdog when
/// the test process exits. Fails loudly when `redis-server` is not installed (scripts/test.sh
/// installs it).
#[cfg(feature = "redis")]
#[allow(clippy::disallowed_methods)]
pub fn test_redis_url() -> String {
    use std::sync::OnceLock;
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("IDSTACK_TEST_REDIS_URL") {
            if !u.is_empty() {
                return u;
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("idstack-test-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --dir '{}' --save '' --appendonly no --loglevel warning & r=$!; \
             while kill -0 {pid} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 1; done; kill $r 2>/dev/null; rm -rf '{}'",
            dir.display(),
            dir.display(),
            pid = std::process::id()
        );
        // The watchdog shell outlives this call on purpose (it stops redis when we exit).
        #[allow(clippy::zombie_processes)]
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 7];
                if c.write_all(b"PING\r\n").is_ok()
                    && c.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {port}: is it installed? (scripts/test.sh installs it)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        format!("redis://127.0.0.1:{port}")
    })
    .clone()
}

/// A 3-master Redis Cluster for tests on free 127.0.0.1 ports, started once per test process
/// (`IDSTACK_TEST_REDIS_CLUSTER_URLS`, comma-separated, reuses an existing one). Stopped by a
/// watchdog when the test process exits.
#[cfg(feature = "redis")]
#[allow(clippy::disallowed_methods, clippy::zombie_processes)]
pub fn test_redis_cluster_urls() -> Vec<String> {
    use std::sync::OnceLock;
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(|| {
        if let Ok(u) = std::env::var("IDSTACK_TEST_REDIS_CLUSTER_URLS") {
            if !u.is_empty() {
                return u.split(',').map(str::to_string).collect();
            }
        }
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("idstack-test-redis-cluster-{}", ports[0]));
        let mut script = String::new();
        for (i, p) in ports.iter().enumerate() {
            let d = dir.join(p.to_string());
            std::fs::create_dir_all(&d).unwrap();
            script.push_str(&format!(
                "redis-server --port {p} --bind 127.0.0.1 --dir '{}' --cluster-enabled yes --cluster-config-file nodes.conf --save '' --appendonly no --loglevel warning & r{i}=$!; ",
                d.display()
            ));
        }
        script.push_str(&format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $r0 $r1 $r2 2>/dev/null; rm -rf '{}'",
            dir.display(),
            pid = std::process::id()
        ));
        // No inherited pipes: the servers must not keep the test runner's output open.
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for p in &ports {
            while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
                assert!(std::time::Instant::now() < deadline, "redis-server (cluster) did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let mut args = vec!["--cluster".to_string(), "create".to_string()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = std::process::Command::new("redis-cli")
            .args(&args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        loop {
            let ok = ports.iter().all(|p| {
                std::process::Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "redis cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    })
    .clone()
}
