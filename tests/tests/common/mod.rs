//! A cluster of real `truc` processes for tests: `truc certs init` into a temp dir,
//! `truc node` per node on 127.0.0.1, readiness from each node's "ready" line.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failure is a test failure

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

pub mod browser;
pub mod ops;
pub mod raw;
pub mod rest;

use tonic::transport::Channel;
use truc_proto::v1::{self as pb, agency_client::AgencyClient};

/// The CLI with none of the operator certificates a developer's shell may
/// name: a test says which one it presents, or none (the admin socket).
fn cli_command() -> Command {
    let mut cmd = Command::new(bin());
    for v in ["TRUC_OPERATOR", "TRUC_OPERATOR_CERT", "TRUC_OPERATOR_KEY"] {
        cmd.env_remove(v);
    }
    cmd
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_truc-it"))
}

/// Generous: a 2-core CI machine running several test binaries at once.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub struct Proc {
    child: Child,
    pub agency: Option<SocketAddr>,
    pub link: Option<SocketAddr>,
    pub rest: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The plaintext health-only port, if configured.
    pub health: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    procs: BTreeMap<String, Proc>,
    /// Logs of processes that have exited, by node.
    old_logs: BTreeMap<String, Vec<String>>,
}

/// A port for a listener that keeps it across restarts (see `free_port` there:
/// outside the range the kernel hands to other processes' connections).
fn free_port() -> u16 {
    truc::chaos::cluster::free_port()
        .unwrap()
        .parse::<SocketAddr>()
        .unwrap()
        .port()
}

impl Cluster {
    /// The default topology (hub, vpcp G22, nghean H41, caobang H14).
    pub fn new() -> Self {
        Self::with_topology(None)
    }

    /// A topology in the format of certs-dev/README.md (None: the default).
    pub fn with_topology(topology: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("truc-it-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["certs", "init", "--out"]).arg(dir.path());
        if let Some(t) = topology {
            let path = dir.path().join("topology.toml");
            std::fs::write(&path, t).unwrap();
            cmd.arg("--topology").arg(path);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Self {
            dir,
            procs: BTreeMap::new(),
            old_logs: BTreeMap::new(),
        };
        // Listener ports (hub, relays) are picked by the OS once and kept across
        // restarts, so that children find them again; agency and admin APIs take
        // port 0 and announce theirs.
        let mut listen: BTreeMap<String, String> = BTreeMap::new();
        for node in c.nodes() {
            let t: toml::Table = std::fs::read_to_string(c.config(&node))
                .unwrap()
                .parse()
                .unwrap();
            if t.contains_key("listen") {
                listen.insert(node.clone(), format!("127.0.0.1:{}", free_port()));
            }
        }
        for node in c.nodes() {
            c.edit(&node, |t| {
                if let Some(l) = t.get_mut("listen").and_then(|v| v.as_table_mut()) {
                    l.insert("address".into(), listen[&node].clone().into());
                }
                if let Some(p) = t.get_mut("parent").and_then(|v| v.as_table_mut()) {
                    let parent = p["node_id"].as_str().unwrap().to_owned();
                    p.insert("address".into(), listen[&parent].clone().into());
                }
                for api in ["agency_api", "admin_api", "rest"] {
                    if let Some(a) = t.get_mut(api).and_then(|v| v.as_table_mut()) {
                        a.insert("listen".into(), "127.0.0.1:0".into());
                    }
                }
                let limits = t
                    .entry("limits")
                    .or_insert(toml::Value::Table(Default::default()));
                if let Some(l) = limits.as_table_mut() {
                    l.insert("max_list".into(), 100_000.into());
                }
                // Quick failure detection keeps kill/restart tests short.
                let link = t
                    .entry("link")
                    .or_insert(toml::Value::Table(Default::default()));
                if let Some(l) = link.as_table_mut() {
                    l.insert("heartbeat_interval_ms".into(), 500.into());
                    l.insert("heartbeat_timeout_ms".into(), 2000.into());
                    l.insert("reconnect_max_ms".into(), 1000.into());
                }
            });
        }
        c
    }

    pub fn nodes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml")
                && p.file_stem().is_some_and(|s| s != "topology")
            {
                out.push(p.file_stem().unwrap().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    pub fn config(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.toml"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Edits a node's config file in place.
    pub fn edit(&self, node: &str, f: impl FnOnce(&mut toml::Table)) {
        let path = self.config(node);
        let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        f(&mut t);
        std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    }

    /// Sets one setting of a node's config file (`[section] key = value`,
    /// the section made if missing), read when it next starts.
    pub fn set(&self, node: &str, section: &str, key: &str, value: impl Into<toml::Value>) {
        self.edit(node, |t| {
            t.entry(section)
                .or_insert_with(|| toml::Table::new().into())
                .as_table_mut()
                .unwrap()
                .insert(key.into(), value.into());
        });
    }

    /// Starts `truc node` and waits for its ready line.
    pub fn start(&mut self, node: &str) -> &Proc {
        self.start_until(node, None)
    }

    /// Starts `truc node` and waits until it logs `needle` (a standby hub, which
    /// is not ready until it takes over); no addresses are known for it then.
    pub fn start_standby(&mut self, node: &str, needle: &str) -> &Proc {
        self.start_until(node, Some(needle))
    }

    fn start_until(&mut self, node: &str, needle: Option<&str>) -> &Proc {
        assert!(!self.procs.contains_key(node), "{node} is already running");
        let mut child = Command::new(bin())
            .args(["node", "--config"])
            .arg(self.config(node))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains(" ready ") => break line,
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout)
                    if Instant::now() < deadline
                        && !needle.is_some_and(|n| {
                            logs.lock().unwrap().iter().any(|l| l.contains(n))
                        }) =>
                {
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    break String::new();
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{node} did not start:\n{}", logs.lock().unwrap().join("\n"));
                }
            }
        };
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<SocketAddr>().ok())
        };
        let p = Proc {
            agency: field("agency"),
            link: field("link"),
            rest: field("rest"),
            admin: field("admin"),
            health: field("health"),
            child,
            logs,
        };
        self.procs.insert(node.to_owned(), p);
        &self.procs[node]
    }

