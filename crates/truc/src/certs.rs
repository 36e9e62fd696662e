//! `truc certs init`: a development PKI and one ready config per node.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use truc_core::{NodeId, OrganId};
use truc_node::config::{
    AdminApiSection, AgencyApiSection, AgencySection, ChildSection, DeliverySection,
    DirectoryEntry, FileConfig, LinkTuning, ListenSection, LoginEntry, ParentSection, QuotaSection,
    RestApp, RestSection, SigningSection, StorageSection, TestHooks, TlsSection,
};
use truc_pki::{dev::DevCa, identity::Role};

/// The default topology (`certs-dev/topology.toml`).
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../certs-dev/topology.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub nodes: Vec<TopoNode>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopoNode {
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub listen: Option<String>,
    /// The address children dial (default: `listen`), when the node listens on
    /// a wildcard address behind a name (`hub:7700` in compose or Kubernetes).
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub agency_api: Option<String>,
    /// A plaintext gRPC health-only listener for orchestrators' probes.
    #[serde(default)]
    pub health: Option<String>,
    /// Loopback admin API for operators.
    #[serde(default)]
    pub admin_api: Option<String>,
    /// Loopback REST/JSON agency API; a bearer token is made for it.
    #[serde(default)]
    pub rest_api: Option<String>,
    /// Relays: the subtree (an OrganId) in which they register agencies on their own.
    #[serde(default)]
    pub grant: Option<String>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub agencies: Vec<TopoAgency>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopoAgency {
    pub organ: String,
    #[serde(default)]
    pub name: String,
    /// The agency above it in the administrative tree, if any.
    #[serde(default)]
    pub parent: String,
}

impl Topology {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let t: Topology = toml::from_str(text).with_context(|| format!("topology {origin}"))?;
        t.validate().with_context(|| format!("topology {origin}"))?;
        Ok(t)
    }

    pub fn default_topology() -> Result<Self> {
        Self::parse(DEFAULT_TOPOLOGY, "(built-in)")
    }

    fn validate(&self) -> Result<()> {
        let mut ids = BTreeSet::new();
        let mut organs = BTreeSet::new();
        for n in &self.nodes {
            n.id.parse::<NodeId>()
                .map_err(|e| anyhow::anyhow!("node {:?}: {e}", n.id))?;
            if !ids.insert(n.id.as_str()) {
                bail!("node {} is listed twice", n.id);
            }
            for a in &n.agencies {
                a.organ
                    .parse::<OrganId>()
                    .map_err(|e| anyhow::anyhow!("node {}: {e}", n.id))?;
                if !organs.insert(a.organ.as_str()) {
                    bail!("agency {} is listed twice", a.organ);
                }
            }
            if !n.agencies.is_empty() && n.agency_api.is_none() {
                bail!("node {} serves agencies but has no agency_api", n.id);
            }
        }
        let roots: Vec<_> = self.nodes.iter().filter(|n| n.parent.is_none()).collect();
        if roots.len() != 1 {
            bail!(
                "exactly one node (the hub) must have no parent; found {}",
                roots.len()
            );
        }
        for n in &self.nodes {
            if let Some(p) = &n.parent {
                let parent = self
                    .node(p)
                    .ok_or_else(|| anyhow::anyhow!("node {}: parent {p} is not listed", n.id))?;
                if parent.listen.is_none() {
                    bail!("node {}: parent {p} has no listen address", n.id);
                }
                // Walk up to the root to refuse cycles.
                let mut seen = BTreeSet::new();
                let mut cur = Some(n);
                while let Some(c) = cur {
                    if !seen.insert(c.id.as_str()) {
                        bail!("node {} is part of a parent cycle", n.id);
                    }
                    cur = c.parent.as_deref().and_then(|p| self.node(p));
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, id: &str) -> Option<&TopoNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Agencies (with their details) served by `id` and everything below it.
    pub fn subtree_agencies(&self, id: &str) -> Vec<(TopoAgency, String)> {
        let mut out: Vec<(TopoAgency, String)> = self
            .node(id)
            .map(|n| {
                n.agencies
                    .iter()
                    .map(|a| (a.clone(), n.id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for child in self
            .nodes
            .iter()
            .filter(|c| c.parent.as_deref() == Some(id))
        {
            out.extend(self.subtree_agencies(&child.id));
        }
        out
    }

    /// Agencies served by `id` and everything below it.
    pub fn subtree_organs(&self, id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .node(id)
            .map(|n| n.agencies.iter().map(|a| a.organ.clone()).collect())
            .unwrap_or_default();
        for child in self
            .nodes
            .iter()
            .filter(|c| c.parent.as_deref() == Some(id))
        {
            out.extend(self.subtree_organs(&child.id));
        }
        out
    }
}

/// What `init` created (or kept).
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    pub configs: BTreeMap<String, PathBuf>,
}

/// Writes a key or a token readable by its owner only, from the first byte
/// (a file written first and restricted after is readable by anyone between).
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(0o600);
        // An existing file keeps its mode through open: restrict it first.
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
    }
    o.open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("write {}", path.display()))
}

fn load_or_create_ca(dir: &Path, name: &str, cn: &str, report: &mut InitReport) -> Result<DevCa> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    if crt.exists() && key.exists() {
        let ca = DevCa::load(&fs::read_to_string(&crt)?, &fs::read_to_string(&key)?)
            .with_context(|| format!("reload {}", crt.display()))?;
        report.kept.push(crt);
        return Ok(ca);
    }
    let ca = DevCa::generate(cn)?;
    fs::write(&crt, ca.cert_pem()).with_context(|| format!("write {}", crt.display()))?;
    write_secret(&key, ca.key_pem())?;
    report.created.push(crt);
    Ok(ca)
}

fn issue_if_missing(
    crt: PathBuf,
    key: PathBuf,
    report: &mut InitReport,
    issue: impl FnOnce() -> Result<truc_pki::dev::Issued, truc_pki::PkiError>,
) -> Result<()> {
    if crt.exists() && key.exists() {
        report.kept.push(crt);
        return Ok(());
    }
    let issued = issue()?;
    fs::write(&crt, &issued.cert_pem).with_context(|| format!("write {}", crt.display()))?;
    write_secret(&key, &issued.key_pem)?;
    report.created.push(crt);
    Ok(())
}

/// A token kept in `path` (made once), and its hex SHA-256 for a config.
fn token_at(path: &Path, report: &mut InitReport) -> Result<String> {
    let token = match fs::read_to_string(path) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => {
            let t = random_token()?;
            write_secret(path, &t)?;
            report.created.push(path.to_owned());
            t
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// The development operators: `admin` may act, `viewer` may only look.
pub const DEV_OPERATORS: [(&str, Role); 2] = [("admin", Role::Operator), ("viewer", Role::Viewer)];

fn random_token() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The transport CA's CRL, beside it.
pub const CRL_FILE: &str = "transport-ca.crl";
/// Revoked serial numbers (hex, one per line, `# node` comments kept).
const REVOKED_FILE: &str = "revoked.txt";
/// The signing CA's CRL, beside it: revoked agency certificates.
pub const SIGNING_CRL_FILE: &str = "signing-ca.crl";
/// Revoked agency certificates' serial numbers, as [`REVOKED_FILE`].
const SIGNING_REVOKED_FILE: &str = "revoked-agencies.txt";

/// One CA's revocation: its list file and the serials it is written from.
struct Revocations {
    crl: &'static str,
    serials: &'static str,
}

const TRANSPORT: Revocations = Revocations {
    crl: CRL_FILE,
    serials: REVOKED_FILE,
};
const SIGNING: Revocations = Revocations {
    crl: SIGNING_CRL_FILE,
    serials: SIGNING_REVOKED_FILE,
};

fn write_crl(out: &Path, ca: &DevCa, which: &Revocations) -> Result<()> {
    let serials: Vec<Vec<u8>> = fs::read_to_string(out.join(which.serials))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('#').next())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|h| hex::decode(h).with_context(|| format!("{}: {h}", which.serials)))
        .collect::<Result<_>>()?;
    let pem = ca.crl(&serials)?;
    // Nodes read the list while running: replace it whole, never half-written.
    let path = out.join(which.crl);
    let tmp = out.join(format!("{}.new", which.crl));
    fs::write(&tmp, pem).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
}

fn load_transport(out: &Path) -> Result<DevCa> {
    load_ca(out, "transport-ca")
}

fn load_ca(out: &Path, name: &str) -> Result<DevCa> {
    let cert = fs::read_to_string(out.join(format!("{name}.crt")))
        .with_context(|| format!("{}: run truc certs init first", out.display()))?;
    let key = fs::read_to_string(out.join(format!("{name}.key")))
        .with_context(|| format!("{}/{name}.key", out.display()))?;
    Ok(DevCa::load(&cert, &key)?)
}

/// Issues a new certificate and key for `node` (a new serial); the node uses
/// them when it restarts. The old files are kept as `.old`.
pub fn rotate(out: &Path, node: &str) -> Result<PathBuf> {
    let id: NodeId = node.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let transport = load_transport(out)?;
    let crt = out.join("nodes").join(format!("{id}.crt"));
    let key = out.join("nodes").join(format!("{id}.key"));
    if !crt.exists() {
        bail!(
            "{} does not exist: {node} is not a node of this PKI",
            crt.display()
        );
    }
    // The names children and operators dial (hub.example.gov.vn) go on to
    // the new certificate (`node_cert` adds each once).
    let current = truc_pki::load_certs(&crt)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate", crt.display()))?;
    let issued = transport.node_cert(&id, &truc_pki::identity::host_names(&current)?)?;
    let _ = fs::copy(&crt, crt.with_extension("crt.old"));
    let _ = fs::copy(&key, key.with_extension("key.old"));
    write_secret(&key.with_extension("key.new"), &issued.key_pem)?;
    fs::write(crt.with_extension("crt.new"), &issued.cert_pem)?;
    fs::rename(key.with_extension("key.new"), &key)?;
    fs::rename(crt.with_extension("crt.new"), &crt)?;
    Ok(crt)
}

/// Adds the current certificate of `name`, a node or an agency, to its CA's
/// revocation list and rewrites it; returns the serial and the list's path.
/// Running nodes read the lists again within `tls.crl_reload_ms`. A node's
/// certificate is refused at the next handshake, and a link that uses it is
/// closed (a child starts its link to its parent again under the new list).
/// An agency's signatures are refused from then on at every hop.
pub fn revoke(out: &Path, name: &str) -> Result<(String, PathBuf)> {
    let node_crt = out.join("nodes").join(format!("{name}.crt"));
    let agency_crt = out.join("agencies").join(format!("{name}.crt"));
    let (ca, which, crt) = if node_crt.exists() {
        (load_transport(out)?, TRANSPORT, node_crt)
    } else if agency_crt.exists() {
        (load_ca(out, "signing-ca")?, SIGNING, agency_crt)
    } else {
        bail!(
            "{name} is neither a node ({}) nor an agency ({}) of this PKI",
            node_crt.display(),
            agency_crt.display()
        );
    };
    let der = truc_pki::load_certs(&crt)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no certificate", crt.display()))?;
    let serial = hex::encode(truc_pki::identity::serial(&der)?);
    let path = out.join(which.serials);
    let mut list = fs::read_to_string(&path).unwrap_or_default();
    if !list
        .lines()
        .any(|l| l.split('#').next().map(str::trim) == Some(serial.as_str()))
    {
        list.push_str(&format!("{serial} # {name}\n"));
        fs::write(&path, list).with_context(|| format!("write {}", path.display()))?;
    }
    write_crl(out, &ca, &which)?;
    Ok((serial, out.join(which.crl)))
}

/// Creates (or completes) the PKI and writes every node's config.
pub fn init(out: &Path, topo: &Topology) -> Result<InitReport> {
    let mut report = InitReport::default();
    for sub in ["nodes", "agencies", "data"] {
        fs::create_dir_all(out.join(sub))
            .with_context(|| format!("create {}", out.join(sub).display()))?;
    }
    let transport = load_or_create_ca(
        out,
        "transport-ca",
        "truc transport CA (development)",
        &mut report,
    )?;
    let signing = load_or_create_ca(
        out,
        "signing-ca",
        "truc signing CA (development)",
        &mut report,
    )?;
    write_crl(out, &transport, &TRANSPORT)?;
    write_crl(out, &signing, &SIGNING)?;

    for n in &topo.nodes {
        let id: NodeId = n.id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        issue_if_missing(
            out.join("nodes").join(format!("{id}.crt")),
            out.join("nodes").join(format!("{id}.key")),
            &mut report,
            || transport.node_cert(&id, &n.hostnames),
        )?;
        for a in &n.agencies {
            let organ: OrganId = a.organ.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            issue_if_missing(
                out.join("agencies").join(format!("{organ}.crt")),
                out.join("agencies").join(format!("{organ}.key")),
                &mut report,
                || signing.agency_cert(&organ, &a.name),
            )?;
        }
    }

    // Operators: a client certificate each (admin gRPC, /metrics, dashboard)
    // and a token for logging in to the dashboard from a browser.
    fs::create_dir_all(out.join("operators"))
        .with_context(|| format!("create {}", out.join("operators").display()))?;
    let mut logins = Vec::new();
    for (name, role) in DEV_OPERATORS {
        issue_if_missing(
            out.join("operators").join(format!("{name}.crt")),
            out.join("operators").join(format!("{name}.key")),
            &mut report,
            || transport.operator_cert(name, role),
        )?;
        logins.push(LoginEntry {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            token_sha256: token_at(
                &out.join("operators").join(format!("{name}.token")),
                &mut report,
            )?,
        });
    }

    fs::create_dir_all(out.join("tokens"))
        .with_context(|| format!("create {}", out.join("tokens").display()))?;
    for n in &topo.nodes {
        let mut cfg = node_config(topo, n)?;
        if let Some(a) = cfg.admin_api.as_mut() {
            a.logins = logins.clone();
        }
        if let Some(listen) = &n.rest_api {
            // One application per edge, acting for its agencies; the token itself
            // is written once, beside the keys, and the config keeps its hash.
            let token_sha256 = token_at(
                &out.join("tokens").join(format!("{}.token", n.id)),
                &mut report,
            )?;
            cfg.rest = Some(RestSection {
                listen: listen.clone(),
                apps: vec![RestApp {
                    name: format!("{}-app", n.id),
                    token_sha256,
                    organs: n.agencies.iter().map(|a| a.organ.clone()).collect(),
                }],
            });
        }
        let path = out.join(format!("{}.toml", n.id));
        let text = format!(
            "# truc node `{}`, written by `truc certs init`. Paths are relative to this file.\n# Every limit is spelled out; see the README for what each one does.\n\n{}",
            n.id,
            toml::to_string_pretty(&cfg).context("serialize config")?
        );
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        report.configs.insert(n.id.clone(), path);
    }
    Ok(report)
}

fn node_config(topo: &Topology, n: &TopoNode) -> Result<FileConfig> {
    let parent = match &n.parent {
        Some(p) => {
            let pn = topo
                .node(p)
                .ok_or_else(|| anyhow::anyhow!("unknown parent {p}"))?;
            Some(ParentSection {
                address: pn
                    .advertise
                    .clone()
                    .or_else(|| pn.listen.clone())
                    .unwrap_or_default(),
                node_id: p.clone(),
            })
        }
        None => None,
    };
    let children = topo
        .nodes
        .iter()
        .filter(|c| c.parent.as_deref() == Some(n.id.as_str()))
        .map(|c| ChildSection {
            node_id: c.id.clone(),
            organs: topo.subtree_organs(&c.id),
            grant: c.grant.clone(),
        })
        .collect();
    Ok(FileConfig {
        version: truc_node::config::CONFIG_VERSION,
        node_id: n.id.clone(),
        data_dir: PathBuf::from("data").join(&n.id),
        tls: TlsSection {
            ca: "transport-ca.crt".into(),
            cert: PathBuf::from("nodes").join(format!("{}.crt", n.id)),
            key: PathBuf::from("nodes").join(format!("{}.key", n.id)),
            // The transport CA's revocation list (`truc certs revoke` rewrites it;
            // nodes read it again every crl_reload_ms).
            crls: vec![CRL_FILE.into()],
            crl_reload_ms: 10_000,
        },
        signing: SigningSection {
            ca: "signing-ca.crt".into(),
            // `truc certs revoke <agency>` rewrites it.
            crls: vec![SIGNING_CRL_FILE.into()],
        },
        listen: n.listen.clone().map(|address| ListenSection { address }),
        health: n
            .health
            .clone()
            .map(|listen| truc_node::config::HealthSection { listen }),
        parent,
        agency_api: n
            .agency_api
            .clone()
            .map(|listen| AgencyApiSection { listen }),
        agencies: n
            .agencies
            .iter()
            .map(|a| AgencySection {
                organ: a.organ.clone(),
                name: a.name.clone(),
                signing_cert: PathBuf::from("agencies").join(format!("{}.crt", a.organ)),
                signing_key: PathBuf::from("agencies").join(format!("{}.key", a.organ)),
            })
            .collect(),
        directory: topo
            .nodes
            .iter()
            .filter(|c| c.parent.as_deref() == Some(n.id.as_str()))
            .flat_map(|c| topo.subtree_agencies(&c.id))
            .map(|(a, node)| DirectoryEntry {
                organ: a.organ,
                name: a.name,
                parent: a.parent,
                node,
            })
            .collect(),
        children,
        admin_api: n.admin_api.clone().map(|listen| AdminApiSection {
            listen,
            logins: Vec::new(),
        }),
        alerts: Default::default(),
        pdf: Default::default(),
        rest: None,
        grant: n.grant.clone(),
        limits: Default::default(),
        link: LinkTuning::default(),
        storage: StorageSection::default(),
        delivery: DeliverySection::default(),
        quotas: QuotaSection::default(),
        test_hooks: TestHooks::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_topology_has_a_hub_three_edges_and_a_province_relay() {
        let t = Topology::default_topology().unwrap();
        assert_eq!(t.nodes.len(), 7);
        assert_eq!(
            t.subtree_organs("nghean"),
            vec!["000.00.00.H41".to_string()]
        );
        assert_eq!(
            t.subtree_organs("quangnam"),
            vec![
                "000.00.00.H47".to_string(),
                "001.00.10.H47".to_string(),
                "002.00.10.H47".to_string()
            ]
        );
    }

    #[test]
    fn topologies_with_two_hubs_or_unknown_parents_are_refused() {
        let two = "[[nodes]]\nid=\"a\"\nlisten=\"127.0.0.1:1\"\n[[nodes]]\nid=\"b\"\nlisten=\"127.0.0.1:2\"\n";
        assert!(Topology::parse(two, "t").is_err());
        let orphan =
            "[[nodes]]\nid=\"a\"\nlisten=\"127.0.0.1:1\"\n[[nodes]]\nid=\"b\"\nparent=\"zz\"\n";
        let err = format!("{:#}", Topology::parse(orphan, "t").unwrap_err());
        assert!(err.contains("parent zz is not listed"), "{err}");
    }

    #[test]
    fn init_writes_loadable_configs_and_keeps_existing_keys_on_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let t = Topology::default_topology().unwrap();
        let first = init(dir.path(), &t).unwrap();
        assert_eq!(first.configs.len(), 7);
        let relay = truc_node::Config::load(&first.configs["quangnam"]).unwrap();
        assert_eq!(relay.role(), "relay");
        assert_eq!(
            relay.grant.as_ref().map(|g| g.as_str()),
            Some("000.00.00.H47")
        );
        for path in first.configs.values() {
            truc_node::Config::load(path).unwrap();
        }
        let hub = fs::read_to_string(dir.path().join("hub.toml")).unwrap();
        assert!(
            !hub.contains(".key\"\n") || !hub.contains("agencies/"),
            "the hub names no agency key"
        );
        let ca_before = fs::read(dir.path().join("signing-ca.crt")).unwrap();
        let second = init(dir.path(), &t).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(
            fs::read(dir.path().join("signing-ca.crt")).unwrap(),
            ca_before
        );
    }

    /// A rotated certificate keeps the names it was issued for (those its
    /// children, Prometheus and browsers dial).
    #[test]
    fn a_rotated_certificate_keeps_its_names() {
        let k8s = Topology::parse(
            &fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/topology.k8s.toml"),
            )
            .unwrap(),
            "k8s",
        )
        .unwrap();
        let pki = tempfile::tempdir().unwrap();
        init(pki.path(), &k8s).unwrap();
        let names = |p: &Path| {
            let der = truc_pki::load_certs(p).unwrap().remove(0);
            (
                truc_pki::identity::host_names(&der).unwrap(),
                truc_pki::identity::serial(&der).unwrap(),
            )
        };
        let crt = pki.path().join("nodes/hub.crt");
        let (before, serial) = names(&crt);
        assert!(before.iter().any(|h| h == "hub.truc.svc"), "{before:?}");
        assert_eq!(rotate(pki.path(), "hub").unwrap(), crt);
        let (after, new_serial) = names(&crt);
        assert_ne!(new_serial, serial);
        assert_eq!(after, before);
    }
}
