//! `idle`: open N authenticated connections that then do nothing, and measure what they cost the
//! server (VmRSS before and while they are open, per connection) and how fast they open.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;

use super::Ctx;
use crate::cli::IdleArgs;
use crate::pool::Pool;
use crate::server::rss_bytes;
use crate::stats::{add_counts, Check, Counts, Hist};
use crate::Outcome;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Samples the server's RSS `n` times, `every` apart, and returns the median.
async fn rss_median(pid: Option<u32>, n: usize, every: Duration) -> Option<u64> {
    let pid = pid?;
    let mut samples = Vec::new();
    for _ in 0..n {
        samples.push(rss_bytes(pid).ok()?);
        tokio::time::sleep(every).await;
    }
    Some(median(samples))
}

pub(crate) async fn run(ctx: &mut Ctx, args: &IdleArgs) -> Result<Outcome> {
    let params = serde_json::json!({
        "connections": args.connections,
        "hold_secs": args.hold_secs,
        "conns_per_worker": ctx.common.conns_per_worker,
        "conns_per_source_ip": ctx.common.conns_per_source_ip,
        "connect_concurrency_per_worker": ctx.common.connect_concurrency,
    });
    let mut report = ctx.report("idle", params);
    if ctx.server_pid.is_none() {
        eprintln!("giftd-load: server pid unknown (pass --server-pid); RSS is not measured");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_median(ctx.server_pid, 3, Duration::from_millis(200)).await;

    let bar = ctx.bar(args.connections as u64, "connecting");
    let mut pool = Pool::spawn(ctx.worker_specs(args.connections, "idle", &[])).await?;
    let ready = pool
        .wait_ready(
            &bar,
            Duration::from_millis(ctx.common.connect_timeout_ms) * 4 + Duration::from_secs(120),
        )
        .await?;
    bar.finish();
    let connected: u64 = ready.iter().map(|r| r.connected).sum();
    let failed: u64 = ready.iter().map(|r| r.failed).sum();
    let start = ready.iter().map(|r| r.connect_start_us).min().unwrap_or(0);
    let end = ready.iter().map(|r| r.connect_end_us).max().unwrap_or(0);
    let connect_secs = end.saturating_sub(start) as f64 / 1e6;
    let mut connect_errors = Counts::new();
    for r in &ready {
        add_counts(&mut connect_errors, &r.connect_errors);
    }

    // Hold: sample RSS twice a second after a short settle.
    let bar = ctx.bar(args.hold_secs.max(1), "holding");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for i in 0..(args.hold_secs * 2).max(1) {
        if let Some(pid) = ctx.server_pid {
            if let Ok(rss) = rss_bytes(pid) {
                samples.push(rss);
            }
        }
        bar.set_position(i / 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish();
    let results = pool.finish(BTreeMap::new(), Duration::ZERO).await?;
    let closed_early: u64 = results.iter().map(|r| r.closed_early).sum();
    let mut close_codes = Counts::new();
    let mut connect = Hist::default();
    for r in &results {
        add_counts(&mut close_codes, &r.close_codes);
        connect.merge(&Hist::from_pairs(&r.connect_us));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_close = rss_median(ctx.server_pid, 3, Duration::from_millis(200)).await;

    report.metric("connections_requested", args.connections as f64);
    report.metric("connections_open", connected as f64);
    report.metric("connections_failed", failed as f64);
    report.metric("connections_closed_early", closed_early as f64);
    report.metric("worker_processes", results.len() as f64);
    report.metric("connect_secs", connect_secs);
    let per_sec = super::per_sec(connected as f64, connect_secs);
    report.metric("connections_per_sec", per_sec);
    report.latency("connect", &connect);
    report.checks.push(Check::at_least(
        "connections_open",
        connected as f64,
        args.connections as f64,
    ));
    if let (Some(before), false) = (rss_before, samples.is_empty()) {
        let open = median(samples);
        report.metric("server_rss_bytes_before", before as f64);
        report.metric("server_rss_bytes_open", open as f64);
        let per_conn = open.saturating_sub(before) as f64 / connected.max(1) as f64;
        report.metric("server_rss_bytes_per_conn", per_conn);
        if let Some(after) = rss_after_close {
            report.metric("server_rss_bytes_after_close", after as f64);
        }
        report.checks.push(Check::at_most(
            "server_rss_bytes_per_conn",
            per_conn,
            args.target_rss_bytes_per_conn,
        ));
    }
    if failed > 0 {
        report.problem(format!("{failed} connection(s) failed: {connect_errors:?}"));
    }
    if closed_early > 0 {
        report.problem(format!(
            "{closed_early} connection(s) closed while idle: {close_codes:?}"
        ));
    }
    Ok(Outcome {
        report,
        plots: vec![("connect (TCP + upgrade + welcome)".into(), connect)],
        title: format!(
            "giftd idle: {} connections, connect latency",
            args.connections
        ),
    })
}
