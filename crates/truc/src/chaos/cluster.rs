//! A federation of real `truc node` processes on loopback for fault injection:
//! a fresh dev PKI, every listener on a free port chosen once (so restarts find
//! each other again), each child dialing its parent through a fault proxy,
//! SIGKILL and restart, logs kept per node.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::proxy::{Faults, Proxy};
use crate::certs::{self, Topology};

/// How long a node may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    exe: PathBuf,
    pub topo: Topology,
    procs: BTreeMap<String, Child>,
    /// The proxy on each child's link to its parent, by child.
    pub proxies: BTreeMap<String, Proxy>,
    /// Restarts of each node (for the log file names).
    starts: BTreeMap<String, u32>,
}

/// How a cluster is made.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub links: Links,
}

/// How each child reaches its parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Links {
    /// Through a fault proxy, with quick failure detection: the chaos setting.
    #[default]
    Faulty,
    /// Directly, with the default heartbeats: the benchmark's setting.
    Direct,
    /// Through a proxy that emulates this link each way (a rate cap and a
    /// delay), with the default heartbeats: the benchmark's `--link-mbit`.
    Emulated(Faults),
}

/// The low end of the kernel's ephemeral port range, when it leaves room below
/// for picks (Linux: 32768 by default).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 20_000)
}

