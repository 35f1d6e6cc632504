//! The `giftd` binary: the server and its operator tools.
//!
//! `anyhow` lives only here, at the edge; the library speaks [`giftd::error::Error`]. Exit codes:
//! 0 success, 1 runtime failure or audit violations, 64 invalid configuration or usage.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use giftd::auth::{Authenticator, Role};
use giftd::config::Config;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// jemalloc, unless built without the `jemalloc` feature (`Cargo.toml` says why).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for a bad configuration, as in sysexits' EX_USAGE.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "giftd",
    version,
    about = "Live-streaming gift and tipping server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server. Without --config it runs on 127.0.0.1:8080 with ./giftd.db.
    Serve {
        /// TOML config file; GIFTD_<SECTION>__<FIELD> variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Mint a client token (HS256 JWT) signed with the configured secret.
    Token {
        #[arg(long)]
        user: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Confine the token to one room.
        #[arg(long)]
        room: Option<String>,
        /// Lifetime; defaults to auth.token_ttl_secs.
        #[arg(long)]
        ttl_secs: Option<u64>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print every problem.
    CheckConfig { file: PathBuf },
    /// Check a ledger's invariants (a SQLite file or a PostgreSQL ledger); exits 1 on any
    /// violation.
    Audit {
        /// The SQLite ledger file.
        #[arg(
            long,
            required_unless_present = "postgres",
            conflicts_with = "postgres"
        )]
        db: Option<PathBuf>,
        /// The PostgreSQL ledger, as in `ledger.postgres_url`.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// A line-oriented WebSocket client: sends each stdin line as a frame, prints every frame
    /// received. After stdin ends it keeps printing for --linger-ms, then closes.
    Client {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Sent as `Authorization: Bearer`; omit to authenticate with an `auth` message.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 1000)]
        linger_ms: u64,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "streamer" => Ok(Role::Streamer),
        "viewer" => Ok(Role::Viewer),
        _ => Err("role must be streamer or viewer".into()),
    }
}

fn load_config(file: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|e| {
        eprintln!("giftd: invalid configuration:\n{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { config } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            giftd::telemetry::init(config.log.format);
            report(serve(config))
        }
        Cmd::Token {
            user,
            role,
            room,
            ttl_secs,
            config,
        } => {
            let config = match load_config(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let ttl = ttl_secs.unwrap_or(config.auth.token_ttl_secs);
            match Authenticator::new(&config.auth).mint(&user, role, room.as_deref(), ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("giftd: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Cmd::CheckConfig { file } => match Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid\n{e}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::Audit { db, postgres } => audit(db.as_deref(), postgres.as_deref()),
        Cmd::Client {
            url,
            token,
            linger_ms,
        } => report(client(url, token, Duration::from_millis(linger_ms))),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("giftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = giftd::server::Listeners {
            public: bind(config.server.listen)
                .with_context(|| format!("binding {}", config.server.listen))?,
            admin: bind(config.server.admin_listen)
                .with_context(|| format!("binding {}", config.server.admin_listen))?,
        };
        giftd::server::run(listeners, config, giftd::shutdown::signal()).await?;
        Ok(())
    })
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(giftd::bounds::LISTEN_BACKLOG)
}

fn audit(db: Option<&std::path::Path>, postgres: Option<&str>) -> ExitCode {
    let result = match (db, postgres) {
        (Some(db), _) => giftd::ledger::audit::audit(db),
        (None, Some(url)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| giftd::error::Error::Internal(e.to_string()))
            .and_then(|rt| rt.block_on(giftd::ledger::audit::audit_postgres(url))),
        (None, None) => unreachable!("clap requires --db or --postgres"),
    };
    match result {
        Ok(report) => {
            println!(
                "transactions {}  gifts {}  top-ups {}  entries {}  topped up {} coins  gifted {} coins",
                report.txns, report.gifts, report.topups, report.entries, report.topped_up_coins, report.gifted_coins
            );
            if report.violations.is_empty() {
                println!("audit passed: money conserved, entries balanced, no key applied twice");
                ExitCode::SUCCESS
            } else {
                for v in &report.violations {
                    println!("VIOLATION {v}");
                }
                println!("audit FAILED: {} violation(s)", report.violations.len());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("giftd audit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client(url: String, token: Option<String>, linger: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut request = url.as_str().into_client_request()?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("connecting")?;
        let (mut sink, mut stream) = ws.split();
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdin_open = true;
        let linger_end = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(linger_end);
        loop {
            tokio::select! {
                line = lines.recv(), if stdin_open => match line {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => sink.send(Message::text(line)).await?,
                    None => {
                        stdin_open = false;
                        linger_end.as_mut().reset(tokio::time::Instant::now() + linger);
                    }
                },
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(t))) => println!("{t}"),
                    Some(Ok(Message::Close(frame))) => {
                        if let Some(f) = frame {
                            println!("closed: {} {}", u16::from(f.code), f.reason);
                        }
                        return Ok(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
                _ = &mut linger_end => {
                    sink.send(Message::Close(None)).await.ok();
                    return Ok(());
                }
            }
        }
    })
}
