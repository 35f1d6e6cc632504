//! `giftd-load`: the load generator for giftd, over real WebSocket connections.
//!
//! Scenarios (`idle`, `fanout`, `gifts`, `mixed`) are bounded in time and count and stop by
//! themselves. Targets must be loopback. Passive connections are spread over worker processes
//! (this binary re-executed as the hidden `worker` subcommand) and over 127.0.0.x source
//! addresses, so a run can exceed one process's open-file limit and one address's ports.
//!
//! Exit status: 0 clean; 1 an integrity failure (loss, gap, failed command, audit) or an error;
//! 2 a benchmark target missed with `--enforce-targets`; 64 bad usage (such as a non-loopback
//! target).

mod actors;
mod cli;
mod cluster;
mod net;
mod plot;
mod pool;
mod scenario;
mod server;
mod stats;
mod tokens;
mod wire;
mod worker;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Cmd, Common};
use crate::scenario::Ctx;
use crate::stats::{Hist, Report};

/// What a scenario hands back: its report and the histograms to plot.
pub(crate) struct Outcome {
    pub(crate) report: Report,
    pub(crate) plots: Vec<(String, Hist)>,
    pub(crate) title: String,
}

const EXIT_INTEGRITY: u8 = 1;
const EXIT_TARGET_MISSED: u8 = 2;
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.command {
        return match worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("giftd-load worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("giftd-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("giftd-load: {e:#}");
            if format!("{e:#}").contains("refusing target") {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn common_of(cmd: &Cmd) -> (&Common, usize) {
    match cmd {
        Cmd::Idle(a) => (&a.common, a.connections),
        Cmd::Fanout(a) => (&a.common, a.viewers + a.rooms * (a.senders_per_room + 1)),
        Cmd::Gifts(a) => (&a.common, a.rooms * (a.senders_per_room + 1)),
        Cmd::Mixed(a) => (&a.common, a.viewers + a.rooms * (a.senders_per_room + 1)),
        Cmd::Worker => unreachable!("handled in main"),
    }
}

/// Runs the scenario until it ends or SIGINT/SIGTERM arrives. On a signal the run's future is
/// dropped, and with it the spawned servers (stopped, their temp directories, schema and NATS
/// namespace removed) and the worker processes.
async fn run(cmd: Cmd) -> Result<ExitCode> {
    tokio::select! {
        r = run_to_end(cmd) => r,
        signal = interrupted() => anyhow::bail!("interrupted by {signal}"),
    }
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without handlers the default action (exit) applies; never resolve.
        _ => std::future::pending().await,
    }
}

async fn run_to_end(cmd: Cmd) -> Result<ExitCode> {
    let (common, connections) = common_of(&cmd);
    let mut ctx = Ctx::new(common.clone(), connections).await?;
    let outcome = match &cmd {
        Cmd::Idle(a) => scenario::idle::run(&mut ctx, a).await,
        Cmd::Fanout(a) => scenario::fanout::run(&mut ctx, a).await,
        Cmd::Gifts(a) => scenario::gifts::run(&mut ctx, a).await,
        Cmd::Mixed(a) => scenario::mixed::run(&mut ctx, a).await,
        Cmd::Worker => unreachable!("handled in main"),
    };
    if outcome.is_err() || ctx.common.keep_server_dir {
        for s in ctx.spawned_nodes() {
            eprintln!("giftd-load: spawned server files in {}", s.dir.display());
        }
    }
    let outcome = outcome?;
    ctx.stop_server();
    emit(&ctx, &outcome)
}

fn emit(ctx: &Ctx, outcome: &Outcome) -> Result<ExitCode> {
    let report = &outcome.report;
    print!("{}", report.table());
    if let Some(path) = &ctx.common.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("  report: {}", path.display());
    }
    if let Some(path) = &ctx.common.svg {
        let series: Vec<(&str, &Hist)> =
            outcome.plots.iter().map(|(l, h)| (l.as_str(), h)).collect();
        plot::latency_svg(path, &outcome.title, &series)?;
        println!("  plot: {}", path.display());
    }
    if !report.problems.is_empty() {
        return Ok(ExitCode::from(EXIT_INTEGRITY));
    }
    if ctx.common.enforce_targets && report.checks.iter().any(|c| !c.pass) {
        return Ok(ExitCode::from(EXIT_TARGET_MISSED));
    }
    Ok(ExitCode::SUCCESS)
}