/// A loopback address for a listener that must keep its port across restarts,
/// so it is picked before the node binds it. Picked below the kernel's
/// ephemeral range (`ip_local_port_range`), which port 0 and outgoing
/// connections draw from: in the window before the node binds it, no other
/// process's connection can be handed the same port. Random, checked free;
/// port 0's pick if the range cannot be read or nothing below it is free.
pub fn free_port() -> Result<String> {
    if let Some(low) = ephemeral_low() {
        for _ in 0..64 {
            let port = fastrand::u16(10_000..low);
            if let Ok(l) = StdListener::bind(("127.0.0.1", port)) {
                return Ok(l.local_addr()?.to_string());
            }
        }
    }
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

impl Cluster {
    /// Makes the PKI and configs in `dir` (a temporary directory if None) for the
    /// default topology, with quick failure detection and a fault proxy on every
    /// link.
    pub async fn create(dir: Option<PathBuf>) -> Result<Self> {
        Self::create_with(dir, Topology::default_topology()?, Options::default()).await
    }

    /// Like [`Cluster::create`] for any topology, with or without the proxies.
    pub async fn create_with(dir: Option<PathBuf>, topo: Topology, opts: Options) -> Result<Self> {
        let (tmp, dir) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (None, d)
            }
            None => {
                let t = tempfile::Builder::new().prefix("truc-chaos-").tempdir()?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let mut topo = topo;
        // Link listeners keep the port picked here across restarts (children's
        // proxies point at it); the APIs take any free port and announce it in
        // the node's endpoints file, so there is no window for another process
        // to take a port picked in advance.
        for n in &mut topo.nodes {
            if n.listen.is_some() {
                n.listen = Some(free_port()?);
            }
            for addr in [&mut n.agency_api, &mut n.admin_api] {
                if addr.is_some() {
                    *addr = Some("127.0.0.1:0".into());
                }
            }
            n.rest_api = None;
        }
        certs::init(&dir, &topo)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let mut proxies = BTreeMap::new();
        for n in topo.nodes.iter().filter(|_| opts.links != Links::Direct) {
            if let Some(parent) = &n.parent {
                let upstream: SocketAddr = topo
                    .node(parent)
                    .and_then(|p| p.listen.clone())
                    .ok_or_else(|| anyhow!("{parent} has no listen address"))?
                    .parse()?;
                let proxy = Proxy::start(upstream).await?;
                if let Links::Emulated(link) = opts.links {
                    proxy.set(link);
                }
                proxies.insert(n.id.clone(), proxy);
            }
        }
        let c = Self {
            dir,
            _tmp: tmp,
            exe: std::env::current_exe().context("where is this program")?,
            topo,
            procs: BTreeMap::new(),
            proxies,
            starts: BTreeMap::new(),
        };
        for n in c.nodes() {
            let via = c.proxies.get(&n).map(|p| p.addr.to_string());
            c.edit(&n, |t| {
                if let (Some(via), Some(p)) =
                    (via, t.get_mut("parent").and_then(|v| v.as_table_mut()))
                {
                    p.insert("address".into(), via.into());
                }
                let link = table(t, "link");
                if opts.links == Links::Faulty {
                    link.insert("heartbeat_interval_ms".into(), 300.into());
                    link.insert("heartbeat_timeout_ms".into(), 1500.into());
                    link.insert("reconnect_max_ms".into(), 500.into());
                }
                table(t, "limits").insert("max_list".into(), 100_000.into());
                table(t, "tls").insert("crl_reload_ms".into(), 200.into());
            })?;
        }
        Ok(c)
    }

    pub fn nodes(&self) -> Vec<String> {
        self.topo.nodes.iter().map(|n| n.id.clone()).collect()
    }

    pub fn config(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.toml"))
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join("data").join(node)
    }

    /// Edits a node's config file (read when it next starts).
    pub fn edit(&self, node: &str, f: impl FnOnce(&mut toml::Table)) -> Result<()> {
        let path = self.config(node);
        let mut t: toml::Table = std::fs::read_to_string(&path)?
            .parse()
            .with_context(|| format!("{}", path.display()))?;
        f(&mut t);
        std::fs::write(&path, toml::to_string(&t)?)?;
        Ok(())
    }

    pub fn running(&self, node: &str) -> bool {
        self.procs.contains_key(node)
    }

    /// The process id of a running node.
    pub fn pid(&self, node: &str) -> Option<u32> {
        self.procs.get(node).and_then(Child::id)
    }

    /// Stops a node the way an operator does (SIGTERM: drain, then exit) and waits
    /// for it to exit.
    pub async fn stop(&mut self, node: &str) -> Result<()> {
        let mut c = self
            .procs
            .remove(node)
            .ok_or_else(|| anyhow!("{node} is not running"))?;
        if let Some(pid) = c.id() {
            let pid = rustix::process::Pid::from_raw(pid as i32)
                .ok_or_else(|| anyhow!("bad pid {pid}"))?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        }
        match tokio::time::timeout(Duration::from_secs(30), c.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => c.kill().await?,
        }
        Ok(())
    }

    /// Starts `truc node` and waits for its ready line.
    pub async fn start(&mut self, node: &str) -> Result<()> {
        if self.procs.contains_key(node) {
            bail!("{node} is already running");
        }
        let n = self.starts.entry(node.to_owned()).or_default();
        *n += 1;
        let log = self.dir.join("logs").join(format!("{node}.{n}.log"));
        let mut child = Command::new(&self.exe)
            .args(["--log-format", "json", "node", "--config"])
            .arg(self.config(node))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {node}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains(" ready ") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let _ = child.kill().await;
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "{node} did not start (log {}):\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.procs.insert(node.to_owned(), child);
        Ok(())
    }

    pub async fn start_all(&mut self) -> Result<()> {
        for n in self.nodes() {
            self.start(&n).await?;
        }
        Ok(())
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub async fn kill(&mut self, node: &str) -> Result<()> {
        let mut c = self
            .procs
            .remove(node)
            .ok_or_else(|| anyhow!("{node} is not running"))?;
        c.kill().await?;
        Ok(())
    }

    /// Nodes that exited on their own since the last call (a crash, or a test
    /// hook's abort), with how they ended.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (n, c) in &mut self.procs {
            if let Ok(Some(status)) = c.try_wait() {
                out.push((n.clone(), status.to_string()));
            }
        }
        for (n, _) in &out {
            self.procs.remove(n);
        }
        out
    }

    pub async fn stop_all(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill().await;
        }
    }

    /// Log lines of every node, every run, that no fault excuses: panics and a
    /// broken audit chain.
    pub fn integrity_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in files_under(&self.dir.join("logs"), ".log") {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for l in text.lines() {
                if l.contains("panicked") || l.contains("audit chain does not verify") {
                    let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
                    out.push(format!(
                        "{}: {}",
                        name.unwrap_or_default(),
                        l.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        out
    }

    /// Free bytes of the file system holding the data directories.
    pub fn free_bytes(&self) -> Result<u64> {
        let st = rustix::fs::statvfs(&self.dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// The sub-table `name` of a config, made if missing.
pub(crate) fn table<'a>(t: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    let v = t
        .entry(name)
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if !v.is_table() {
        *v = toml::Value::Table(Default::default());
    }
    match v {
        toml::Value::Table(t) => t,
        _ => unreachable!("made a table above"),
    }
}

/// Files under `dir` (recursively) whose path below `dir` contains `part`.
pub fn files_under(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .strip_prefix(dir)
                .is_ok_and(|rel| rel.to_string_lossy().contains(part))
            {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port picked for later is one no other process's connection can be
    /// given meanwhile: below the ephemeral range, and free when picked.
    #[test]
    fn a_port_picked_for_later_is_below_the_ephemeral_range_and_free() {
        let Some(low) = ephemeral_low() else {
            return;
        };
        for _ in 0..20 {
            let addr: SocketAddr = free_port().unwrap().parse().unwrap();
            assert!(addr.port() < low, "{addr} is in the ephemeral range");
            StdListener::bind(addr).unwrap();
        }
    }
}
