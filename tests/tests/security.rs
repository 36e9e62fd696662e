//! Who may talk to the hub and what it accepts: foreign CAs and TLS 1.2 refused at
//! the handshake, `from` bound to the connecting node, signatures over the exact
//! bytes checked at the hub and again at the recipient, duplicates delivered once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, sync::Arc};

use common::{raw::*, *};
use tonic::Code;
use truc_pki::tls::TransportMaterial;
use truc_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_spoofed_senders_and_tampered_bytes_and_delivers_duplicates_once() {
    let mut c = Cluster::new();
    c.start("hub");
    c.start("caobang");
    let hub = c.hub_addr();
    let pki = c.dir.path().to_owned();
    // This test plays node vpcp itself, with vpcp's own certificate.
    let mut link = raw_link(&pki, "vpcp", &hub).await.unwrap();

    // vpcp serves G22 only: an envelope from H41, even validly signed by H41's key, is refused.
    let spoofed = sealed(&pki, H41, &[H14], "spoofed from H41");
    let (code, reason) = link.offer(spoofed, &[H14]).await.unwrap_err();
    assert_eq!(code, Code::PermissionDenied, "{reason}");
    assert!(
        reason.contains("may not send from agency 000.00.00.H41"),
        "{reason}"
    );

    // One flipped byte in the signed header, or in the signature.
    let mut flipped = sealed(&pki, G22, &[H14], "flipped header byte");
    let mid = flipped.header_bytes.len() / 2;
    flipped.header_bytes[mid] ^= 0x01;
    let (code, reason) = link.offer(flipped, &[H14]).await.unwrap_err();
    assert!(
        matches!(code, Code::Unauthenticated | Code::InvalidArgument),
        "{code:?} {reason}"
    );
    let mut bad_sig = sealed(&pki, G22, &[H14], "flipped signature byte");
    let last = bad_sig.signature.len() - 1;
    bad_sig.signature[last] ^= 0x01;
    let (code, reason) = link.offer(bad_sig, &[H14]).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated, "{reason}");

    // An agency nobody serves.
    let (code, reason) = link
        .offer(
            sealed(&pki, G22, &["000.00.00.H99"], "unknown recipient"),
            &["000.00.00.H99"],
        )
        .await
        .unwrap_err();
    assert_eq!(code, Code::NotFound);
    assert_eq!(reason, "unknown recipient 000.00.00.H99");

    // The same envelope twice: acknowledged twice, delivered once.
    let twice = sealed(&pki, G22, &[H14], "sent twice");
    link.offer(twice.clone(), &[H14]).await.unwrap();
    link.offer(twice, &[H14]).await.unwrap();

    // The barrier travels the same queue after everything above.
    link.offer(sealed(&pki, G22, &[H14], "barrier"), &[H14])
        .await
        .unwrap();
    let subjects = subjects_at(&c, "caobang", H14, "barrier").await;
    assert_eq!(
        subjects,
        vec!["sent twice".to_string(), "barrier".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_child_or_lies_in_hello_is_refused() {
    let mut c = Cluster::new();
    c.start("hub");
    let hub = c.hub_addr();
    // The hub's own certificate: a valid node of this CA, but not a child.
    let err = raw_link(c.dir.path(), "hub", &hub).await.err().unwrap();
    assert!(err.contains("not a child"), "{err}");
}

/// A child checks that its parent's certificate names the parent node, not
/// only a DNS name the parent's id matches: every dev certificate carries
/// `localhost`, and a CA may put the same host name on several nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_refuses_a_parent_whose_certificate_names_another_node() {
    let mut c = Cluster::new();
    c.start("hub");
    // The hub's certificate is valid for "localhost", but it names node hub.
    let err = raw_link_to(c.dir.path(), "vpcp", "localhost", &c.hub_addr())
        .await
        .err()
        .expect("a link to the wrong node opened");
    assert!(
        err.contains("certificate of node hub, not localhost"),
        "{err}"
    );
    assert!(
        raw_link_to(c.dir.path(), "vpcp", "hub", &c.hub_addr())
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused_at_the_handshake() {
    let mut c = Cluster::new();
    c.start("hub");
    let other = tempfile::tempdir().unwrap();
    let out = c.cli(&["certs", "init", "--out", other.path().to_str().unwrap()]);
    assert!(out.status.success());
    let err = raw_link(other.path(), "vpcp", &c.hub_addr())
        .await
        .err()
        .unwrap();
    assert!(!err.is_empty());
    // The same node name with the right CA gets in: the refusal was about the CA.
    assert!(raw_link(c.dir.path(), "vpcp", &c.hub_addr()).await.is_ok());
    c.wait_log("hub", &["tls handshake refused"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_client_is_refused() {
    let mut c = Cluster::new();
    c.start("hub");
    let pki = c.dir.path();
    let t = TransportMaterial::load(
        &pki.join("transport-ca.crt"),
        &pki.join("nodes/vpcp.crt"),
        &pki.join("nodes/vpcp.key"),
        &[] as &[&Path],
    )
    .unwrap();
    let connect = |versions: &'static [&'static rustls::SupportedProtocolVersion]| {
        let t = t.clone();
        let hub = c.hub_addr();
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(t.ca[0].clone()).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(truc_pki::provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(t.chain.clone(), t.key.clone_key())
                .unwrap();
            let tcp = tokio::net::TcpStream::connect(&hub).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("hub").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
        }
    };
    static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let err = connect(TLS12_ONLY)
        .await
        .expect_err("TLS 1.2 handshake succeeded");
    assert!(err.to_string().to_lowercase().contains("protocol"), "{err}");
    connect(TLS13_ONLY)
        .await
        .expect("the same client over TLS 1.3 gets in");
}

/// The gRPC agency API listens on loopback, which every user of the
/// machine reaches: a call without the token the node made (readable by its
/// user only), or with another, is refused before it is read, counted and
/// logged, and nothing is sent; the node's user (the CLI) gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agency_api_takes_no_call_without_the_nodes_token() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new();
    // A data_dir deeper than a Unix socket's 107 bytes may name: the node
    // binds, and the CLI dials, its socket all the same.
    let deep = c
        .dir
        .path()
        .join("data")
        .join("a-ministry-volume-mounted-deep-in-a-tree-of-directories")
        .join("vpcp-of-the-office-of-the-government");
    c.edit("vpcp", |t| {
        t.insert("data_dir".into(), deep.to_str().unwrap().into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let data_dir = truc_node::config::Config::load(&c.config("vpcp"))
        .unwrap()
        .data_dir;
    let socket = truc_node::agency::socket_path(&data_dir);
    assert!(socket.as_os_str().len() > 107, "{}", socket.display());
    let token_file = truc_node::agency::token_path(&data_dir);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());

    let mut a = c.agency_without_token("vpcp").await;
    let e = a
        .send(doc(G22, &[H41], "gửi không có mã"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains(token_file.to_str().unwrap()), "{e:?}");
    let mut wrong = tonic::Request::new(doc(G22, &[H41], "gửi với mã khác"));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer 00000000".parse().unwrap());
    let e = a.send(wrong).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().starts_with("wrong token"), "{e:?}");
    c.wait_log("vpcp", &["request refused", "Unauthenticated"]);

    // Nothing went: the edge sent nothing, and the CLI (the node's user,
    // which reads the token) is let in.
    let sent = async |c: &Cluster| {
        c.agency("vpcp")
            .await
            .list_sent(pb::ListSentRequest {
                from: G22.into(),
                limit: 0,
                after: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let none = sent(&c).await;
    assert!(none.documents.is_empty(), "{none:?}");
    assert!(inbox(&c, "nghean", H41).await.is_empty());

    // The CLI reaches the node by its Unix socket, the node user's only.
    // While the node is down, another user who binds its TCP port is handed
    // nothing: the CLI says the node is not there instead of dialling it.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", socket.display());
    let port = c.agency_addr("vpcp");
    assert!(c.stop("vpcp").success());
    assert!(!socket.exists(), "{} left behind", socket.display());
    let squatter = std::net::TcpListener::bind(port).unwrap();
    squatter.set_nonblocking(true).unwrap();
    let Err(e) = truc::client::connect(&c.config("vpcp")).await else {
        panic!("a node reached, none running");
    };
    assert!(format!("{e:#}").contains(socket.to_str().unwrap()), "{e:#}");
    assert_eq!(
        squatter.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the CLI dialled the port a squatter holds"
    );
    drop(squatter);

    // A socket left behind (a crash) is replaced at the next start, in a
    // run/ only the node's user may enter again (a volume's group rights
    // had opened it).
    let dial = truc_node::agency::socket_dial_path(&socket).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&dial.path).unwrap());
    assert!(socket.exists(), "{}", socket.display());
    let run = socket.parent().unwrap();
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o2770)).unwrap();
    c.start("vpcp");
    let mode = std::fs::metadata(run).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "{}", run.display());
    assert!(sent(&c).await.documents.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_tampered_at_the_hub_are_refused_by_the_recipient() {
    let mut c = Cluster::new();
    c.edit("hub", |t| {
        let mut hooks = toml::Table::new();
        hooks.insert("corrupt_forwarded_headers".into(), true.into());
        t.insert("test_hooks".into(), hooks.into());
    });
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let mut a = c.agency("vpcp").await;
    let id = a
        .send(doc(G22, &[H41], "tampered in transit"))
        .await
        .unwrap()
        .into_inner()
        .doc_id;
    c.wait_log("hub", &["peer refused a transfer", "child:nghean"]);
    c.wait_log("nghean", &["transfer refused", "does not match"]);
    assert!(
        inbox(&c, "nghean", H41).await.is_empty(),
        "a tampered document was delivered"
    );
    let states = recipient_states(&c, "vpcp", &id).await;
    assert_eq!(
        states[0].1,
        pb::DeliveryState::AtHub as i32,
        "no delivered receipt may exist: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_link_and_cannot_come_back() {
    let mut c = Cluster::new();
    c.edit("hub", crl_reload_every(100));
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.start(n);
    }
    let before = c.send_from_vpcp(H41, "trước khi thu hồi", &[]);
    c.wait_delivered("vpcp", &before);

    let revoke = revoke(&c, "vpcp");
    assert!(revoke.contains("vpcp"), "{revoke}");
    // The running hub reads the new list, drops the live link and refuses the next
    // handshakes; nothing vpcp queues afterwards gets through.
    c.wait_log("hub", &["revocation lists reloaded", "vpcp"]);
    c.wait_log("hub", &["tls handshake refused"]);
    let err = raw_link(c.dir.path(), "vpcp", &c.hub_addr())
        .await
        .err()
        .expect("a revoked certificate opened a link");
    assert!(!err.is_empty());
    // Another node is not affected.
    vpcp_is_cut_off_while_nghean_gets_through(&c, "a document went through on a revoked link")
        .await;
    let v: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["nodes", "--config", &c.cfg("hub"), "--json"])).unwrap();
    let vpcp = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "vpcp")
        .unwrap();
    assert_eq!(vpcp["link"], "down", "{vpcp}");
}

/// A child checks its parent's certificate against the lists it reloads too:
/// a revoked hub loses the link of a child that has read the new list, and the
/// child's next handshakes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_drops_a_parent_whose_certificate_is_revoked() {
    // The others have not read the list yet: the hub still carries their traffic.
    let c = four_nodes_one_reading_lists("vpcp");

    revoke(&c, "hub");
    c.wait_log("vpcp", &["revocation lists reloaded"]);
    c.wait_log("vpcp", &["revocation lists changed", "parent"]);
    c.wait_log("vpcp", &["link to parent down", "evoked"]);
    // The hub itself still works for nodes that have not read the list.
    vpcp_is_cut_off_while_nghean_gets_through(
        &c,
        "a document went to a parent whose certificate is revoked",
    )
    .await;
}

/// An agency certificate revoked in the signing CA's list: the hub, having
/// read the list, refuses the agency's documents even from an edge that has
/// not (a compromised key cannot be used through a stale edge), the other
/// agencies' documents still go through, and the edge refuses them itself
/// once it reads the list (here at its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agency_certificate_signs_nothing_that_is_accepted() {
    let mut c = four_nodes_one_reading_lists("hub");

    let out = revoke(&c, G22);
    assert!(out.contains("signing-ca.crl"), "{out}");
    c.wait_log("hub", &["signing revocation lists reloaded"]);
    // vpcp has not read the list: it takes the document, the hub refuses it.
    let refused = c.send_from_vpcp(H41, "sau khi thu hồi", &[]);
    c.wait_log("hub", &["CertRevoked"]);
    let (ok, id) = c.send_as("nghean", H41, H14, "vẫn thông suốt", &[]);
    assert!(ok, "{id}");
    c.wait_delivered("nghean", &id);
    assert!(
        !inbox(&c, "nghean", H41)
            .await
            .iter()
            .any(|i| i.doc_id == refused),
        "a document signed with a revoked certificate was delivered"
    );

    // Read at start: the edge itself refuses to send with the revoked key.
    c.stop("vpcp");
    c.start("vpcp");
    let (ok, out) = c.send_as("vpcp", G22, H41, "sau khi khởi động lại", &[]);
    assert!(!ok, "sent with a revoked certificate: {out}");
    assert!(out.contains("CertRevoked"), "{out}");
}

/// hub, vpcp, nghean and caobang running, `fast` reading its revocation lists
/// every 100 ms and the others hourly, one document delivered vpcp → H41.
fn four_nodes_one_reading_lists(fast: &str) -> Cluster {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.edit(n, crl_reload_every(if n == fast { 100 } else { 3_600_000 }));
    }
    for n in ["hub", "vpcp", "nghean", "caobang"] {
        c.start(n);
    }
    let before = c.send_from_vpcp(H41, "trước khi thu hồi", &[]);
    c.wait_delivered("vpcp", &before);
    c
}

