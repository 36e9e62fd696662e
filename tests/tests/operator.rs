//! The operator surface against real nodes: who may use the operator port
//! (operator certificates by role, never a node certificate or nobody), that
//! an operator certificate can never send a document, `/metrics` as valid
//! Prometheus text whose counters match what was sent, and gRPC health turning
//! NOT_SERVING while the store cannot take writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ops::*, raw::*, *};
use tonic::Code;
use truc_proto::v1::{self as pb, admin_client::AdminClient};

fn send(c: &Cluster, subject: &str) -> String {
    c.send_from_vpcp(H41, subject, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_use_the_operator_port_and_only_by_their_role() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let hub = c.cfg("hub");

    // The node's own user (root runs the tests) needs no certificate: its
    // CLI reaches the admin API on run/admin.sock, mode 600, and may read and
    // act. With operators/ moved away, it has no certificate to present.
    {
        use std::os::unix::fs::PermissionsExt;
        let data_dir = truc_node::config::Config::load(&c.config("hub"))
            .unwrap()
            .data_dir;
        let socket = truc_node::admin::socket_path(&data_dir);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", socket.display());
    }
    // A read (`truc nodes` or `truc queues`) and a requeue of nothing parked
    // (NOT_FOUND once allowed), with the operator certificate `env` names.
    let read_and_act = |read: &str, env: &[(&str, String)]| {
        let read = c.cli_env(&[read, "--config", &hub], env);
        let id = truc_core::DocId::new_v7().to_string();
        (read, c.cli_env(&["requeue", "--config", &hub, &id], env))
    };
    std::fs::rename(c.path("operators"), c.path("operators.away")).unwrap();
    let ((ok, out), (acted, said)) = read_and_act("nodes", &[]);
    assert!(
        ok && out.contains("vpcp") && out.contains("nghean"),
        "{out}"
    );
    assert!(
        !acted && said.contains("NotFound"),
        "the node's user may requeue (nothing is parked here): {said}"
    );
    std::fs::rename(c.path("operators.away"), c.path("operators")).unwrap();

    // Anyone else presents an operator certificate on the operator port:
    // operators/admin.crt when TRUC_OPERATOR names it.
    let ((ok, out), (acted, said)) =
        read_and_act("nodes", &[("TRUC_OPERATOR", "admin".to_owned())]);
    assert!(
        ok && out.contains("vpcp") && out.contains("nghean"),
        "{out}"
    );
    assert!(
        !acted && said.contains("NotFound"),
        "an operator may requeue (nothing is parked here): {said}"
    );

    // A viewer may read, not act.
    let ((ok, out), (acted, said)) =
        read_and_act("queues", &[("TRUC_OPERATOR", "viewer".to_owned())]);
    assert!(ok, "{out}");
    assert!(
        !acted && said.contains("role viewer") && said.contains("PermissionDenied"),
        "{said}"
    );

    // A node certificate is refused by every admin RPC.
    let node_cert = [
        (
            "TRUC_OPERATOR_CERT",
            c.path("nodes/vpcp.crt").display().to_string(),
        ),
        (
            "TRUC_OPERATOR_KEY",
            c.path("nodes/vpcp.key").display().to_string(),
        ),
    ];
    for cmd in ["nodes", "queues", "stats"] {
        let (ok, out) = c.cli_env(&[cmd, "--config", &hub], &node_cert);
        assert!(!ok && out.contains("node certificate"), "{cmd}: {out}");
    }
    // And nobody at all is unauthenticated.
    let mut anon = AdminClient::new(admin_channel(&c, "hub", None));
    let e = anon.nodes(pb::NodesRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut as_node = AdminClient::new(admin_channel(&c, "hub", Some("nodes/vpcp")));
    let e = as_node.stats(pb::StatsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // Health and reflection answer anyone (probes, grpcurl): no secrets there.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(admin_channel(&c, "hub", None));
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers
        .message()
        .await
        .unwrap()
        .and_then(|r| r.message_response)
    else {
        panic!("no service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in ["truc.v1.Admin", "truc.v1.Link", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == svc), "{svc} in {names:?}");
    }

    // The dashboard: nobody gets the login page (401), a node 403, an operator
    // certificate the page; the API and /metrics likewise.
    let a = c.ops("hub", None).get("/");
    assert_eq!(a.status, 401);
    assert!(a.body.contains("name=\"token\""), "the login form");
    for path in ["/api/overview", "/metrics", "/api/trace/x"] {
        assert_eq!(c.ops("hub", None).get(path).status, 401, "{path}");
        assert_eq!(
            c.ops("hub", Some("nodes/vpcp")).get(path).status,
            403,
            "{path}"
        );
    }
    let a = c.ops("hub", Some("operators/viewer")).get("/");
    assert_eq!(a.status, 200);
    assert!(a.body.contains("id=\"tree\""));
    let a = c.ops("hub", Some("operators/viewer")).get("/api/overview");
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["operator"]["role"], "viewer");

    // A login token opens a session; a wrong one does not.
    let a = c
        .ops("hub", None)
        .post_form("/login", &[("token", "not-the-token")]);
    assert_eq!(a.status, 401);
    assert!(a.set_cookie.is_none());
    let token = std::fs::read_to_string(c.path("operators/admin.token")).unwrap();
    let a = c
        .ops("hub", None)
        .post_form("/login", &[("token", token.trim())]);
    assert_eq!(a.status, 303, "{}", a.body);
    let cookie = a.set_cookie.expect("a session cookie");
    let with = c.ops("hub", None).with_cookie(&cookie);
    let a = with.get("/api/overview");
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (v["operator"]["name"].as_str(), v["operator"]["by"].as_str()),
        (Some("admin"), Some("login"))
    );
    let a = with.post_form("/logout", &[]);
    assert_eq!(a.status, 303);
    assert_eq!(with.get("/api/overview").status, 401, "the session ended");
    assert!(
        cookie_attrs_of(&c, token.trim()).contains("Max-Age=43200"),
        "a session lasts a working day at most"
    );

    // Ten wrong tokens from one address, and its guesses wait a minute; the
    // right token still gets in (a guesser behind an office's shared address
    // does not lock the operators out).
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let a = c
            .ops("hub", None)
            .post_form("/login", &[("token", "guess")]);
        statuses.push(a.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        9,
        "{statuses:?}"
    );
    let a = c
        .ops("hub", None)
        .post_form("/login", &[("token", token.trim())]);
    assert_eq!(a.status, 303, "{}", a.body);
}

/// The attributes of the session cookie a login with `token` sets.
fn cookie_attrs_of(c: &Cluster, token: &str) -> String {
    let a = c.ops("hub", None).post_form("/login", &[("token", token)]);
    assert_eq!(a.status, 303, "{}", a.body);
    a.set_cookie_attrs.expect("a session cookie")
}

/// A web page can make an operator's browser send requests that carry the
/// operator's certificate: none of them reaches the node's admin API or its
/// dashboard, while the dashboard's own requests and the CLI's gRPC do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_drive_the_operator_port_through_an_operators_browser() {
    let mut c = Cluster::new();
    c.start("hub");
    let admin = c.ops("hub", Some("operators/admin"));
    // A "simple" cross-site fetch of an admin method: text/plain, no preflight.
    let a = admin.post_with(
        "/truc.v1.Admin/Requeue",
        &[("content-type", "text/plain")],
        b"\0\0\0\0\0",
    );
    assert_eq!(a.status, 415, "{}", a.body);
    // Whatever a browser marks as coming from another site, on any path.
    for (k, v) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ] {
        let a = admin.post_with("/logout", &[(k, v)], b"");
        assert_eq!(a.status, 403, "{k}: {v}: {}", a.body);
        let a = admin.get_with("/api/overview", &[(k, v)]);
        assert_eq!(a.status, 403, "{k}: {v}: {}", a.body);
    }
    // The dashboard's own requests pass, and its pages may not be framed.
    let own = [
        ("sec-fetch-site", "same-origin"),
        ("origin", admin.base.as_str()),
    ];
    let a = admin.get_with("/api/overview", &own);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(admin.get("/").frame_options.as_deref(), Some("DENY"));
    // The CLI's gRPC is untouched.
    let mut cli = AdminClient::new(admin_channel(&c, "hub", Some("operators/admin")));
    cli.stats(pb::StatsRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_can_never_send_a_document() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let pki = c.dir.path().to_owned();
    let hub = c.hub_addr();

    // It cannot open a link, whatever node it claims to be.
    let t = truc_pki::tls::TransportMaterial::load(
        &pki.join("transport-ca.crt"),
        &pki.join("operators/admin.crt"),
        &pki.join("operators/admin.key"),
        &[] as &[&std::path::Path],
    )
    .unwrap();
    let ch = truc_node::transport::tls_channel(
        &hub,
        "hub",
        t.client_config().unwrap(),
        Duration::from_secs(5),
        Duration::from_secs(5),
        1 << 20,
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(frame(pb::link_frame::Frame::Hello(pb::Hello {
        node_id: "vpcp".into(),
        protocol_version: truc_node::link::PROTOCOL_VERSION,
        software_version: "test".into(),
        window: 4,
    })))
    .await
    .unwrap();
    let e = pb::link_client::LinkClient::new(ch)
        .open(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("not a node certificate"), "{e}");

    // A document signed with the operator's key, carried by a real edge's link,
    // is refused: only agency keys from the signing CA sign documents.
    let header = pb::Header {
        format_version: truc_node::envelope::FORMAT_VERSION,
        doc_id: truc_core::DocId::new_v7().to_string(),
        kind: pb::Kind::Document as i32,
        from: G22.into(),
        to: vec![H41.into()],
        created_at_ms: 1,
        subject: "do an operator's bidding".into(),
        ..Default::default()
    };
    let operator = truc_pki::sign::Signer::load_for(
        &truc_pki::identity::Identity::Operator("admin".into()),
        &pki.join("operators/admin.crt"),
        &pki.join("operators/admin.key"),
    )
    .unwrap();
    let env = truc_node::envelope::seal(&header, &operator).unwrap();
    c.stop("vpcp");
    let mut link = raw_link(&pki, "vpcp", &hub).await.unwrap();
    let (code, reason) = link.offer(env, &[H41]).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated, "{reason}");
    assert!(reason.contains("not trusted by the signing ca"), "{reason}");
    // And nothing reached the recipient.
    let inbox = c.cli_ok(&[
        "inbox",
        "--config",
        &c.cfg("nghean"),
        "--organ",
        H41,
        "--json",
    ]);
    assert_eq!(inbox.trim(), "[]", "{inbox}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text_and_count_what_was_sent() {
    let mut c = Cluster::new();
    for n in ["hub", "vpcp", "nghean"] {
        c.start(n);
    }
    let ids: Vec<String> = (0..5)
        .map(|i| send(&c, &format!("Báo cáo số {i}")))
        .collect();
    for id in &ids {
        c.wait_delivered("vpcp", id);
    }
    let scrape = |c: &Cluster, node: &str| {
        let a = c.ops(node, Some("operators/viewer")).get("/metrics");
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.content_type.starts_with("application/openmetrics-text"),
            "{}",
            a.content_type
        );
        parse_metrics(&a.body)
    };
    let docs_in = [
        ("direction", "in"),
        ("kind", "document"),
        ("result", "stored"),
    ];
    let s = scrape(&c, "vpcp");
    assert_eq!(
        sample(&s, "truc_documents_total", &docs_in),
        Some(5.0),
        "submitted at the sender's edge"
    );
    // The hub's acknowledgements (with its signed acceptances) and the
    // recipient's delivery receipts are handled by different tasks at the
    // sender: a document can show "delivered" a moment before its
    // acknowledgement is counted. Wait for all five of both.
    let acked = [
        ("direction", "out"),
        ("kind", "document"),
        ("result", "acked"),
    ];
    // The link shown up in the same scrape: a loaded machine may have let a
    // heartbeat lapse and the link come back in between.
    let link_up = [("peer", "hub"), ("direction", "parent")];
    let s = eventually_sync("five taken by the hub, five latencies, the link up", || {
        let s = scrape(&c, "vpcp");
        (sample(&s, "truc_documents_total", &acked) == Some(5.0)
            && sample(&s, "truc_delivery_latency_seconds", &[]) == Some(5.0)
            && sample(&s, "truc_link_up", &link_up) == Some(1.0))
        .then_some(s)
    });
    assert!(
        sample(
            &s,
            "truc_certificate_expiry_timestamp_seconds",
            &[("subject", &format!("agency:{G22}"))]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(sample(&s, "truc_fsync_duration_seconds", &[]).unwrap() >= 1.0);
    // Histograms as Prometheus reads them: cumulative buckets, the last one
    // +Inf and equal to the count (a p99 panel reads nonsense otherwise).
    for h in [
        "truc_fsync_duration_seconds",
        "truc_delivery_latency_seconds",
    ] {
        let buckets = s
            .samples
            .iter()
            .find_map(|m| match (&m.value, m.metric == h) {
                (prometheus_parse::Value::Histogram(b), true) => Some(b.clone()),
                _ => None,
            })
            .unwrap();
        let count = sample(&s, &format!("{h}_count"), &[]).unwrap();
        let last = buckets.last().unwrap();
        assert_eq!((last.less_than, last.count), (f64::INFINITY, count), "{h}");
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "{h}: {buckets:?}"
        );
    }
    assert_eq!(sample(&s, "truc_store_writable", &[]), Some(1.0));
    // Public-key work is counted where it happens: the sender signed five
    // envelopes (a signature it has just made is not checked again), then
    // checked the hub's five acceptances and the recipient's five deliveries.
    let made = sample(&s, "truc_node_signatures_made_total", &[]).unwrap();
    let checked = sample(&s, "truc_node_signatures_verified_total", &[]).unwrap();
    assert!(made >= 5.0, "the sender signed {made}");
    assert!(checked >= 10.0, "the sender checked {checked}");
    let s = scrape(&c, "hub");
    assert_eq!(
        sample(&s, "truc_documents_total", &docs_in),
        Some(5.0),
        "routed by the hub"
    );
    let s = scrape(&c, "nghean");
    assert_eq!(
        sample(&s, "truc_documents_total", &docs_in),
        Some(5.0),
        "delivered to the recipient"
    );

    // A recipient away: its queue at the hub, its link down, its age.
    c.stop("nghean");
    send(&c, "Thư mời họp");
    send(&c, "Công văn khẩn");
    // The depth counts commits, the link gauges follow the session's end: both
    // are waited for, as the hub may see nghean go after the two are queued.
    let s = eventually_sync("two waiting for nghean, its link down", || {
        let s = scrape(&c, "hub");
        (sample(&s, "truc_queue_depth", &[("recipient", H41)]) == Some(2.0)
            && sample(&s, "truc_link_up", &[("peer", "nghean")]) == Some(0.0)
            && sample(&s, "truc_link_down_seconds", &[("peer", "nghean")]).is_some())
        .then_some(s)
    });
    assert_eq!(sample(&s, "truc_link_up", &[("peer", "nghean")]), Some(0.0));
    assert!(sample(&s, "truc_queue_oldest_age_seconds", &[("recipient", H41)]).is_some());
    assert!(sample(&s, "truc_link_down_seconds", &[("peer", "nghean")]).is_some());
    // The same numbers in `truc queues`.
    let q: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["queues", "--config", &c.cfg("hub"), "--json"])).unwrap();
    // Other rows may come and go (the hub's acceptances on their way back to
    // the sender queue for G22 for a moment), so the row is looked up by name.
    let row = q["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == H41)
        .unwrap_or_else(|| panic!("no queue for {H41}: {q}"));
    assert_eq!(row["depth"], 2, "{q}");

    // Refused input is counted by reason.
    let (ok, _) = c.send_as("vpcp", G22, "000.00.00.Z99", "x", &[]);
    assert!(!ok);
    let s = scrape(&c, "vpcp");
    let refused: f64 = s
        .samples
        .iter()
        .filter(|m| m.metric == "truc_refused_total" && m.labels.get("source") == Some("agency"))
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(
        refused, 1.0,
        "the unknown recipient, counted with its reason"
    );

    // Every method's refusals are counted, not only sending's, and so are
    // REST's, whose malformed bodies get the JSON error every answer has.
    let mut a = c.agency("vpcp").await;
    let e = a
        .ack(pb::AckRequest {
            doc_id: truc_core::DocId::new_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (status, body) =
        c.rest("vpcp")
            .post_bytes("/v1/documents", "application/json", b"{\"from\": ");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{body}");
    let (status, body) = c.rest("vpcp").get("/v1/no-such-route");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (status, body) = c.rest("vpcp").put_bytes("/v1/documents", b"{}");
    assert_eq!(
        (status, body["code"].as_str()),
        (405, Some("UNIMPLEMENTED")),
        "a known route with another method: {body}"
    );
    let s = scrape(&c, "vpcp");
    let count = |source: &str| -> f64 {
        s.samples
            .iter()
            .filter(|m| m.metric == "truc_refused_total" && m.labels.get("source") == Some(source))
            .map(|m| match m.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(count("agency"), 2.0, "the ack of an unknown document");
    assert_eq!(
        count("rest"),
        3.0,
        "the malformed body, the unknown route and the wrong method"
    );

    // `truc stats`: per agency per day, latency percentiles.
    let st: serde_json::Value =
        serde_json::from_str(&c.cli_ok(&["stats", "--config", &c.cfg("vpcp"), "--json"])).unwrap();
    // Summed over days: a run that crosses midnight has two rows.
    let g22_in: u64 = st["daily"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["organ"] == G22 && d["direction"] == "in")
        .map(|d| d["documents"].as_u64().unwrap())
        .sum();
    assert_eq!(g22_in, 7, "{st}");
    assert_eq!(st["latency"]["count"], 5, "{st}");
    assert!(st["latency"]["p99_s"].as_f64().unwrap() >= st["latency"]["p50_s"].as_f64().unwrap());

    // Small attachments go into pack files; the hub says how many, and what
    // their index costs in memory.
    let s = scrape(&c, "hub");
    let before = sample(&s, "truc_packed_blobs", &[]).unwrap();
    let file = c.path("phu-luc.txt");
    std::fs::write(&file, "Phụ lục kèm theo công văn").unwrap();
    c.send_from_vpcp(
        H41,
        "Công văn có phụ lục",
        &["--attach", file.to_str().unwrap()],
    );
    let s = eventually_sync("the attachment packed at the hub", || {
        let s = scrape(&c, "hub");
        (sample(&s, "truc_queue_depth", &[("recipient", H41)]) == Some(3.0)).then_some(s)
    });
    let packed = sample(&s, "truc_packed_blobs", &[]).unwrap();
    assert!(packed >= before + 1.0, "{before} -> {packed} packed blobs");
    assert!(sample(&s, "truc_pack_files", &[]).unwrap() >= 1.0);
    assert!(sample(&s, "truc_pack_index_bytes", &[]).unwrap() > 0.0);
}

fn eventually_sync<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    rest::poll(what, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_store_cannot_take_writes() {
    let mut c = Cluster::new();
    // The free-space reserve sits 128 MiB below what is free now: a 256 MiB
    // file crosses it.
    let free = free_bytes(c.dir.path());
    c.edit("vpcp", |t| {
        let storage = t
            .entry("storage")
            .or_insert(toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
        storage.insert(
            "min_free_bytes".into(),
            ((free - (128 << 20)) as i64).into(),
        );
        // The plaintext probe port of orchestrators says the same.
        let mut h = toml::Table::new();
        h.insert("listen".into(), "127.0.0.1:0".into());
        t.insert("health".into(), toml::Value::Table(h));
    });
    c.start("hub");
    let probe = c.start("vpcp").health.expect("a health port");
    let check_name = |ch: tonic::transport::Channel, service: &str| {
        let rt = tokio::runtime::Handle::current();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        tokio::task::block_in_place(|| {
            rt.block_on(async {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .map(|r| r.into_inner().status)
            })
        })
    };
    let check = |ch: tonic::transport::Channel| check_name(ch, "");
    let status = |c: &Cluster| check(admin_channel(c, "vpcp", None));
    let plain_channel = || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            rt.block_on(
                tonic::transport::Channel::from_shared(format!("http://{probe}"))
                    .unwrap()
                    .connect(),
            )
        })
        .unwrap()
    };
    let plain = || check(plain_channel());
    use tonic_health::pb::health_check_response::ServingStatus;
    eventually_sync("SERVING", || {
        (status(&c).ok()? == ServingStatus::Serving as i32).then_some(())
    });
    assert_eq!(plain().unwrap(), ServingStatus::Serving as i32);
    // `truc health` (container health checks) says so and exits 0.
    let out = c.cli(&["health", &probe.to_string()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");

    // The filler takes free space to 128 MiB under the reserve, sized from what
    // is free now: tests beside this one write and delete on the same disk.
    let reserve = free - (128 << 20);
    let size = (free_bytes(c.dir.path()) + (128 << 20)).saturating_sub(reserve);
    let filler = c.path("filler.bin");
    zero_file(&filler, size);
    eventually_sync("NOT_SERVING", || {
        (status(&c).ok()? == ServingStatus::NotServing as i32).then_some(())
    });
    eventually_sync("NOT_SERVING on the probe port", || {
        (plain().ok()? == ServingStatus::NotServing as i32).then_some(())
    });
    let out = c.cli(&["health", &probe.to_string()]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "NOT_SERVING");
    // Not ready, but alive: a restart would not free the disk, and a pod
    // killed for it would loop (the liveness probe asks truc.live).
    assert_eq!(
        check_name(plain_channel(), truc_node::node::LIVE).unwrap(),
        ServingStatus::Serving as i32
    );
    // The reason is an alert and a metric.
    let s = parse_metrics(&c.ops("vpcp", Some("operators/viewer")).get("/metrics").body);
    assert_eq!(sample(&s, "truc_store_writable", &[]), Some(0.0));
    assert_eq!(
        sample(&s, "truc_alert_active", &[("alert", "store")]),
        Some(1.0)
    );
    // And intake is refused with the reason.
    let cert = c.path("nodes/vpcp.crt");
    let (ok, out) = c.send_as("vpcp", G22, H41, "x", &["--attach", cert.to_str().unwrap()]);
    assert!(!ok && out.contains("disk"), "{out}");

    std::fs::remove_file(&filler).unwrap();
    eventually_sync("SERVING again", || {
        (status(&c).ok()? == ServingStatus::Serving as i32).then_some(())
    });
}
