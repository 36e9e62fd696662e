//! The hub's dashboard in a real headless Chromium, over TLS, after a login:
//! every node of the default topology with its link state (a district behind
//! the province relay included), an edge and a district stopped and seen going
//! down live, an alert for the lost link, a document found through the search
//! box with its trace, labels in Vietnamese and English. Screenshots are kept
//! under target/tmp/dashboard/ (paths printed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::{browser::*, *};

const ALL: &str = "caobang,dienban,duyxuyen,hub,nghean,quangnam,vpcp";

fn links_js() -> &'static str {
    "(() => { const n = [...document.querySelectorAll('[data-node]')]; \
     return n.map(e => e.dataset.node + '=' + e.dataset.link).sort().join(','); })()"
}

#[test]
fn the_dashboard_shows_the_federation_live_and_finds_a_trace() {
    let mut c = Cluster::new();
    // A link down for a second is an alert here (5 minutes by default).
    c.edit("hub", |t| {
        let mut a = toml::Table::new();
        a.insert("link_down_ms".into(), 1000.into());
        t.insert("alerts".into(), a.into());
    });
    for n in ALL.split(',') {
        c.start(n);
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let mut b = Browser::launch(&spki_sha256_b64(&c.path("nodes/hub.crt")));
    let url = format!("https://127.0.0.1:{}/", c.admin_addr("hub").port());

    // No credentials: the login page.
    b.goto(&url);
    b.wait_for(
        "the login form",
        "document.getElementById('token') !== null",
    );
    let token = std::fs::read_to_string(c.path("operators/viewer.token")).unwrap();
    b.eval(&format!(
        "document.getElementById('token').value = {:?}; document.getElementById('login').submit(); true",
        token.trim()
    ));
    b.wait_for("the dashboard", "document.getElementById('tree') !== null");

    // Every node, each link up (the districts as their relay reports them).
    let all_up = ALL
        .split(',')
        .map(|n| format!("{n}=up"))
        .collect::<Vec<_>>()
        .join(",");
    let seen = b.wait_for(
        "every node up",
        &format!(
            "(() => {{ const s = {}; return s === {all_up:?} ? s : ''; }})()",
            links_js()
        ),
    );
    assert_eq!(seen, all_up.as_str());
    assert_eq!(
        b.eval("document.querySelector('[data-node=\"dienban\"]').parentElement.closest('[data-node]').dataset.node"),
        "quangnam",
        "districts hang under their province"
    );
    b.screenshot(&shots.join("1-all-up.png"));

    // An edge and a district stop: both turn down without a reload.
    c.stop("caobang");
    c.stop("dienban");
    b.wait_for(
        "caobang down",
        "document.querySelector('[data-node=\"caobang\"]').dataset.link === 'down'",
    );
    b.wait_for(
        "dienban down",
        "document.querySelector('[data-node=\"dienban\"]').dataset.link === 'down'",
    );
    b.wait_for(
        "a link-down alert for caobang",
        "[...document.querySelectorAll('[data-alert=\"link_down\"]')].some(e => e.textContent.includes('caobang'))",
    );

    b.wait_for(
        "a link-down alert for the district, from the relay's report",
        "[...document.querySelectorAll('[data-alert=\"link_down\"]')].some(e => e.textContent.includes('dienban'))",
    );
    b.wait_for(
        "the throughput chart",
        "document.querySelectorAll('#chart polyline').length === 3",
    );

    // A document, found through the search box: its trace at the hub.
    let id = c.send_from_vpcp(H41, "Công văn tra cứu", &[]);
    // Delivered: the hub has received and forwarded it.
    c.wait_delivered("vpcp", &id);
    b.eval(&format!(
        "document.getElementById('doc').value = {id:?}; document.getElementById('search').requestSubmit(); true"
    ));
    b.wait_for(
        "the trace",
        "document.querySelectorAll('#trace-table tr[data-step]').length > 0",
    );
    let caption = b.eval("document.getElementById('trace-caption').textContent");
    assert!(caption.as_str().unwrap().contains(&id), "{caption}");
    let steps = b.wait_for(
        "the forwarded step",
        "(() => { const s = [...document.querySelectorAll('#trace-table tr[data-step]')].map(r => r.dataset.step); \
         return s.includes('received') && s.includes('forwarded') ? s.join(',') : ''; })()",
    );
    assert!(steps.as_str().unwrap().contains("received"), "{steps}");
    // An unknown id says so.
    b.eval(
        "document.getElementById('doc').value = 'not-a-doc-id'; document.getElementById('search').requestSubmit(); true",
    );
    b.wait_for(
        "an error for a bad id",
        "document.getElementById('trace-error') !== null",
    );
    b.eval(&format!(
        "document.getElementById('doc').value = {id:?}; document.getElementById('search').requestSubmit(); true"
    ));
    b.wait_for(
        "the trace again",
        "document.querySelectorAll('#trace-table tr[data-step]').length > 0",
    );

    // Vietnamese by default, English on request.
    assert_eq!(
        b.eval("document.querySelector('[data-i18n=\"tree\"]').textContent"),
        "Mạng liên thông"
    );
    b.screenshot(&shots.join("2-down-and-trace-vi.png"));
    b.eval("document.getElementById('lang').click(); true");
    b.wait_for(
        "English labels",
        "document.querySelector('[data-i18n=\"tree\"]').textContent === 'Federation'",
    );
    b.screenshot(&shots.join("3-down-and-trace-en.png"));

    // The hub itself stops: the page says what it shows is out of date,
    // instead of showing the last numbers as if they were live.
    c.stop("hub");
    b.wait_for(
        "the out-of-date banner",
        "(() => { const s = document.getElementById('stale'); \
         return !s.hidden && document.body.classList.contains('is-stale') ? s.textContent : ''; })()",
    );
    b.screenshot(&shots.join("4-hub-stopped.png"));
    eprintln!("dashboard screenshots: {}", shots.display());
}
