//! `giftd-floor`: the cheapest server this machine can run for giftd's fan-out job, so that
//! giftd's figures can be given as a ratio to it (issue 13, "know the floor first").
//!
//! It accepts the same viewer WebSockets as giftd, speaks the part of the protocol that
//! `giftd-load fanout` drives (see `connection.rs`), and turns each gift into one ready-made
//! frame that its shards write to every member's socket with the best batching found (see
//! `shard.rs`). It keeps no money, checks no token and has no ledger, ring, history, cluster or
//! metrics: everything giftd does beyond moving the frame is what the ratio measures.
//!
//! It takes a giftd config file (`giftd-floor serve --config FILE`) and reads only
//! `server.listen` and `server.admin_listen`, so `giftd-load --spawn-server target/release/giftd-floor`
//! starts it exactly as it starts giftd, and measures its CPU and memory the same way.
//! SIGTERM or Ctrl-C stops it.

mod connection;
mod frame;
mod http;
mod shard;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::connection::Floor;

#[derive(Parser)]
#[command(
    name = "giftd-floor",
    about = "The fan-out floor: the cheapest server for giftd-load fanout"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve viewers on `server.listen` and the admin routes on `server.admin_listen`.
    Serve {
        /// A giftd config file; only its `[server]` listen addresses are read.
        #[arg(long)]
        config: PathBuf,
        /// Writer shards (default: one per core).
        #[arg(long)]
        shards: Option<usize>,
    },
}

#[derive(Deserialize)]
struct Config {
    server: Listen,
}

#[derive(Deserialize)]
struct Listen {
    listen: SocketAddr,
    admin_listen: SocketAddr,
}

fn main() -> ExitCode {
    let Cmd::Serve { config, shards } = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("giftd-floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, shards)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("giftd-floor: {e:#}");
            ExitCode::from(64)
        }
    }
}

async fn serve(config: PathBuf, shards: Option<usize>) -> Result<()> {
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    let config: Config =
        toml::from_str(&text).with_context(|| format!("reading {}", config.display()))?;
    let shards =
        shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let viewers = TcpListener::bind(config.server.listen).await?;
    let admin = TcpListener::bind(config.server.admin_listen).await?;
    eprintln!(
        "giftd-floor: viewers on {}, admin on {}, {shards} shard(s)",
        viewers.local_addr()?,
        admin.local_addr()?
    );
    let floor = Arc::new(Floor::new(shards));
    tokio::spawn(async move {
        while let Ok((stream, _)) = admin.accept().await {
            tokio::spawn(http::admin(stream));
        }
    });
    let accept = async move {
        loop {
            match viewers.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection::serve(floor.clone(), stream));
                }
                // Out of descriptors, say: wait a moment rather than spin.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = accept => Ok(()),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