/// A PKI directory with `pki`'s transport CA and `issued` as vpcp's
/// certificate and key.
fn pki_holding_vpcp(pki: &Path, issued: &truc_pki::dev::Issued) -> tempfile::TempDir {
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("nodes")).unwrap();
    std::fs::copy(
        pki.join("transport-ca.crt"),
        other.path().join("transport-ca.crt"),
    )
    .unwrap();
    std::fs::write(other.path().join("nodes/vpcp.crt"), &issued.cert_pem).unwrap();
    std::fs::write(other.path().join("nodes/vpcp.key"), &issued.key_pem).unwrap();
    other
}

/// A config edit: the node reads its revocation lists again every `ms`.
fn crl_reload_every(ms: i64) -> impl FnOnce(&mut toml::Table) {
    move |t| {
        t["tls"]
            .as_table_mut()
            .unwrap()
            .insert("crl_reload_ms".into(), ms.into());
    }
}

/// `truc certs revoke` of `node`'s certificate; its output.
fn revoke(c: &Cluster, node: &str) -> String {
    c.cli_ok(&[
        "certs",
        "revoke",
        "--out",
        c.dir.path().to_str().unwrap(),
        node,
    ])
}

/// After a revocation that cut vpcp off: a document vpcp sends to H41 does not
/// arrive, while nghean's to H14 through the hub is delivered (`why` names
/// what an arrival would mean).
async fn vpcp_is_cut_off_while_nghean_gets_through(c: &Cluster, why: &str) {
    let after = c.send_from_vpcp(H41, "sau khi thu hồi", &[]);
    let (ok, id) = c.send_as("nghean", H41, H14, "vẫn thông suốt", &[]);
    assert!(ok, "{id}");
    c.wait_delivered("nghean", &id);
    assert!(
        !inbox(c, "nghean", H41)
            .await
            .iter()
            .any(|i| i.doc_id == after),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_certificate_is_refused_at_the_handshake() {
    let mut c = Cluster::new();
    c.start("hub");
    let pki = c.dir.path();
    let ca = truc_pki::dev::DevCa::load(
        &std::fs::read_to_string(pki.join("transport-ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("transport-ca.key")).unwrap(),
    )
    .unwrap();
    let expired = ca
        .node_cert_valid(&"vpcp".parse().unwrap(), &[], -1)
        .unwrap();
    let other = pki_holding_vpcp(pki, &expired);
    let err = raw_link(other.path(), "vpcp", &c.hub_addr())
        .await
        .err()
        .expect("an expired certificate opened a link");
    assert!(!err.is_empty());
    c.wait_log("hub", &["tls handshake refused", "xpired"]);
    // The same node with its valid certificate gets in: the refusal was the date.
    assert!(raw_link(pki, "vpcp", &c.hub_addr()).await.is_ok());
}

/// A certificate is checked at the handshake; a link does not outlive it:
/// the hub closes a child's link when its certificate expires, and the next
/// handshake is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_ends_when_the_childs_certificate_expires() {
    let mut c = Cluster::new();
    // Only the expiry may end the link here, not a heartbeat lapsed on a
    // loaded machine.
    c.set("hub", "link", "heartbeat_timeout_ms", 60_000);
    c.start("hub");
    let pki = c.dir.path();
    let ca = truc_pki::dev::DevCa::load(
        &std::fs::read_to_string(pki.join("transport-ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("transport-ca.key")).unwrap(),
    )
    .unwrap();
    let short = ca
        .node_cert_expiring(&"vpcp".parse().unwrap(), std::time::Duration::from_secs(6))
        .unwrap();
    let other = pki_holding_vpcp(pki, &short);
    let link = raw_link(other.path(), "vpcp", &c.hub_addr())
        .await
        .expect("a certificate valid for six more seconds opens a link");
    c.wait_log(
        "hub",
        &["certificate has expired; its link is closed", "vpcp"],
    );
    drop(link);
    let err = raw_link(other.path(), "vpcp", &c.hub_addr())
        .await
        .err()
        .expect("an expired certificate opened a link");
    assert!(!err.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revocation_list_fails_closed() {
    let mut c = Cluster::new();
    let pki = c.dir.path().to_owned();
    let ca = truc_pki::dev::DevCa::load(
        &std::fs::read_to_string(pki.join("transport-ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.join("transport-ca.key")).unwrap(),
    )
    .unwrap();
    // A list that revokes nothing, but whose next update is a day past.
    std::fs::write(pki.join("transport-ca.crl"), ca.crl_valid(&[], -1).unwrap()).unwrap();
    c.start("hub");
    let err = raw_link(&pki, "vpcp", &c.hub_addr())
        .await
        .err()
        .expect("a stale CRL let a node in");
    assert!(!err.is_empty());
    c.wait_log("hub", &["tls handshake refused"]);
    // And it says why, not only that handshakes fail.
    c.wait_log(
        "hub",
        &[
            "revocation list is past its next update",
            "transport-ca.crl",
        ],
    );
    // With a fresh list the same node gets in: the refusal was the list's age.
    std::fs::write(pki.join("transport-ca.crl"), ca.crl(&[]).unwrap()).unwrap();
    c.kill("hub");
    c.start("hub");
    assert!(raw_link(&pki, "vpcp", &c.hub_addr()).await.is_ok());
}
