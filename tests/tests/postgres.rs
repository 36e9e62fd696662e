//! The PostgreSQL store against a real server: a throwaway cluster (initdb,
//! pg_ctl) on a unix socket in a temp dir — no TCP port — with fsync on.
//! `truc store migrate` makes the schema; the store passes the same conformance
//! suite as sled and memory, keeps flushed writes across a reconnect, and refuses
//! a database whose schema it does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use truc_store::{Batch, PgStore, Space, Store, conformance};

/// A throwaway server (truc's own helper, the one `truc bench pg-hub` uses).
struct Server(truc::pgserver::Server);

impl Server {
    fn start() -> Self {
        Self(truc::pgserver::Server::start().unwrap())
    }

    fn url(&self, db: &str) -> String {
        self.0.url(db)
    }
}

fn migrate(url: &str) -> String {
    let out = Command::new(common::bin())
        .args(["store", "migrate", "--url", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway server with truc's schema, and its URL (the server lives as
/// long as the first value).
fn migrated() -> (Server, String) {
    let pg = Server::start();
    let url = pg.url("postgres");
    migrate(&url);
    (pg, url)
}

/// The store's writer on `url`, with a cache of 1 MiB (the server has no
/// other writer: nothing to do while standing by).
fn writer(url: &str) -> PgStore {
    PgStore::open(url, 1 << 20, || {}).unwrap()
}

#[test]
fn the_postgresql_store_conforms_and_keeps_flushed_writes() {
    let pg = Server::start();
    let url = pg.url("postgres");
    let out = migrate(&url);
    assert!(out.contains("applied 0001_kv.sql"), "{out}");
    assert!(out.contains("schema at version 1"), "{out}");
    let again = migrate(&url);
    assert!(again.contains("nothing to apply"), "{again}");

    let store = writer(&url);
    conformance(&store);

    let mut b = Batch::new();
    b.put(Space::Docs, b"durable".to_vec(), b"bytes".to_vec());
    store.apply(b).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = writer(&url);
    assert_eq!(
        store.get(Space::Docs, b"durable").unwrap(),
        Some(b"bytes".to_vec())
    );
    assert!(store.size_on_disk() > 0);

    // Without its row, a flush would commit nothing and so wait for no WAL:
    // it says so instead of passing for durable.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin.execute("DELETE FROM truc_flush", &[]).unwrap();
    let e = store.flush().unwrap_err().to_string();
    assert!(e.contains("truc_flush"), "{e}");
}

fn requests(s: &PgStore) -> u64 {
    s.remote_stats().unwrap().requests
}

/// The writer answers a point read it has the answer to (a key it wrote or
/// read, or found absent) without a round trip; a shared reader, beside a
/// writer, always asks the server. A write the server refused leaves no answer
/// behind: what it would have written is not read back.
#[test]
fn the_writer_answers_known_reads_itself_and_forgets_after_a_failed_write() {
    let (_pg, url) = migrated();
    let store = writer(&url);
    let mut b = Batch::new();
    b.put(Space::Docs, b"k1".to_vec(), b"v1".to_vec());
    store.apply(b).unwrap();

    let before = requests(&store);
    for _ in 0..3 {
        assert_eq!(store.get(Space::Docs, b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(store.get(Space::Docs, b"nothing").unwrap(), None);
    }
    assert_eq!(requests(&store) - before, 1, "only the first absent read");
    assert!(store.remote_stats().unwrap().cached_bytes > 0);

    let shared = PgStore::open_shared(&url).unwrap();
    for _ in 0..3 {
        assert_eq!(
            shared.get(Space::Docs, b"k1").unwrap(),
            Some(b"v1".to_vec())
        );
    }
    assert_eq!(requests(&shared), 3);
    assert_eq!(shared.remote_stats().unwrap().cached_bytes, 0);

    // A key a batch deletes is known absent, and a batch's last write to a key
    // is the one kept: the writer answers as the server does, without asking.
    let mut b = Batch::new();
    b.put(Space::Docs, b"k3".to_vec(), b"v3".to_vec());
    b.delete(Space::Docs, b"k3".to_vec());
    b.put(Space::Docs, b"k4".to_vec(), b"v4".to_vec());
    store.apply(b).unwrap();
    let mut b = Batch::new();
    b.delete(Space::Docs, b"k4".to_vec());
    b.put(Space::Docs, b"k5".to_vec(), b"old".to_vec());
    b.put(Space::Docs, b"k5".to_vec(), b"new".to_vec());
    store.apply(b).unwrap();
    let before = requests(&store);
    for (k, v) in [
        (&b"k3"[..], None),
        (b"k4", None),
        (b"k5", Some(b"new".to_vec())),
    ] {
        assert_eq!(store.get(Space::Docs, k).unwrap(), v);
        assert_eq!(shared.get(Space::Docs, k).unwrap(), v, "the server agrees");
    }
    assert_eq!(requests(&store), before);

    // A key beyond PostgreSQL's index row limit fails the whole batch.
    let mut b = Batch::new();
    b.put(Space::Docs, b"k2".to_vec(), b"v2".to_vec());
    b.delete(Space::Docs, b"k1".to_vec());
    b.put(Space::Docs, huge_key(), b"x".to_vec());
    // The server's reason, not just "db error".
    let err = store.apply(b).unwrap_err().to_string();
    assert!(
        err.contains("index row") && err.contains("SQLSTATE"),
        "{err}"
    );
    let before = requests(&store);
    assert_eq!(store.get(Space::Docs, b"k2").unwrap(), None);
    assert_eq!(store.get(Space::Docs, b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(
        requests(&store) - before,
        2,
        "both asked of the server again"
    );

    // Its session ended (a standby may write now): fenced, it answers
    // nothing from memory.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND objid = $1 AND granted",
            &[&(truc_store::pg::WRITER_LOCK as u32)],
        )
        .unwrap();
    assert!(store.flush().is_err());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.fenced().is_none() {
        assert!(std::time::Instant::now() < deadline, "never fenced");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(store.get(Space::Docs, b"k1").is_err());
}

/// Incompressible bytes: as a key, beyond PostgreSQL's limit on an index row,
/// so that the server refuses the batch that writes it.
fn huge_key() -> Vec<u8> {
    let mut x = 0x9e37_79b9u32;
    (0..20_000)
        .map(|_| {
            // xorshift32: bytes PostgreSQL cannot compress under the limit.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Keys about to be read are fetched in one request; the reads that follow
/// are answered from memory, each as the server would (a value, or none).
#[test]
fn prefetched_keys_cost_one_request_and_read_as_the_server_holds_them() {
    let (_pg, url) = migrated();
    let first = writer(&url);
    let mut b = Batch::new();
    b.put(Space::Dedup, b"there".to_vec(), b"v".to_vec());
    b.put(Space::Docs, b"there".to_vec(), b"other space".to_vec());
    first.apply(b).unwrap();
    drop(first);
    // A writer that knows nothing yet.
    let store = writer(&url);
    let before = requests(&store);
    let keys = [
        (Space::Dedup, b"there".to_vec()),
        (Space::Dedup, b"absent".to_vec()),
        (Space::Docs, b"there".to_vec()),
        (Space::BlobRefs, b"absent".to_vec()),
    ];
    store.prefetch(&mut keys.iter().cloned()).unwrap();
    assert_eq!(requests(&store) - before, 1, "one request for four keys");
    assert_eq!(
        store.get(Space::Dedup, b"there").unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(store.get(Space::Dedup, b"absent").unwrap(), None);
    assert_eq!(
        store.get(Space::Docs, b"there").unwrap(),
        Some(b"other space".to_vec())
    );
    assert_eq!(store.get(Space::BlobRefs, b"absent").unwrap(), None);
    assert_eq!(requests(&store) - before, 1, "the reads asked nothing");
    // Known keys are not asked again.
    store.prefetch(&mut keys.iter().cloned()).unwrap();
    assert_eq!(requests(&store) - before, 1);
}

/// Polls `ok` (30 s at most) for what a test waits on.
fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "never {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Sessions of the server waiting for a lock.
fn lock_waits(url: &str) -> i64 {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
        .unwrap()
        .get(0)
}

/// Requests queue at the writer's one connection. While one holds it (here a
/// batch waiting on a lock another session took), operators see how many wait
/// (`truc_store_requests_waiting`); once it is free, every one is served.
#[test]
fn requests_waiting_for_the_connection_are_counted_and_all_served() {
    let (_pg, url) = migrated();
    let store = std::sync::Arc::new(writer(&url));
    let shared = PgStore::open_shared(&url).unwrap();
    let waiting = || store.remote_stats().unwrap().waiting;
    let put = |k: &'static [u8]| {
        let s = store.clone();
        std::thread::spawn(move || {
            let mut b = Batch::new();
            b.put(Space::Docs, k.to_vec(), b"v".to_vec());
            s.apply(b)
        })
    };
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = admin.transaction().unwrap();
    tx.batch_execute("LOCK TABLE truc_kv IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let held = put(b"first");
    wait_until("the first batch held on the lock", || lock_waits(&url) > 0);
    assert_eq!(waiting(), 0, "taken by the connection");
    let queued: Vec<_> = [&b"a"[..], b"b", b"c"].into_iter().map(put).collect();
    wait_until("three waiting", || waiting() == 3);
    tx.commit().unwrap();
    held.join().unwrap().unwrap();
    for t in queued {
        t.join().unwrap().unwrap();
    }
    assert_eq!(waiting(), 0);
    for k in [&b"first"[..], b"a", b"b", b"c"] {
        assert_eq!(shared.get(Space::Docs, k).unwrap(), Some(b"v".to_vec()));
    }
}

/// A request hung on the server (here on a lock another session holds) may be
/// a network cut the writer has not noticed yet, with a standby writing: once
/// it has run longer than the ping timeout (5 s), the writer answers nothing
/// from memory, a read waits its turn on the connection, and the store says
/// it is stalled (the node's health is NOT_SERVING) until the request ends.
#[test]
fn the_writer_stops_answering_from_memory_while_a_request_hangs() {
    let (_pg, url) = migrated();
    let store = std::sync::Arc::new(writer(&url));
    let mut b = Batch::new();
    b.put(Space::Docs, b"k1".to_vec(), b"v1".to_vec());
    store.apply(b).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut tx = admin.transaction().unwrap();
    tx.batch_execute("LOCK TABLE truc_kv IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let before = requests(&store);
    let s = store.clone();
    let hung = std::thread::spawn(move || {
        let mut b = Batch::new();
        b.put(Space::Docs, b"k2".to_vec(), b"v2".to_vec());
        s.apply(b)
    });
    let wait_for = |n: u64| wait_until(&format!("request {n}"), || requests(&store) >= n);
    wait_for(before + 1);
    // A young request: the answer it cannot change is still given from memory.
    assert_eq!(store.get(Space::Docs, b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(requests(&store), before + 1);
    assert_eq!(store.stalled(), None, "young");
    // Past the ping timeout (a wait for that time, not for readiness).
    std::thread::sleep(std::time::Duration::from_millis(5_500));
    // The node reports NOT_SERVING, with this reason, while it lasts.
    let why = store.stalled().expect("a request that hangs is reported");
    assert!(
        why.contains("a postgresql request has not answered for"),
        "{why}"
    );
    let s = store.clone();
    let reader = std::thread::spawn(move || s.get(Space::Docs, b"k1"));
    wait_for(before + 2);
    tx.commit().unwrap();
    hung.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), Some(b"v1".to_vec()));
    assert_eq!(store.get(Space::Docs, b"k2").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(store.stalled(), None, "answered");
}

/// Writers on several threads (some prefetching each other's keys) over a cache far smaller than what they write
/// (answers evicted all the time, reads and writes racing on the one
/// connection): every read returns the last value its thread wrote, and at the
/// end the writer and the server agree on every key.
#[test]
fn cached_reads_stay_true_under_concurrent_writes_and_eviction() {
    let (_pg, url) = migrated();
    // About 40 answers fit.
    let store = std::sync::Arc::new(PgStore::open(&url, 4096, || {}).unwrap());
    const KEYS: u32 = 30;
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut last: Vec<Option<Vec<u8>>> = vec![None; KEYS as usize];
                let mut x = 0x2545_f491u32 ^ t;
                for step in 0..600u32 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let k = (x % KEYS) as usize;
                    let key = format!("t{t}/k{k}").into_bytes();
                    match x % 4 {
                        0 | 1 => {
                            // Sometimes announced first, with the other
                            // threads' keys, which their writes race.
                            if x % 8 == 1 {
                                let keys: Vec<_> = (0..4u32)
                                    .map(|u| (Space::Docs, format!("t{u}/k{k}").into_bytes()))
                                    .collect();
                                store.prefetch(&mut keys.iter().cloned()).unwrap();
                            }
                            assert_eq!(
                                store.get(Space::Docs, &key).unwrap(),
                                last[k],
                                "thread {t} step {step} key {k}"
                            );
                        }
                        2 => {
                            let v = format!("{t}.{step}").into_bytes();
                            let mut b = Batch::new();
                            b.put(Space::Docs, key, v.clone());
                            store.apply(b).unwrap();
                            last[k] = Some(v);
                        }
                        _ => {
                            let mut b = Batch::new();
                            b.delete(Space::Docs, key);
                            store.apply(b).unwrap();
                            last[k] = None;
                        }
                    }
                }
                last
            })
        })
        .collect();
    let shared = PgStore::open_shared(&url).unwrap();
    for (t, h) in threads.into_iter().enumerate() {
        for (k, v) in h.join().unwrap().into_iter().enumerate() {
            let key = format!("t{t}/k{k}").into_bytes();
            assert_eq!(store.get(Space::Docs, &key).unwrap(), v, "t{t}/k{k}");
            assert_eq!(
                shared.get(Space::Docs, &key).unwrap(),
                v,
                "server t{t}/k{k}"
            );
        }
    }
    assert!(store.remote_stats().unwrap().cached_bytes <= 4096);
}

#[test]
fn a_database_without_the_schema_is_refused_with_the_command_that_fixes_it() {
    let pg = Server::start();
    let mut c = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    c.batch_execute("CREATE DATABASE fresh").unwrap();
    let err = PgStore::open(&pg.url("fresh"), 1 << 20, || {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("truc store migrate"), "{err}");
    assert!(err.contains("version 0"), "{err}");
    migrate(&pg.url("fresh"));
    PgStore::open(&pg.url("fresh"), 1 << 20, || {}).unwrap();
}

#[test]
fn a_hub_on_postgresql_delivers_and_keeps_everything_across_a_kill() {
    let (_pg, url) = migrated();
    let mut c = common::Cluster::new();
    let u = url.clone();
    c.edit("hub", move |t| {
        t.entry("storage")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap()
            .insert("postgres_url".into(), u.into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let first = c.send_from_vpcp(common::H41, "Công văn qua PostgreSQL", &[]);
    c.wait_delivered("vpcp", &first);
    // SIGKILL: what the hub acknowledged is in PostgreSQL's WAL, nowhere else.
    c.kill("hub");
    c.start("hub");
    let second = c.send_from_vpcp(common::H41, "Sau khi khởi động lại", &[]);
    c.wait_delivered("vpcp", &second);
    assert!(
        truc_store::embedded::Engine::found_in(&c.path("data/hub")).is_none(),
        "the hub kept an embedded store beside PostgreSQL"
    );
    let out = c.cli_ok(&[
        "audit",
        "verify",
        "--config",
        c.config("hub").to_str().unwrap(),
    ]);
    assert!(out.contains("audit log intact"), "{out}");
    // Operators see what the store costs in requests, and the memory sparing some.
    let m =
        common::ops::parse_metrics(&c.ops("hub", Some("operators/viewer")).get("/metrics").body);
    let requests = common::ops::sample(&m, "truc_node_store_requests_total", &[]).unwrap_or(0.0);
    assert!(requests > 10.0, "{requests} requests");
    let cached = common::ops::sample(&m, "truc_store_read_cache_bytes", &[]).unwrap_or(0.0);
    assert!(cached > 0.0, "{cached} bytes of cached reads");
    // And how many requests wait for its connection (none, or a few from the
    // hub's own background work).
    let waiting = common::ops::sample(&m, "truc_store_requests_waiting", &[]);
    assert!(
        waiting.is_some_and(|w| (0.0..100.0).contains(&w)),
        "{waiting:?}"
    );
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = db
        .query_one("SELECT count(*) FROM truc_kv", &[])
        .unwrap()
        .get(0);
    assert!(rows > 10, "{rows} rows in truc_kv");
}

/// One address in front of several hubs, as a TCP load balancer: each
/// connection goes to the first backend that accepts it (a standby hub does not
/// listen for links until it holds the store).
async fn front(backends: Vec<String>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in &backends {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    t.entry(name)
        .or_insert(toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap()
}

/// `truc health ADDR`: (serving, what it printed).
fn health(addr: &str) -> (bool, String) {
    let out = Command::new(common::bin())
        .args(["health", addr])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Two hub processes on one database and one blob directory, behind one address:
/// "hub" writes, "hub-b" stands by. The writer is SIGKILLed during 2,000
/// documents; the standby takes the store over and the edges reconnect through
/// the same address. Then the new writer loses its database session and stops,
/// and the first hub, restarted as a standby, takes over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_postgresql_fail_over_without_loss_or_duplicates() {
    let (_pg, url) = migrated();
    let mut c = common::Cluster::new();
    let shared = c.path("shared-blobs");
    let health_b = free_addr();
    let (u, s) = (url.clone(), shared.clone());
    c.edit("hub", move |t| {
        let st = table(t, "storage");
        st.insert("postgres_url".into(), u.into());
        st.insert("blob_dir".into(), s.to_str().unwrap().into());
    });
    // The second hub: the same identity, database and blob directory; its own
    // data directory, link port and health port.
    std::fs::copy(c.config("hub"), c.config("hub-b")).unwrap();
    let (link_b, hb) = (free_addr(), health_b.clone());
    c.edit("hub-b", move |t| {
        t.insert("data_dir".into(), "data/hub-b".into());
        table(t, "listen").insert("address".into(), link_b.into());
        table(t, "health").insert("listen".into(), hb.into());
    });
    let addr = front(vec![c.listen_addr("hub"), c.listen_addr("hub-b")]).await;
    for edge in ["vpcp", "nghean"] {
        let a = addr.clone();
        c.edit(edge, move |t| {
            table(t, "parent").insert("address".into(), a.into());
        });
    }
    c.start("hub");
    c.start_standby("hub-b", "standing by");
    let (serving, said) = health(&health_b);
    assert!(
        !serving && said.contains("NOT_SERVING"),
        "a standby must not draw traffic: {said}"
    );
    c.start("vpcp");
    c.start("nghean");

    let (progress, sender) = common::send_in_background(&c, 2000).await;
    tokio::task::block_in_place(|| {
        common::wait_progress(&progress, 700);
        c.kill("hub");
        c.wait_log("hub-b", &["node started"]);
    });
    let ids = sender.await.unwrap();
    common::assert_exactly_once_in_order(&c, "nghean", common::H41, &ids).await;
    assert!(
        c.logs("vpcp").contains("link to parent down"),
        "the sender never noticed the failover: the test did not test anything"
    );
    let (serving, said) = health(&health_b);
    assert!(serving, "the hub that took over is not serving: {said}");

    // The writer's session ends (an operator, a network cut): it stops writing
    // at once and exits, and the other hub takes over.
    c.start_standby("hub", "standing by");
    tokio::task::block_in_place(|| {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let ended: i64 = db
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE locktype = 'advisory' AND objid = $1 AND granted",
                &[&(truc_store::pg::WRITER_LOCK as u32)],
            )
            .unwrap()
            .get(0);
        assert_eq!(ended, 1, "one session holds the writer lock");
        c.wait_log("hub-b", &["stopping"]);
        c.wait_log("hub", &["node started"]);
    });
    let last = c.send_from_vpcp(common::H41, "Sau khi chuyển đổi lần hai", &[]);
    c.wait_delivered("vpcp", &last);
    let status = c.stop("hub-b");
    assert!(
        !status.success(),
        "a hub that lost its store must exit with an error: {status}"
    );
    assert!(
        c.logs("hub-b")
            .contains("the connection to postgresql was lost")
            || c.logs("hub-b").contains("did not answer"),
        "{}",
        c.logs("hub-b")
    );
}
