//! The performance targets, checked against a run's medians: each
//! target the run measured gets what was measured and whether it was met, so
//! that a bench run says where truc stands without reading BENCHMARKS.md.

use serde::{Deserialize, Serialize};

use super::{
    BenchArgs, MIN_PAIRS, Machine, Summary, TRUC, cpu_ms_per_doc, crypto_floor_ms, node_usage,
    peer_cost_bound, peer_of,
};

/// One target and what this run measured of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// "met", "missed", or why the run cannot say (another setting, no peer).
    pub verdict: String,
}

fn check(target: &str, measured: String, verdict: impl Into<String>) -> TargetCheck {
    TargetCheck {
        target: target.to_owned(),
        measured,
        verdict: verdict.into(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// The verdict when the run was made at the target's setting (`at_target`),
/// else why it cannot say (`otherwise`: the flag that sets it).
fn at_setting(
    target: &str,
    measured: String,
    at_target: bool,
    verdict: impl Into<String>,
    otherwise: &str,
) -> TargetCheck {
    if at_target {
        check(target, measured, verdict)
    } else {
        check(target, measured, otherwise)
    }
}

/// truc's summary of a scenario (one per scenario).
fn truc<'a>(summary: &'a [Summary], scenario: &str) -> Option<&'a Summary> {
    summary
        .iter()
        .find(|s| s.scenario == scenario && s.system == TRUC)
}

const MB_PER_MIB: f64 = 1.048_576;

/// A drain over an emulated link is at its speed when it keeps the link this
/// busy (the rest: the recipient's start and TLS handshake, the last round
/// trip).
const LINK_BUSY: f64 = 0.9;

/// The documents' size the throughput target is set for (10 KB): the bench's
/// default `--body-bytes`.
const TARGET_BODY: usize = 10_240;

/// A body size as the bench's flag gives it, in KiB or MiB when whole.
fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// ", N KiB documents" when a run's documents are not the target's size.
fn of_size(a: &BenchArgs) -> String {
    if a.body_bytes == TARGET_BODY {
        String::new()
    } else {
        format!(", {} documents", size(a.body_bytes))
    }
}

/// Whether a drain ran at link speed: over an emulated link (`--link-mbit`),
/// whether it kept the link busy; on loopback, against a gigabit link's
/// speed, with the machine's public-key bound when that is below it.
/// `more` follows the measured figures.
fn drained_at_link_speed(
    name: &str,
    s: &Summary,
    a: &BenchArgs,
    m: &Machine,
    more: &str,
) -> TargetCheck {
    let get = |k: &str| s.extra.get(k).copied();
    // A gigabit link's speed: loopback is faster still. The issue sets no
    // size here: the figure names the documents' own.
    let mbit = s.mb_per_s * 8.0;
    // Below it, whether this machine could reach it at all: the drain's
    // public-key work alone, at this document size, on all its cores.
    let bound = crypto_floor_ms(s, m)
        .filter(|_| s.docs_per_s > 0.0)
        .map(|(made, verified, ms)| {
            let docs = m.cpus as f64 * 1000.0 / ms;
            let max_mbit = docs * s.mb_per_s / s.docs_per_s * 8.0;
            (made, verified, docs, max_mbit)
        });
    let link = get("link_mbit").zip(get("link_busy"));
    let verdict = match (link, bound) {
        // Over an emulated link: whether the drain kept it busy.
        (Some((rate, busy)), _) => format!(
            "{}: the link {:.0}% busy, {:.0} of its {rate} Mbit/s on the wire",
            met(busy >= LINK_BUSY),
            busy * 100.0,
            busy * rate
        ),
        _ if mbit >= 1000.0 => "met (a gigabit link's speed)".to_owned(),
        (None, Some((made, verified, docs, max))) if max < 1000.0 => format!(
            "missed, out of reach here: {made:.1} signatures made + {verified:.1} checked per document alone allow {docs:.0} docs/s = {max:.0} Mbit/s on {} cores",
            m.cpus
        ),
        _ => "missed (below a gigabit link; loopback is faster)".to_owned(),
    };
    let over = match (link, get("link_rtt_ms")) {
        (Some((rate, _)), Some(rtt)) => format!(" over {rate} Mbit/s, {rtt} ms round trip"),
        _ => String::new(),
    };
    check(
        name,
        format!(
            "{:.0} docs/s of {}, {:.1} MB/s = {mbit:.0} Mbit/s{over}{more}",
            s.docs_per_s,
            size(a.body_bytes),
            s.mb_per_s
        ),
        verdict,
    )
}

/// The targets of the scenarios this run measured, in the order. The
/// targets are set for the 2-core development machine: on another, each
/// verdict says so.
pub fn check_all(summary: &[Summary], a: &BenchArgs, m: &Machine) -> Vec<TargetCheck> {
    let mut out = checks(summary, a, m);
    let cpus = m.cpus;
    if cpus != 2 {
        for c in &mut out {
            c.verdict = format!("{} (on {cpus} cores, not 2)", c.verdict);
        }
    }
    out
}

fn checks(summary: &[Summary], a: &BenchArgs, m: &Machine) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    if let Some(s) = truc(summary, "edge-hub-edge") {
        const T: &str = "edge → hub → edge ≥ 1.5× nats-sync, 10 KB documents";
        let at_size = a.body_bytes == TARGET_BODY;
        out.push(match (s.vs_nats_sync, peer_of(s, summary)) {
            (Some(v), Some(p)) => at_setting(
                T,
                format!(
                    "{v:.2}×, median of {} pairs ({:.0} vs {:.0} docs/s){}",
                    s.pair_ratios.len(),
                    s.docs_per_s,
                    p.docs_per_s,
                    of_size(a)
                ),
                at_size,
                match crypto_floor_ms(s, m)
                    .and_then(|(_, _, ms)| peer_cost_bound(s, summary, ms, m.cpus))
                {
                    // Too few pairs for a median to stand for the run.
                    _ if s.pair_ratios.len() < MIN_PAIRS => {
                        format!("not judged: fewer than {MIN_PAIRS} pairs")
                    }
                    // Out of reach even at the peer's own cost per durable copy.
                    Some(b) if v < 1.5 && b.ratio < 1.5 => format!(
                        "missed, out of reach here: at nats-sync's own CPU per message for each of {:.0} durable copies, plus the signatures, at most {:.2}×",
                        b.copies, b.ratio
                    ),
                    _ => met(v >= 1.5).to_owned(),
                },
                "another size (--body-bytes 10240)",
            ),
            _ => check(
                T,
                format!("{:.0} docs/s{}", s.docs_per_s, of_size(a)),
                "no peer in this run",
            ),
        });
    }
    if let Some(s) = truc(summary, "steady") {
        const T: &str = "p99 ≤ 10 ms at a steady 1,000 docs/s";
        let measured = format!(
            "p99 {}, {:.0}/s kept of {:.0} offered",
            s.p99_ms.map_or("—".into(), |p| format!("{p:.1} ms")),
            s.docs_per_s,
            a.rate
        );
        // Latency counts from when each document was due (open loop): a system
        // that falls behind shows it in the p99, so the p99 alone decides.
        let mut verdict = met(s.p99_ms.is_some_and(|p| p <= 10.0)).to_owned();
        if verdict == "missed" {
            // What stood in the way: the cores the rate needs at the CPU the
            // nodes spent per document, and whether the durable peer kept
            // within it. Needing every core, the queues cannot stay short.
            // The CPU per document is the report's own figure (the public-key
            // lines print it too).
            if let Some(ms) = cpu_ms_per_doc(s).filter(|_| s.secs > 0.0 && !s.nodes.is_empty()) {
                let busy = node_usage(s).map(|u| u.cpu_s).sum::<f64>() / s.secs;
                let need = ms * a.rate / 1000.0;
                if need >= m.cpus as f64 {
                    verdict += ", out of reach here";
                }
                verdict += &format!(
                    ": at the {ms:.2} ms of CPU per document the nodes spent, {:.0}/s needs {need:.2} cores, of the {} here (they kept {busy:.1} busy)",
                    a.rate, m.cpus
                );
            }
            if let Some(p) = peer_of(s, summary).and_then(|p| p.p99_ms) {
                verdict += &format!("; nats-sync's p99 {p:.1} ms in the same run");
            }
        }
        out.push(at_setting(
            T,
            measured,
            (a.rate - 1000.0).abs() < 0.5,
            verdict,
            "another rate (--rate 1000)",
        ));
    }
    if let Some(s) = truc(summary, "attachment") {
        const T: &str = "1 GiB attachment: < 64 MiB extra RSS on each node";
        let extra: Vec<(String, f64)> = node_usage(s)
            .map(|u| (u.node.clone(), u.rss_peak_mib - u.rss_start_mib))
            .collect();
        let mut measured = extra
            .iter()
            .map(|(n, m)| format!("{n} +{m:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", ");
        let at_target = a.attachment_mib == 1024;
        if !at_target {
            measured += &format!(" for {} MiB", a.attachment_mib);
        }
        out.push(at_setting(
            T,
            measured,
            at_target,
            met(extra.iter().all(|(_, m)| *m < 64.0)),
            "another size (--attachment-mib 1024)",
        ));
    }
    if let Some(s) = truc(summary, "queued-drain") {
        const T: &str = "100,000 queued: < 10 MB extra hub RSS";
        let get = |s: &Summary, k: &str| s.extra.get(k).copied();
        // Once every document was queued, and the highest the hub's memory
        // was while they were being queued (its high-water mark).
        let warm = get(s, "queued_rss_growth_mib");
        let cold = get(s, "queued_rss_growth_cold_mib");
        let warm_peak = get(s, "queued_rss_growth_peak_mib");
        let cold_peak = get(s, "queued_rss_growth_peak_cold_mib");
        let mb = |m: Option<f64>| m.map_or("—".into(), |m| format!("{:.1} MB", m * MB_PER_MIB));
        let growth = |end: Option<f64>, peak: Option<f64>| match peak {
            Some(_) => format!("+{} once queued (peak +{})", mb(end), mb(peak)),
            None => format!("+{}", mb(end)),
        };
        let mut measured = format!(
            "warm hub {}, from cold {}",
            growth(warm, warm_peak),
            growth(cold, cold_peak)
        );
        let at_target = a.queued == 100_000;
        if !at_target {
            measured += &format!(" for {} queued", a.queued);
        }
        let under = |m: Option<f64>| m.is_some_and(|m| m * MB_PER_MIB < 10.0);
        let judge = |warm: Option<f64>, cold: Option<f64>| match (under(warm), under(cold)) {
            (true, true) => "met",
            (true, false) => "met on a warm hub, missed from cold",
            (false, _) => "missed",
        };
        // Judged at the peak where the run sampled one: the memory the hub
        // needed to take the queue, not only what it kept once it had it.
        let at_peak = judge(warm_peak.or(warm), cold_peak.or(cold));
        let at_end = judge(warm, cold);
        let mut verdict = if at_peak == at_end {
            at_peak.to_owned()
        } else {
            format!("at the peak: {at_peak}; once all were queued: {at_end}")
        };
        // From cold, any traffic fills caches and the allocator: the durable
        // peer's own growth in the same run says how much of it is the queue's.
        let peer = peer_of(s, summary);
        let peer_cold = peer.and_then(|p| get(p, "queued_rss_growth_cold_mib"));
        let peer_cold_peak = peer.and_then(|p| get(p, "queued_rss_growth_peak_cold_mib"));
        if let (false, Some(_)) = (under(cold_peak.or(cold)), peer_cold) {
            verdict += &format!(
                "; nats-sync {} from cold in the same run",
                growth(peer_cold, peer_cold_peak)
            );
        }
        out.push(at_setting(
            T,
            measured,
            at_target,
            verdict,
            "another count (--queued 100000)",
        ));
        out.push(drained_at_link_speed(
            "the queue drained at link speed",
            s,
            a,
            m,
            "",
        ));
    }
    if let Some(s) = truc(summary, "outbox-drain") {
        // The same target the other way: a sending edge's backlog after an
        // outage of its link, timed from the first arrival; the wait for the
        // link to come back (its reconnect backoff) is told apart.
        let after = s.extra.get("first_arrival_s").map_or(String::new(), |r| {
            format!(", the first arrival {r:.1} s after the outage ended")
        });
        out.push(drained_at_link_speed(
            "the sender's backlog drained at link speed",
            s,
            a,
            m,
            &after,
        ));
    }
    if let Some(s) = truc(summary, "idle-edges") {
        const T: &str = "1,000 idle edges on one hub";
        let per = s
            .extra
            .get("rss_per_connection_kib")
            .map_or("—".into(), |k| format!("{k:.1} KiB"));
        let measured = format!("{} connected, {per} of hub RSS each", a.idle_edges);
        // A run that did not connect every edge fails instead of reporting.
        out.push(at_setting(
            T,
            measured,
            a.idle_edges >= 1000,
            "met",
            "fewer edges (--idle-edges 1000)",
        ));
    }
    if let Some(s) = truc(summary, "reconnect") {
        const T: &str = "100 edges back within 1 s of a hub restart";
        // The whole time, from the hub's start command: the restart the
        // target counts from. Its ready line and the rest are a breakdown.
        let breakdown = match (s.extra.get("hub_start_ms"), s.extra.get("after_ready_ms")) {
            (Some(start), Some(after)) => {
                format!(" (its ready line at {start:.0} ms, the last edge {after:.0} ms after it)")
            }
            (Some(start), None) => format!(" (its ready line at {start:.0} ms)"),
            _ => String::new(),
        };
        let measured = format!(
            "{} back {:.0} ms after the hub was started{breakdown}",
            a.reconnect_edges,
            s.secs * 1000.0
        );
        out.push(at_setting(
            T,
            measured,
            a.reconnect_edges >= 100,
            met(s.secs <= 1.0),
            "fewer edges (--reconnect-edges 100)",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::{
        NATS_SYNC,
        fed::{SIGNED_PER_DOC, VERIFIED_PER_DOC},
        procstat::Usage,
    };

    fn args() -> BenchArgs {
        BenchArgs {
            scenarios: Vec::new(),
            docs: 5000,
            window: 64,
            body_bytes: 10240,
            runs: 3,
            rate: 1000.0,
            fanout: 60,
            queued: 100_000,
            idle_edges: 1000,
            reconnect_edges: 100,
            attachment_mib: 1024,
            no_peer: false,
            json: false,
            dir: None,
            latency_log: None,
            link: None,
        }
    }

    fn summary(scenario: &str, system: &str, docs_per_s: f64) -> Summary {
        Summary {
            scenario: scenario.into(),
            system: system.into(),
            fsync_lo_per_s: 4000.0,
            fsync_hi_per_s: 4000.0,
            runs: 3,
            docs_per_s,
            mb_per_s: docs_per_s * 0.01024,
            secs: 1.0,
            docs: docs_per_s,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            vs_nats_sync: None,
            vs_embedded_hub: None,
            pair_ratios: Vec::new(),
            extra: BTreeMap::new(),
            nodes: Vec::new(),
        }
    }

    /// truc's ratio against the peer, `v`, from `pairs` pairs that all read it.
    fn compared(s: &mut Summary, v: f64, pairs: usize) {
        s.vs_nats_sync = Some(v);
        s.pair_ratios = vec![v; pairs];
    }

    /// This machine's figures (its ECDSA timings of 2026-11-30).
    fn machine(cpus: usize) -> Machine {
        Machine {
            cpus,
            cpu_model: "AMD EPYC".into(),
            memory_gib: 23.5,
            kernel: "6.18".into(),
            data_dir: "/tmp".into(),
            data_fs: "ext2/3/4".into(),
            ecdsa_sign_us: 21.5,
            ecdsa_verify_us: 64.6,
        }
    }

    fn verdict<'a>(checks: &'a [TargetCheck], prefix: &str) -> &'a TargetCheck {
        checks
            .iter()
            .find(|c| c.target.starts_with(prefix))
            .unwrap_or_else(|| panic!("no target {prefix:?} in {checks:#?}"))
    }

    #[test]
    fn each_target_is_met_or_missed_by_what_the_run_measured() {
        let mut ehe = summary("edge-hub-edge", TRUC, 958.0);
        compared(&mut ehe, 958.0 / 1883.0, 3);
        ehe.extra.insert(SIGNED_PER_DOC.into(), 3.0);
        ehe.extra.insert(VERIFIED_PER_DOC.into(), 5.0);
        // 0.30 ms of the peer's CPU per message.
        let mut ehe_peer = summary("edge-hub-edge", NATS_SYNC, 1883.0);
        ehe_peer.nodes = vec![Usage {
            node: "nats-server".into(),
            cpu_s: 0.5649,
            rss_start_mib: 20.0,
            rss_peak_mib: 30.0,
        }];
        let mut steady = summary("steady", TRUC, 896.0);
        steady.p99_ms = Some(640.8);
        steady.secs = 5.6;
        steady.docs = 5000.0;
        steady.nodes = ["hub", "vpcp", "nghean"]
            .into_iter()
            .zip([3.0, 4.2, 2.2])
            .map(|(node, cpu_s)| Usage {
                node: node.into(),
                cpu_s,
                rss_start_mib: 30.0,
                rss_peak_mib: 40.0,
            })
            .collect();
        let mut queued_peer = summary("queued-drain", NATS_SYNC, 47516.0);
        queued_peer
            .extra
            .insert("queued_rss_growth_cold_mib".into(), 24.0);
        let mut steady_peer = summary("steady", NATS_SYNC, 1000.0);
        steady_peer.p99_ms = Some(24.2);
        let mut attachment = summary("attachment", TRUC, 0.0);
        attachment.nodes = vec![
            Usage {
                node: "hub".into(),
                cpu_s: 1.0,
                rss_start_mib: 30.0,
                rss_peak_mib: 43.0,
            },
            Usage {
                node: "nghean".into(),
                cpu_s: 1.0,
                rss_start_mib: 30.0,
                rss_peak_mib: 95.0,
            },
        ];
        let mut queued = summary("queued-drain", TRUC, 1874.0);
        queued.extra.insert("queued_rss_growth_mib".into(), 6.1);
        queued
            .extra
            .insert("queued_rss_growth_cold_mib".into(), 24.4);
        // The drain's own public-key work: the recipient checks each document
        // and signs its receipt, which the hub and the sender check.
        queued.extra.insert(SIGNED_PER_DOC.into(), 1.0);
        queued.extra.insert(VERIFIED_PER_DOC.into(), 3.0);
        let mut reconnect = summary("reconnect", TRUC, 100.0 / 0.496);
        reconnect.secs = 0.496;
        reconnect.extra.insert("hub_start_ms".into(), 310.0);
        reconnect.extra.insert("after_ready_ms".into(), 186.0);
        let all = vec![
            ehe_peer,
            ehe,
            steady,
            steady_peer,
            queued_peer,
            attachment,
            queued,
            summary("idle-edges", TRUC, 44.0),
            reconnect,
        ];
        let c = check_all(&all, &args(), &machine(2));
        // 3 × 0.30 ms + 3 × 21.5 µs + 5 × 64.6 µs = 1.29 ms: 1,553/s on 2 cores.
        let ratio = verdict(&c, "edge → hub → edge");
        assert_eq!(
            ratio.verdict,
            "missed, out of reach here: at nats-sync's own CPU per message for each of 3 durable copies, plus the signatures, at most 0.82×"
        );
        assert_eq!(
            ratio.measured,
            "0.51×, median of 3 pairs (958 vs 1883 docs/s)"
        );
        // 9.4 CPU-seconds for 5,000 documents over 5.6 s: 1.88 ms each, 1.7
        // cores busy.
        let p99 = verdict(&c, "p99");
        assert_eq!(
            p99.verdict,
            "missed: at the 1.88 ms of CPU per document the nodes spent, 1000/s needs 1.88 cores, of the 2 here (they kept 1.7 busy); nats-sync's p99 24.2 ms in the same run"
        );
        assert_eq!(p99.measured, "p99 640.8 ms, 896/s kept of 1000 offered");
        let att = verdict(&c, "1 GiB");
        assert_eq!(att.verdict, "missed", "nghean grew 65 MiB");
        assert_eq!(att.measured, "hub +13.0 MiB, nghean +65.0 MiB");
        // 6.1 MiB is 6.4 MB; 24.4 MiB is 25.6 MB.
        let q = verdict(&c, "100,000 queued");
        assert_eq!(
            q.verdict,
            "met on a warm hub, missed from cold; nats-sync +25.2 MB from cold in the same run"
        );
        assert_eq!(q.measured, "warm hub +6.4 MB, from cold +25.6 MB");
        // 21.5 + 3 × 64.6 µs a document: at most 9,289 docs/s on 2 cores, of
        // 10,245 bytes (19.2 MB/s over 1,874/s).
        let drain = verdict(&c, "the queue drained");
        assert_eq!(
            drain.verdict,
            "missed, out of reach here: 1.0 signatures made + 3.0 checked per document alone allow 9289 docs/s = 761 Mbit/s on 2 cores"
        );
        assert_eq!(
            drain.measured,
            "1874 docs/s of 10 KiB, 19.2 MB/s = 154 Mbit/s"
        );
        assert_eq!(verdict(&c, "1,000 idle").verdict, "met");
        let r = verdict(&c, "100 edges back");
        assert_eq!(r.verdict, "met");
        assert_eq!(
            r.measured,
            "100 back 496 ms after the hub was started (its ready line at 310 ms, the last edge 186 ms after it)"
        );
    }

    /// The restart counts from the hub's start command, not its ready line:
    /// edges back 400 ms after a ready line 700 ms into the start miss 1 s.
    #[test]
    fn reconnect_counts_from_the_hubs_start_not_its_ready_line() {
        let mut r = summary("reconnect", TRUC, 100.0 / 1.1);
        r.secs = 1.1;
        r.extra.insert("hub_start_ms".into(), 700.0);
        r.extra.insert("after_ready_ms".into(), 400.0);
        let c = check_all(&[r], &args(), &machine(2));
        let r = verdict(&c, "100 edges back");
        assert_eq!(r.verdict, "missed");
        assert_eq!(
            r.measured,
            "100 back 1100 ms after the hub was started (its ready line at 700 ms, the last edge 400 ms after it)"
        );
    }

    #[test]
    fn a_run_with_other_settings_or_no_peer_does_not_claim_a_target() {
        let mut a = args();
        a.rate = 300.0;
        a.queued = 10_000;
        let mut steady = summary("steady", TRUC, 300.0);
        steady.p99_ms = Some(8.0);
        let mut queued = summary("queued-drain", TRUC, 2000.0);
        queued.extra.insert("queued_rss_growth_mib".into(), 1.0);
        queued
            .extra
            .insert("queued_rss_growth_cold_mib".into(), 2.0);
        let all = vec![summary("edge-hub-edge", TRUC, 958.0), steady, queued];
        let c = check_all(&all, &a, &machine(2));
        assert_eq!(
            verdict(&c, "edge → hub → edge").verdict,
            "no peer in this run"
        );
        assert_eq!(verdict(&c, "p99").verdict, "another rate (--rate 1000)");
        assert_eq!(
            verdict(&c, "100,000 queued").verdict,
            "another count (--queued 100000)"
        );
        // No signatures counted: no bound to give.
        assert_eq!(
            verdict(&c, "the queue drained").verdict,
            "missed (below a gigabit link; loopback is faster)"
        );
        // Scenarios the run did not measure have no row.
        assert!(c.iter().all(|t| !t.target.contains("idle")), "{c:#?}");
    }

    /// The throughput target is set for 10 KB documents; the drain has no
    /// size of its own, so its figure names the one measured.
    #[test]
    fn the_ratio_is_claimed_at_10_kb_only_and_the_drain_names_its_size() {
        let mut a = args();
        a.body_bytes = 256 << 10;
        let mut ehe = summary("edge-hub-edge", TRUC, 600.0);
        compared(&mut ehe, 1.6, 3);
        let mut queued = summary("queued-drain", TRUC, 578.0);
        queued.mb_per_s = 151.6;
        let all = vec![summary("edge-hub-edge", NATS_SYNC, 375.0), ehe, queued];
        let c = check_all(&all, &a, &machine(2));
        let ratio = verdict(&c, "edge → hub → edge");
        assert_eq!(ratio.verdict, "another size (--body-bytes 10240)");
        assert_eq!(
            ratio.measured,
            "1.60×, median of 3 pairs (600 vs 375 docs/s), 256 KiB documents"
        );
        let drain = verdict(&c, "the queue drained");
        assert_eq!(drain.verdict, "met (a gigabit link's speed)");
        assert_eq!(
            drain.measured,
            "578 docs/s of 256 KiB, 151.6 MB/s = 1213 Mbit/s"
        );
        assert_eq!(size(10_000), "10000 bytes");
        assert_eq!(size(1 << 20), "1 MiB");
    }

    /// Over an emulated link the drain is judged by how busy it kept the
    /// link, not against a gigabit: fast on a slow line is met, a fast line
    /// left half idle is missed, whatever the rate in absolute terms.
    #[test]
    fn a_drain_over_a_link_is_judged_by_how_busy_it_kept_it() {
        let over = |link_mbit: f64, wire_mbit: f64, docs_per_s: f64| {
            let mut queued = summary("queued-drain", TRUC, docs_per_s);
            for (k, v) in [
                ("link_mbit", link_mbit),
                ("link_rtt_ms", 400.0),
                ("link_wire_mbit", wire_mbit),
                ("link_busy", wire_mbit / link_mbit),
            ] {
                queued.extra.insert(k.into(), v);
            }
            let c = check_all(&[queued], &args(), &machine(2));
            verdict(&c, "the queue drained").clone()
        };
        let slow_line = over(100.0, 95.0, 1065.0);
        assert_eq!(
            slow_line.verdict,
            "met: the link 95% busy, 95 of its 100 Mbit/s on the wire"
        );
        assert_eq!(
            slow_line.measured,
            "1065 docs/s of 10 KiB, 10.9 MB/s = 87 Mbit/s over 100 Mbit/s, 400 ms round trip"
        );
        // Twice the documents per second, on a line ten times as fast.
        let fast_line = over(1000.0, 178.0, 1991.0);
        assert_eq!(
            fast_line.verdict,
            "missed: the link 18% busy, 178 of its 1000 Mbit/s on the wire"
        );
    }

    /// A sending edge's backlog after an outage is judged the same way, on a
    /// row of its own that tells the wait for the link apart.
    #[test]
    fn a_senders_backlog_is_judged_on_its_own_row() {
        let mut outbox = summary("outbox-drain", TRUC, 1065.0);
        for (k, v) in [
            ("link_mbit", 100.0),
            ("link_rtt_ms", 40.0),
            ("link_wire_mbit", 97.0),
            ("link_busy", 0.97),
            ("first_arrival_s", 2.5),
        ] {
            outbox.extra.insert(k.into(), v);
        }
        let c = check_all(&[outbox], &args(), &machine(2));
        let row = verdict(&c, "the sender's backlog drained at link speed");
        assert_eq!(
            row.verdict,
            "met: the link 97% busy, 97 of its 100 Mbit/s on the wire"
        );
        assert_eq!(
            row.measured,
            "1065 docs/s of 10 KiB, 10.9 MB/s = 87 Mbit/s over 100 Mbit/s, 40 ms round trip, the first arrival 2.5 s after the outage ended"
        );
        assert!(!c.iter().any(|c| c.target.starts_with("the queue drained")));
    }

    /// A missed target gets its bound only where the bound rules it out.
    #[test]
    fn a_bound_is_named_only_where_it_rules_the_target_out() {
        let with = |docs_per_s: f64, vs: f64, peer_cpu_s: f64| {
            let mut ehe = summary("edge-hub-edge", TRUC, docs_per_s);
            compared(&mut ehe, vs, 3);
            ehe.extra.insert(SIGNED_PER_DOC.into(), 3.0);
            ehe.extra.insert(VERIFIED_PER_DOC.into(), 5.0);
            let mut peer = summary("edge-hub-edge", NATS_SYNC, docs_per_s / vs);
            peer.nodes = vec![Usage {
                node: "nats-server".into(),
                cpu_s: peer_cpu_s,
                rss_start_mib: 20.0,
                rss_peak_mib: 30.0,
            }];
            let c = check_all(&[peer, ehe], &args(), &machine(2));
            verdict(&c, "edge → hub → edge").verdict.clone()
        };
        assert_eq!(with(3000.0, 1.6, 0.2), "met");
        // A peer cheap enough per message that 1.5× stays within reach.
        assert_eq!(with(500.0, 0.5, 0.01), "missed");
        // A drain whose signatures would allow a gigabit at its size.
        let mut a = args();
        a.body_bytes = 256 << 10;
        let mut queued = summary("queued-drain", TRUC, 400.0);
        queued.mb_per_s = 104.9;
        queued.extra.insert(SIGNED_PER_DOC.into(), 1.0);
        queued.extra.insert(VERIFIED_PER_DOC.into(), 3.0);
        let c = check_all(&[queued], &a, &machine(2));
        assert_eq!(
            verdict(&c, "the queue drained").verdict,
            "missed (below a gigabit link; loopback is faster)"
        );
    }

    /// Open loop: a p99 within 10 ms at 1,000/s is met even if the run's
    /// rate, counted to the last arrival, reads a little under the offered one;
    /// on a machine other than the 2-core one each verdict says so.
    #[test]
    fn the_p99_decides_the_steady_target_and_other_machines_are_named() {
        let mut steady = summary("steady", TRUC, 985.0);
        steady.p99_ms = Some(8.0);
        let all = vec![steady];
        assert_eq!(
            verdict(&check_all(&all, &args(), &machine(2)), "p99").verdict,
            "met"
        );
        assert_eq!(
            verdict(&check_all(&all, &args(), &machine(8)), "p99").verdict,
            "met (on 8 cores, not 2)"
        );
        // The run of 2026-11-30 13:24: 10.4 CPU-seconds for 5,000 documents at
        // 778/s, 2.08 ms each: more than the 2 cores at 1,000/s.
        let slow = |cpu_s: f64, docs: f64| {
            let mut s = summary("steady", TRUC, 778.0);
            s.p99_ms = Some(1522.5);
            s.docs = docs;
            s.secs = docs / 778.0;
            s.nodes = vec![Usage {
                node: "hub".into(),
                cpu_s,
                rss_start_mib: 30.0,
                rss_peak_mib: 40.0,
            }];
            verdict(&check_all(&[s], &args(), &machine(2)), "p99")
                .verdict
                .clone()
        };
        assert_eq!(
            slow(10.4, 5000.0),
            "missed, out of reach here: at the 2.08 ms of CPU per document the nodes spent, 1000/s needs 2.08 cores, of the 2 here (they kept 1.6 busy)"
        );
        // Exactly every core is out of reach: no headroom is left.
        assert!(slow(10.0, 5000.0).starts_with("missed, out of reach here: at the 2.00 ms"));
        assert!(slow(9.9, 5000.0).starts_with("missed: at the 1.98 ms"));
        // A run that delivered nothing names no cost per document.
        assert_eq!(slow(10.4, 0.0), "missed");
    }

    /// A ratio from fewer than three pairs of runs is printed, but no target
    /// is met or missed by it.
    #[test]
    fn fewer_than_three_pairs_judge_no_target() {
        let with = |pairs: usize, vs: f64| {
            let mut ehe = summary("edge-hub-edge", TRUC, 900.0);
            compared(&mut ehe, vs, pairs);
            let peer = summary("edge-hub-edge", NATS_SYNC, 900.0 / vs);
            let c = check_all(&[peer, ehe], &args(), &machine(2));
            verdict(&c, "edge → hub → edge").clone()
        };
        let two = with(2, 1.8);
        assert_eq!(two.verdict, "not judged: fewer than 3 pairs");
        assert_eq!(two.measured, "1.80×, median of 2 pairs (900 vs 500 docs/s)");
        assert_eq!(with(1, 0.5).verdict, "not judged: fewer than 3 pairs");
        assert_eq!(with(3, 1.8).verdict, "met");
        assert_eq!(with(3, 0.5).verdict, "missed");
    }

    /// The hub's memory is judged at its peak during the queueing where the
    /// run sampled one; the reading once everything was queued is given too.
    #[test]
    fn the_queue_is_judged_at_the_hubs_peak() {
        let with = |warm: f64, warm_peak: f64, cold: f64, cold_peak: f64| {
            let mut q = summary("queued-drain", TRUC, 1800.0);
            for (k, v) in [
                ("queued_rss_growth_mib", warm),
                ("queued_rss_growth_peak_mib", warm_peak),
                ("queued_rss_growth_cold_mib", cold),
                ("queued_rss_growth_peak_cold_mib", cold_peak),
            ] {
                q.extra.insert(k.into(), v);
            }
            let mut peer = summary("queued-drain", NATS_SYNC, 45_000.0);
            peer.extra.insert("queued_rss_growth_cold_mib".into(), 24.0);
            peer.extra
                .insert("queued_rss_growth_peak_cold_mib".into(), 30.0);
            let c = check_all(&[peer, q], &args(), &machine(2));
            verdict(&c, "100,000 queued").clone()
        };
        // 6.1 MiB once queued, 12.0 at the peak: 6.4 and 12.6 MB.
        let q = with(6.1, 12.0, 24.4, 30.0);
        assert_eq!(
            q.measured,
            "warm hub +6.4 MB once queued (peak +12.6 MB), from cold +25.6 MB once queued (peak +31.5 MB)"
        );
        assert_eq!(
            q.verdict,
            "at the peak: missed; once all were queued: met on a warm hub, missed from cold; nats-sync +25.2 MB once queued (peak +31.5 MB) from cold in the same run"
        );
        assert_eq!(with(2.0, 3.0, 4.0, 5.0).verdict, "met");
        assert_eq!(
            with(2.0, 3.0, 4.0, 12.0).verdict,
            "at the peak: met on a warm hub, missed from cold; once all were queued: met; nats-sync +25.2 MB once queued (peak +31.5 MB) from cold in the same run"
        );
    }
}