    pub fn pid(&self, node: &str) -> u32 {
        self.procs[node].child.id()
    }

    /// Peak resident memory of a running node so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self, node: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(node))).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// A counter of a running node (admin API).
    pub fn stat(&self, node: &str, name: &str) -> u64 {
        let out = self.cli_ok(&["stats", "--config", &self.cfg(node), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["counters"][name].as_u64().unwrap_or(0)
    }

    pub fn running(&self, node: &str) -> bool {
        self.procs.contains_key(node)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, node: &str) {
        let mut p = self.procs.remove(node).expect("node not running");
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        self.retire(node, p);
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self, node: &str) -> ExitStatus {
        let mut p = self.procs.remove(node).expect("node not running");
        let pid = p.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{node} did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.retire(node, p);
        status
    }

    fn retire(&mut self, node: &str, p: Proc) {
        let lines = p.logs.lock().unwrap().clone();
        self.old_logs
            .entry(node.to_owned())
            .or_default()
            .extend(lines);
    }

    /// Every log line of a node so far, across restarts.
    pub fn logs(&self, node: &str) -> String {
        let mut all = self.old_logs.get(node).cloned().unwrap_or_default();
        if let Some(p) = self.procs.get(node) {
            all.extend(p.logs.lock().unwrap().iter().cloned());
        }
        all.join("\n")
    }

    /// Waits until a node has logged a line containing every needle.
    pub fn wait_log(&self, node: &str, needles: &[&str]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self
                .logs(node)
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} never logged {needles:?}:\n{}",
                self.logs(node)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI and returns (success, stdout + stderr).
    pub fn cli_any(&self, args: &[&str]) -> (bool, String) {
        let out = self.cli(args);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn cfg(&self, node: &str) -> String {
        self.config(node).to_str().unwrap().to_owned()
    }

    /// The agency API of a running edge.
    pub fn agency_addr(&self, node: &str) -> SocketAddr {
        self.procs[node].agency.expect("an edge with an agency API")
    }

    pub fn hub_addr(&self) -> String {
        self.listen_addr("hub")
    }

    /// Where a hub or relay listens for children.
    pub fn listen_addr(&self, node: &str) -> String {
        let t: toml::Table = std::fs::read_to_string(self.config(node))
            .unwrap()
            .parse()
            .unwrap();
        t["listen"]["address"].as_str().unwrap().to_owned()
    }

    /// Runs the CLI.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_command().args(args).output().unwrap()
    }

    /// Runs the CLI with extra environment; returns (success, stdout + stderr).
    pub fn cli_env(&self, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
        let out = cli_command()
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `truc send` from an edge: (success, doc_id or the error text).
    pub fn send_as(
        &self,
        node: &str,
        from: &str,
        to: &str,
        subject: &str,
        extra: &[&str],
    ) -> (bool, String) {
        let cfg = self.cfg(node);
        let mut args = vec![
            "send",
            "--config",
            &cfg,
            "--from",
            from,
            "--to",
            to,
            "--subject",
            subject,
        ];
        args.extend_from_slice(extra);
        let (ok, out) = self.cli_any(&args);
        (ok, out.trim().to_owned())
    }

    /// `truc send` G22 → `to` from vpcp; returns the doc_id (fails the test otherwise).
    pub fn send_from_vpcp(&self, to: &str, subject: &str, extra: &[&str]) -> String {
        let (ok, out) = self.send_as("vpcp", G22, to, subject, extra);
        assert!(ok, "send: {out}");
        out
    }

    /// `truc inbox --json` of `organ` at `node`, with `extra` flags
    /// (`--all`, `--kind status`, …).
    pub fn inbox(&self, node: &str, organ: &str, extra: &[&str]) -> serde_json::Value {
        let cfg = self.cfg(node);
        let mut args = vec!["inbox", "--config", &cfg, "--organ", organ, "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.cli_ok(&args)).unwrap()
    }

    /// Waits until every recipient of `doc_id` (sent from `node`) is delivered or acked.
    pub fn wait_delivered(&self, node: &str, doc_id: &str) {
        rest::poll(&format!("{doc_id} delivered"), || {
            let v: serde_json::Value = serde_json::from_str(&self.cli_ok(&[
                "status",
                "--config",
                &self.cfg(node),
                doc_id,
                "--json",
            ]))
            .unwrap();
            v["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["state"] == "delivered" || r["state"] == "acked")
                .then_some(())
        })
    }

    /// Delivery deadlines per priority (normal … timed express) at `node`, swept often.
    pub fn set_deadlines(&self, node: &str, ms: [i64; 5]) {
        self.edit(node, |t| {
            let mut d = toml::Table::new();
            d.insert(
                "deadline_ms".into(),
                toml::Value::Array(ms.into_iter().map(toml::Value::Integer).collect()),
            );
            d.insert("sweep_interval_ms".into(), 100.into());
            t.insert("delivery".into(), d.into());
        });
    }

    /// The operator port of a running node.
    pub fn admin_addr(&self, node: &str) -> SocketAddr {
        self.procs[node].admin.expect("no admin port")
    }

    /// Runs the CLI and returns stdout, failing the test if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "truc {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The agency API of `node`, with the token the node made (as the CLI
    /// connects).
    pub async fn agency(&self, node: &str) -> truc::client::AgencyApi {
        truc::client::connect(&self.config(node)).await.unwrap()
    }

    /// The agency API of `node` with no token: what another user of the
    /// machine can reach.
    pub async fn agency_without_token(&self, node: &str) -> AgencyClient<Channel> {
        let addr = self.procs[node].agency.expect("not an edge");
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgencyClient::new(ch)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Polls `f` until it returns Some, or fails the test at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Subjects of the documents in `organ`'s inbox at `node`, once `barrier` is there.
pub async fn subjects_at(c: &Cluster, node: &str, organ: &str, barrier: &str) -> Vec<String> {
    eventually(&format!("{barrier} at {node}"), || async {
        let items = inbox(c, node, organ).await;
        items
            .iter()
            .any(|i| i.subject == barrier)
            .then(|| items.into_iter().map(|i| i.subject).collect())
    })
    .await
}

pub fn doc(from: &str, to: &[&str], subject: &str) -> pb::SendRequest {
    pb::SendRequest {
        from: from.into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        subject: subject.into(),
        ..Default::default()
    }
}

/// Every inbox entry (acked or not) of `organ` at `node`.
/// Waits until `organ` at `node` has received `expected` (in that order), and
/// checks that nothing else and nothing twice arrived.
pub async fn assert_exactly_once_in_order(
    c: &Cluster,
    node: &str,
    organ: &str,
    expected: &[String],
) {
    let items = eventually(
        &format!("{} documents at {organ}", expected.len()),
        || async {
            let items = inbox(c, node, organ).await;
            (items.len() >= expected.len()).then_some(items)
        },
    )
    .await;
    let got: Vec<String> = items.iter().map(|i| i.doc_id.clone()).collect();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), got.len(), "duplicates delivered");
    assert_eq!(got.len(), expected.len(), "unexpected documents delivered");
    assert_eq!(got, expected, "order per (from, to) not kept");
}

/// Sends `n` documents G22 → H41 from vpcp in order, counting each in the
/// returned progress once `send` returned; the task yields their ids.
pub async fn send_in_background(
    c: &Cluster,
    n: usize,
) -> (
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let mut a = c.agency("vpcp").await;
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = progress.clone();
    let sender = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let r = a
                .send(doc(G22, &[H41], &format!("Công văn số {i:04}")))
                .await
                .unwrap();
            ids.push(r.into_inner().doc_id);
            p.store(i + 1, std::sync::atomic::Ordering::SeqCst);
        }
        ids
    });
    (progress, sender)
}

/// Waits (blocking) until a sender task has counted `n` documents sent.
pub fn wait_progress(p: &std::sync::atomic::AtomicUsize, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while p.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "sender stalled at {}",
            p.load(std::sync::atomic::Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub async fn inbox(c: &Cluster, node: &str, organ: &str) -> Vec<pb::InboxItem> {
    let mut a = c.agency(node).await;
    a.list_inbox(pb::ListInboxRequest {
        organ: organ.into(),
        include_acked: true,
        limit: 0,
        kind: "document".into(),
        after: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .items
}

pub async fn recipient_states(c: &Cluster, node: &str, doc_id: &str) -> Vec<(String, i32, String)> {
    let mut a = c.agency(node).await;
    a.get_status(pb::GetStatusRequest {
        doc_id: doc_id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .recipients
    .into_iter()
    .map(|r| (r.organ, r.state, r.detail))
    .collect()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

pub const G22: &str = "000.00.00.G22";
pub const H41: &str = "000.00.00.H41";
pub const H14: &str = "000.00.00.H14";
