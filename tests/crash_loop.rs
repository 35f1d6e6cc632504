//! Crash loop: the real `giftd` binary is killed with SIGKILL at random moments under gift load,
//! restarted on the same ledger file, and checked after every cycle.
//!
//! Each cycle: start `giftd serve` (fresh port, same database), open the room, let several viewer
//! connections pipeline gifts, kill the process at a random moment (`Child::kill` sends SIGKILL on
//! Unix), audit the file while the server is down, restart, then:
//!
//! 1. every receipt any client ever got names a gift that is in the ledger exactly once, with
//!    that sender, key and price (nothing acknowledged is lost);
//! 2. every gift that was sent but not acknowledged is resent with the same idempotency key: it is
//!    charged exactly once in total, whether or not it had committed before the kill (the
//!    balance moves by exactly the price of the gifts that had not), and a second resend moves
//!    nothing;
//! 3. each viewer's balance equals its top-ups minus the prices of its distinct committed keys;
//! 4. `giftd::ledger::audit::audit` reports no violation.
//!
//! A second test does the same to red packets (in parallel with the first, on its own server and
//! ledger). Each cycle, two senders drop a packet with a fresh key and five grabbers grab each
//! one, at once or after a random delay, while the kill comes at a random moment: before a drop,
//! between a drop and its grabs, or close to the packets' expiry. Two cycles in three run the
//! server with a short `red_packets.expiry_ms` (1–1.4 s, the config's minimum is 1 s; set with
//! `GIFTD_RED_PACKETS__EXPIRY_MS` on that start) and every server sweeps every 100 ms, so kills
//! land while packets are returned. After each restart:
//!
//! 1. every acknowledged drop is in the ledger exactly once under its key, and every
//!    acknowledged grab exactly once with its share; a grab refused as empty or expired was
//!    refused for a reason the ledger agrees with;
//! 2. every unacknowledged drop is resent with its key: `replayed` exactly when the packet had
//!    committed, one packet per key, and a second resend is a replay;
//! 3. every unacknowledged grab is retried: the same share with `replayed: true` if it had
//!    committed, otherwise a fresh share or a refusal the ledger agrees with;
//! 4. the restarted node's sweeper ends every packet whose time ran out (waited for, bounded);
//!    no user has two grabs of a packet, no packet more grabs than shares, and each ended
//!    packet with shares left was returned exactly once, to its sender, what nobody grabbed;
//! 5. each user's balance is its top-ups, less its drops, plus its grabs and returns, and the
//!    audit passes. At the end every short-lived packet has ended and `giftd audit` exits 0.
//!
//! Runs on both ledger backends (`tests/support/ledger.rs`): on PostgreSQL the killed node's
//! open transaction dies with its connection and the restarted node shares the same schema.
//!
//! `GIFTD_CRASH_CYCLES` sets the number of cycles of each test (default 5), `GIFTD_CRASH_SEED`
//! replays a run (both tests); the seed is printed.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use giftd::auth::{Authenticator, Role};
use giftd::config::{AuthConfig, LedgerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use support::ledger::{lit, LedgerDb};

const VIEWERS: usize = 4;
/// Gifts pipelined per connection at most.
const WINDOW: usize = 4;
/// Gifts one connection sends in one cycle at most (the kill normally comes long before).
const GIFTS_PER_CYCLE_MAX: usize = 5_000;
const STICKERS: [(&str, u64); 4] = [("rose", 1), ("heart", 5), ("clap", 10), ("coffee", 100)];
const TOPUP_COINS: u64 = 100_000_000;
const ADMIN: &str = giftd::config::DEV_ADMIN_TOKEN;

/// Kills the server if the test panics.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The admin listener: readiness, top-ups and wallets.
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Starts `giftd serve` on `ledger` with the test's config file, plus `env` (`GIFTD_*` settings
/// of this start only, such as the red packet expiry).
async fn start(dir: &Path, ledger: &LedgerConfig, cycle: usize, env: &[(&str, String)]) -> Server {
    let config = dir.join("giftd.toml");
    if !config.exists() {
        let lots = "{ per_sec = 100000.0, burst = 100000 }";
        std::fs::write(
            &config,
            format!(
                "[server]\nshutdown_grace_ms = 1000\n\n\
                 [limits.connection]\ngifts = {lots}\nquestions = {lots}\ncommands = {lots}\n\n\
                 [limits.user]\ngifts = {lots}\nquestions = {lots}\ncommands = {lots}\n\n\
                 [red_packets]\nsweep_interval_ms = {SWEEP_INTERVAL_MS}\n"
            ),
        )
        .unwrap();
    }
    // A fresh port per cycle; a port can be taken between here and the bind, so retry (bounded).
    for _attempt in 0..10 {
        let addr = free_port();
        let admin = free_port();
        let log = std::fs::File::create(dir.join(format!("giftd-{cycle}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_giftd"));
        // giftd reads every GIFTD_* variable as configuration and refuses unknown ones, so this
        // test's own GIFTD_CRASH_* settings must not reach it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GIFTD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .env("GIFTD_SERVER__LISTEN", addr.to_string())
            .env("GIFTD_SERVER__ADMIN_LISTEN", admin.to_string())
            .env("GIFTD_LEDGER__PATH", &ledger.path)
            .env(
                "GIFTD_LEDGER__BACKEND",
                format!("{:?}", ledger.backend).to_lowercase(),
            )
            .env("GIFTD_LEDGER__POSTGRES_URL", &ledger.postgres_url)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("giftd starts");
        let mut server = Server { child, addr, admin };
        if wait_ready(&mut server).await {
            return server;
        }
    }
    let log = std::fs::read_to_string(dir.join(format!("giftd-{cycle}.log"))).unwrap_or_default();
    panic!("giftd did not become ready in 10 attempts; last log:\n{log}");
}

/// Waits until PostgreSQL has ended the killed node's sessions. A COMMIT the node sent just
/// before it died still completes after the process is gone; until its session ends, the test
/// could read the ledger without that commit and then see it appear.
async fn sessions_of_the_dead_end(db: &LedgerDb) {
    if !matches!(db, LedgerDb::Postgres(..)) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others = db
            .ints(
                "SELECT COUNT(*) FROM pg_stat_activity
                  WHERE application_name = current_setting('application_name')
                    AND pid <> pg_backend_pid()",
            )
            .await;
        if others == [0] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the killed node's sessions did not end in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until 200, at most 30 s. False if the process exited.
async fn wait_ready(server: &mut Server) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.child.try_wait() {
            return false;
        }
        // The server may not listen yet, or may have died: a failed request is not an error.
        if let Ok((200, _)) = support::try_http(server.admin, "GET", "/readyz", None, None).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("giftd not ready within 30 s");
}

async fn balance(addr: SocketAddr, user: &str) -> u64 {
    let path = format!("/admin/wallets/{user}");
    let (status, body) = support::http(addr, "GET", &path, Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["balance_coins"]
        .as_u64()
        .unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, user: &str, role: Role) -> Ws {
    let token = Authenticator::new(&AuthConfig::default())
        .mint(user, role, None, 3600)
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let welcome = next_json(&mut ws).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    ws
}

/// The next text frame as JSON; None when the connection is gone.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")?;
        match frame {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Sends `cmd` and waits for its ack or error, skipping room events. None if the connection died.
async fn request(ws: &mut Ws, id: u64, mut cmd: Value) -> Option<Result<Value, Value>> {
    cmd["id"] = json!(id);
    ws.send(Message::text(cmd.to_string())).await.ok()?;
    loop {
        let v = next_json(ws).await?;
        if v["id"] == json!(id) && (v["type"] == "ack" || v["type"] == "error") {
            return Some(if v["type"] == "ack" {
                Ok(v["result"].clone())
            } else {
                Err(v)
            });
        }
    }
}

/// A gift a viewer sent: its key, sticker and price.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    sticker: &'static str,
    price: u64,
}

/// What one viewer connection achieved in one cycle.
struct Outcome {
    receipts: Vec<(Sent, Value)>,
    unacked: Vec<Sent>,
}

/// Pipelines gifts until the connection dies or the cycle's bound is reached.
async fn gift_load(addr: SocketAddr, user: String, first_key: usize, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Outcome {
        receipts: Vec::new(),
        unacked: Vec::new(),
    };
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(10), async {
        let token = Authenticator::new(&AuthConfig::default())
            .mint(&user, Role::Viewer, None, 3600)
            .unwrap();
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await
    })
    .await
    else {
        return out; // Killed before this viewer got in.
    };
    match request(&mut ws, 1, json!({ "type": "join", "room": "crash" })).await {
        Some(Ok(_)) => {}
        Some(Err(e)) => panic!("{user} could not join: {e}"),
        None => return out,
    }
    let mut in_flight: BTreeMap<u64, Sent> = BTreeMap::new();
    let mut next = 0usize;
    let mut id = 100u64;
    loop {
        while in_flight.len() < WINDOW && next < GIFTS_PER_CYCLE_MAX {
            let (sticker, price) = STICKERS[rng.random_range(0..STICKERS.len())];
            let sent = Sent {
                key: format!("{user}-{}", first_key + next),
                sticker,
                price,
            };
            next += 1;
            id += 1;
            let cmd = json!({ "type": "send_gift", "id": id, "sticker": sticker, "key": sent.key });
            // Recorded before the send: a frame that may have reached the server is unacked.
            in_flight.insert(id, sent);
            if ws.send(Message::text(cmd.to_string())).await.is_err() {
                out.unacked.extend(in_flight.into_values());
                return out;
            }
        }
        if in_flight.is_empty() {
            return out;
        }
        let Some(v) = next_json(&mut ws).await else {
            out.unacked.extend(in_flight.into_values());
            return out;
        };
        let Some(reply_id) = v["id"].as_u64() else {
            continue;
        };
        let Some(sent) = in_flight.remove(&reply_id) else {
            continue;
        };
        match v["type"].as_str() {
            Some("ack") => out.receipts.push((sent, v["result"].clone())),
            // The server may refuse new work as it goes down; that gift was not charged, but
            // it counts as unacknowledged and is resent like the others.
            Some("error")
                if matches!(
                    v["reason"].as_str(),
                    Some("shutting_down" | "ledger_unavailable")
                ) =>
            {
                out.unacked.push(sent)
            }
            _ => panic!("{user}: unexpected reply {v}"),
        }
    }
}

/// Rows in `gifts` with this id, and their (sender, key, price).
async fn gift_rows(db: &LedgerDb, gift_id: &str) -> Vec<(String, String, u64)> {
    db.rows(&format!(
        "SELECT g.sender, t.idem_key, g.price_coins FROM gifts g JOIN txns t ON t.txn_id = g.txn_id
         WHERE g.gift_id = {}",
        lit(gift_id)
    ))
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap()))
    .collect()
}

async fn gifts_with_key(db: &LedgerDb, sender: &str, key: &str) -> u64 {
    db.ints(&format!(
        "SELECT COUNT(*) FROM gifts g JOIN txns t ON t.txn_id = g.txn_id
         WHERE t.kind = 'gift' AND g.sender = {} AND t.idem_key = {}",
        lit(sender),
        lit(key)
    ))
    .await[0] as u64
}

async fn spent(db: &LedgerDb, sender: &str) -> u64 {
    db.ints(&format!(
        "SELECT COALESCE(SUM(price_coins), 0) FROM gifts WHERE sender = {}",
        lit(sender)
    ))
    .await[0] as u64
}

/// `GIFTD_CRASH_CYCLES` (default 5) and `GIFTD_CRASH_SEED` (random unless set), printed so a
/// run can be replayed.
fn crash_settings(test: &str) -> (usize, u64) {
    let cycles: usize = std::env::var("GIFTD_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("GIFTD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: {cycles} cycles, seed {seed} (GIFTD_CRASH_SEED={seed} replays this run)");
    (cycles, seed)
}

async fn audit_ok(db: &LedgerDb, when: &str) -> giftd::ledger::audit::AuditReport {
    let report = db.audit().await;
    assert!(
        report.violations.is_empty(),
        "audit {when}: {:#?}",
        report.violations
    );
    report
}

on_both_ledgers! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_gift_load_loses_no_receipt_and_charges_each_key_once() {
    let (cycles, seed) = crash_settings("crash_loop");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = giftd::config::Config::default();
    config.ledger.path = dir.path().join("giftd.db");
    let _schema = support::ledger::select(&mut config);
    let ledger_config = config.ledger.clone();
    let viewers: Vec<String> = (0..VIEWERS).map(|v| format!("viewer{v}")).collect();

    // Every receipt ever received, by gift id, and every key's sticker and price.
    let mut receipts: HashMap<String, (String, Sent)> = HashMap::new();
    let mut keys_used = [0usize; VIEWERS];
    let mut total_unacked = 0usize;
    let mut committed_before_ack = 0usize;
    let started = Instant::now();

    let mut server = start(dir.path(), &ledger_config, 0, &[]).await;
    let db = LedgerDb::open(&config).await;
    for user in &viewers {
        let body = json!({ "user": user, "channel": "web", "coins": TOPUP_COINS, "purchase_id": format!("p-{user}") });
        let (status, text) = support::http(
            server.admin,
            "POST",
            "/admin/topup",
            Some(ADMIN),
            Some(body.to_string()),
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }

    for cycle in 0..cycles {
        let mut star = connect(server.addr, "star", Role::Streamer).await;
        let opened = request(
            &mut star,
            1,
            json!({ "type": "open_room", "room": "crash", "title": "crash" }),
        )
        .await;
        assert!(matches!(opened, Some(Ok(_))), "{opened:?}");

        let loads: Vec<_> = viewers
            .iter()
            .enumerate()
            .map(|(i, user)| {
                tokio::spawn(gift_load(
                    server.addr,
                    user.clone(),
                    keys_used[i],
                    rng.random(),
                ))
            })
            .collect();
        // Kill at a random moment: sometimes at once, mostly while gifts are in flight.
        let delay = Duration::from_millis(rng.random_range(0..400));
        tokio::time::sleep(delay).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        sessions_of_the_dead_end(&db).await;
        drop(star);

        let mut unacked: Vec<(usize, Sent)> = Vec::new();
        let mut acked_now = 0;
        for (i, load) in loads.into_iter().enumerate() {
            let out = tokio::time::timeout(Duration::from_secs(60), load)
                .await
                .expect("a viewer notices the kill within 60 s")
                .unwrap();
            keys_used[i] += GIFTS_PER_CYCLE_MAX;
            acked_now += out.receipts.len();
            for (sent, r) in out.receipts {
                assert_eq!(r["price_coins"].as_u64(), Some(sent.price));
                let id = r["gift_id"].as_str().unwrap().to_owned();
                let prev = receipts.insert(id.clone(), (viewers[i].clone(), sent));
                assert!(prev.is_none(), "gift id {id} was issued for two receipts");
            }
            unacked.extend(out.unacked.into_iter().map(|s| (i, s)));
        }
        // The file as SIGKILL left it, before any restart.
        audit_ok(&db, &format!("after the kill of cycle {cycle}")).await;

        server = start(dir.path(), &ledger_config, cycle + 1, &[]).await;
        // 1. Nothing acknowledged was lost, and nothing is there twice.
        for (gift_id, (user, sent)) in &receipts {
            let rows = gift_rows(&db, gift_id).await;
            assert_eq!(
                rows,
                vec![(user.clone(), sent.key.clone(), sent.price)],
                "receipt {gift_id}"
            );
        }
        // 2. Resend every unacknowledged gift with its key: exactly one debit in total.
        let mut by_viewer: HashMap<usize, Vec<Sent>> = HashMap::new();
        for (i, s) in unacked {
            by_viewer.entry(i).or_default().push(s);
        }
        let mut star = connect(server.addr, "star", Role::Streamer).await;
        let reopened = request(
            &mut star,
            1,
            json!({ "type": "open_room", "room": "crash", "title": "crash" }),
        )
        .await;
        assert!(
            matches!(reopened, Some(Ok(_))),
            "rooms do not outlive a restart: {reopened:?}"
        );
        for (i, sents) in by_viewer {
            let user = &viewers[i];
            let mut ws = connect(server.addr, user, Role::Viewer).await;
            let joined = request(&mut ws, 1, json!({ "type": "join", "room": "crash" })).await;
            assert!(matches!(joined, Some(Ok(_))), "{joined:?}");
            let before = balance(server.admin, user).await;
            let mut expected_debit = 0;
            for (n, s) in sents.iter().enumerate() {
                let was_committed = gifts_with_key(&db, user, &s.key).await;
                assert!(was_committed <= 1);
                let cmd = json!({ "type": "send_gift", "sticker": s.sticker, "key": s.key });
                let n = n as u64;
                let r = request(&mut ws, 100 + n, cmd.clone())
                    .await
                    .expect("connection stays up")
                    .unwrap();
                assert_eq!(r["replayed"], was_committed == 1, "{user} {}: {r}", s.key);
                if was_committed == 0 {
                    expected_debit += s.price;
                } else {
                    committed_before_ack += 1;
                }
                // A second resend changes nothing.
                let again = request(&mut ws, 1_000_000 + n, cmd)
                    .await
                    .expect("connection stays up")
                    .unwrap();
                assert_eq!(again["replayed"], true);
                assert_eq!(again["gift_id"], r["gift_id"]);
                assert_eq!(
                    gifts_with_key(&db, user, &s.key).await,
                    1,
                    "{user} {} charged more than once",
                    s.key
                );
                let id = r["gift_id"].as_str().unwrap().to_owned();
                let prev = receipts.insert(id.clone(), (user.clone(), s.clone()));
                assert!(
                    prev.is_none(),
                    "gift id {id} was already acknowledged under another key"
                );
                total_unacked += 1;
            }
            let after = balance(server.admin, user).await;
            assert_eq!(
                before - after,
                expected_debit,
                "{user}: resends debited the wrong amount"
            );
        }
        let closed = request(&mut star, 2, json!({ "type": "close_room" })).await;
        assert!(matches!(closed, Some(Ok(_))), "{closed:?}");
        drop(star);
        // 3. Balances are top-ups minus distinct committed keys.
        for user in &viewers {
            assert_eq!(
                balance(server.admin, user).await,
                TOPUP_COINS - spent(&db, user).await,
                "{user}"
            );
        }
        // 4. The ledger is sound with the server running again.
        let report = audit_ok(&db, &format!("after cycle {cycle}")).await;
        assert_eq!(
            report.gifts as usize,
            receipts.len(),
            "gifts in the ledger that no client holds a receipt for"
        );
        eprintln!(
            "crash_loop: cycle {cycle}: killed after {} ms, {acked_now} receipts this cycle, {} total, {} gifts in ledger",
            delay.as_millis(),
            receipts.len(),
            report.gifts
        );
    }
    drop(server);
    // The operator tool agrees.
    let status = Command::new(env!("CARGO_BIN_EXE_giftd"))
        .arg("audit")
        .args(db.audit_args())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    eprintln!(
        "crash_loop: done: {cycles} cycles in {:.1} s, {} receipts checked, {total_unacked} unacknowledged gifts resent \
         ({committed_before_ack} had committed before the kill)",
        started.elapsed().as_secs_f64(),
        receipts.len()
    );
}
}

// ---------------------------------------------------------------------------------------------
// Red packets: SIGKILL between a drop and its grabs, and while packets expire.

/// Sweep period of every spawned server (the config's minimum), so an expiry is noticed soon.
const SWEEP_INTERVAL_MS: u64 = 100;
/// Short expiries (the config's minimum is 1 s), so that kills land while packets expire.
const SHORT_EXPIRY_MS: std::ops::RangeInclusive<u64> = 1_000..=1_400;
/// An expiry no packet reaches during the test.
const LONG_EXPIRY_MS: u64 = 120_000;
const DROPPERS: usize = 2;
const GRABBERS: usize = 5;
/// More shares than grabbers, so that many packets have coins left to return at expiry.
const PACKET_SHARES_MAX: u64 = 8;
const PACKET_ROOM: &str = "packets";

/// Wall-clock milliseconds, as the server stamps packets.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A connection with its welcome read; None if the server is gone (bounded by 10 s).
async fn try_connect(addr: SocketAddr, user: &str, role: Role) -> Option<Ws> {
    let token = Authenticator::new(&AuthConfig::default())
        .mint(user, role, None, 3600)
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .ok()?
    .ok()?;
    let welcome = next_json(&mut ws).await?;
    assert_eq!(welcome["type"], "welcome");
    Some(ws)
}

/// A member of the packet room, or None if the server is gone.
async fn member(addr: SocketAddr, user: &str) -> Option<Ws> {
    let mut ws = try_connect(addr, user, Role::Viewer).await?;
    match request(&mut ws, 1, json!({ "type": "join", "room": PACKET_ROOM })).await? {
        Ok(_) => Some(ws),
        Err(e) => panic!("{user} could not join: {e}"),
    }
}

/// The server refused new work as it went down: nothing was done, and a retry is due.
fn going_down(e: &Value) -> bool {
    matches!(
        e["reason"].as_str(),
        Some("shutting_down" | "ledger_unavailable")
    )
}

/// A drop as the client asked for it.
#[derive(Debug, Clone)]
struct DropAsk {
    sender: String,
    key: String,
    total_coins: u64,
    shares: u64,
}

impl DropAsk {
    fn command(&self) -> Value {
        json!({ "type": "drop_red_packet", "total_coins": self.total_coins, "shares": self.shares, "key": self.key })
    }
}

/// An acknowledged drop.
#[derive(Debug, Clone)]
struct Packet {
    ask: DropAsk,
    packet_id: String,
    expires_ms: u64,
}

fn packet_of(ask: &DropAsk, ack: &Value) -> Packet {
    assert_eq!(
        (ack["total_coins"].as_u64(), ack["shares"].as_u64()),
        (Some(ask.total_coins), Some(ask.shares)),
        "{ack}"
    );
    Packet {
        ask: ask.clone(),
        packet_id: ack["packet_id"].as_str().unwrap().to_owned(),
        expires_ms: ack["expires_ms"].as_u64().unwrap(),
    }
}

/// Drops one packet and tells the grabbers its id. Err: no ack (the packet may or may not exist).
async fn drop_one(
    addr: SocketAddr,
    ask: DropAsk,
    id_tx: tokio::sync::watch::Sender<Option<String>>,
) -> Result<Packet, DropAsk> {
    let Some(mut ws) = member(addr, &ask.sender).await else {
        return Err(ask);
    };
    match request(&mut ws, 2, ask.command()).await {
        Some(Ok(ack)) => {
            assert_eq!(ack["replayed"], false, "a fresh key: {ack}");
            let packet = packet_of(&ask, &ack);
            id_tx.send_replace(Some(packet.packet_id.clone()));
            Ok(packet)
        }
        Some(Err(e)) if going_down(&e) => Err(ask),
        Some(Err(e)) => panic!("{}: drop refused: {e}", ask.sender),
        None => Err(ask),
    }
}

/// What one grab attempt came to.
#[derive(Debug)]
enum GrabOutcome {
    /// The packet's drop was not acknowledged, or the grabber never got in: nothing was sent.
    NotSent,
    Acked {
        user: String,
        packet_id: String,
        ack: Value,
    },
    /// `red_packet_empty` or `red_packet_expired`, at `at_ms`.
    Refused {
        packet_id: String,
        reason: String,
        at_ms: u64,
    },
    /// Sent, and no answer (or refused as the server went down): retried after the restart.
    Unacked { user: String, packet_id: String },
}

/// Joins the room, waits for the packet's id, waits `delay`, grabs.
async fn grab_one(
    addr: SocketAddr,
    user: String,
    mut id_rx: tokio::sync::watch::Receiver<Option<String>>,
    delay: Duration,
) -> GrabOutcome {
    let Some(mut ws) = member(addr, &user).await else {
        return GrabOutcome::NotSent;
    };
    // The dropper drops the sender when it is done, acknowledged or not.
    let known = tokio::time::timeout(Duration::from_secs(30), id_rx.wait_for(|id| id.is_some()))
        .await
        .expect("the dropper finishes within 30 s");
    let Ok(packet_id) = known.map(|id| id.clone().unwrap()) else {
        return GrabOutcome::NotSent;
    };
    tokio::time::sleep(delay).await;
    let cmd = json!({ "type": "grab_red_packet", "packet_id": packet_id });
    match request(&mut ws, 2, cmd).await {
        Some(Ok(ack)) => GrabOutcome::Acked {
            user,
            packet_id,
            ack,
        },
        Some(Err(e)) if going_down(&e) => GrabOutcome::Unacked { user, packet_id },
        Some(Err(e)) => {
            let reason = e["reason"].as_str().unwrap_or_default().to_owned();
            assert!(
                reason == "red_packet_empty" || reason == "red_packet_expired",
                "{user}: grab refused: {e}"
            );
            GrabOutcome::Refused {
                packet_id,
                reason,
                at_ms: now_ms(),
            }
        }
        None => GrabOutcome::Unacked { user, packet_id },
    }
}

/// `(packet_id, total_coins, shares)` of every packet dropped under this sender and key.
async fn packets_with_key(db: &LedgerDb, sender: &str, key: &str) -> Vec<(String, u64, u64)> {
    db.rows(&format!(
        "SELECT p.packet_id, p.total_coins, p.shares FROM packets p JOIN txns t ON t.txn_id = p.txn_id
         WHERE t.kind = 'packet' AND t.actor = {} AND t.idem_key = {}",
        lit(sender),
        lit(key)
    ))
    .await
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap()))
    .collect()
}

/// `(share_index, coins)` of every grab of `packet_id` by `user`.
async fn grabs_of(db: &LedgerDb, packet_id: &str, user: &str) -> Vec<(u64, u64)> {
    db.rows(&format!(
        "SELECT share_index, coins FROM packet_grabs WHERE packet_id = {} AND grabber = {}",
        lit(packet_id),
        lit(user)
    ))
    .await
    .into_iter()
    .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
    .collect()
}

fn share_of(ack: &Value) -> (u64, u64) {
    (
        ack["share_index"].as_u64().unwrap(),
        ack["coins"].as_u64().unwrap(),
    )
}

/// A packet's state: grabbed shares, grabbed coins, returned coins, whether it ended, its grab
/// rows, its return transactions, and the coins those returns put in the sender's wallet.
async fn packet_state(db: &LedgerDb, p: &Packet) -> [i64; 7] {
    let id = lit(&p.packet_id);
    let wallets = lit(&format!("wallet:{}:%", p.ask.sender));
    let v = db
        .ints(&format!(
            "SELECT p.grabbed_shares, p.grabbed_coins, p.returned_coins,
                    CASE WHEN p.ended_ms IS NULL THEN 0 ELSE 1 END,
                    (SELECT COUNT(*) FROM packet_grabs g WHERE g.packet_id = p.packet_id),
                    (SELECT COUNT(*) FROM txns t WHERE t.kind = 'packet_return' AND t.idem_key = p.packet_id),
                    (SELECT COALESCE(SUM(e.amount_coins), 0) FROM entries e JOIN txns t ON t.txn_id = e.txn_id
                      WHERE t.kind = 'packet_return' AND t.idem_key = p.packet_id AND e.account LIKE {wallets})
             FROM packets p WHERE p.packet_id = {id}"
        ))
        .await;
    v.try_into().unwrap()
}

/// Every known packet: no more grabs than shares, and an ended packet was returned exactly
/// once if shares were left (to its sender's wallet, what nobody grabbed), never otherwise.
async fn check_packets(db: &LedgerDb, packets: &[Packet]) {
    for p in packets {
        let [grabbed, grabbed_coins, returned, ended, grab_rows, returns, back] =
            packet_state(db, p).await;
        let (total, shares) = (p.ask.total_coins as i64, p.ask.shares as i64);
        let what = format!("packet {} {p:?}", p.packet_id);
        assert!(
            grabbed <= shares && grab_rows == grabbed,
            "{what}: {grabbed} grabbed, {grab_rows} grab rows"
        );
        match (ended, grabbed == shares) {
            (0, _) => assert_eq!((returns, returned), (0, 0), "{what}: returned while open"),
            (_, true) => assert_eq!(
                (returns, returned),
                (0, 0),
                "{what}: all taken, yet returned"
            ),
            (_, false) => assert_eq!(
                (returns, returned, back),
                (1, total - grabbed_coins, total - grabbed_coins),
                "{what}: not returned exactly once"
            ),
        }
    }
    let doubles = db
        .ints(
            "SELECT COUNT(*) FROM (SELECT packet_id, grabber FROM packet_grabs
              GROUP BY packet_id, grabber HAVING COUNT(*) > 1) d",
        )
        .await;
    assert_eq!(doubles, [0], "a user grabbed one packet twice");
}

/// Waits (at most 10 s) until the sweeper has ended every packet whose time ran out.
async fn expired_packets_end(db: &LedgerDb) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = now_ms();
        let due = db
            .ints(&format!(
                "SELECT COUNT(*) FROM packets WHERE ended_ms IS NULL AND expires_ms <= {now}"
            ))
            .await;
        if due == [0] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{due:?} expired packets not returned 10 s after their time"
        );
        tokio::time::sleep(Duration::from_millis(SWEEP_INTERVAL_MS / 2)).await;
    }
}

/// Each user's balance (admin API) is its top-ups, less its drops, plus its grabs and returns.
async fn check_packet_balances(db: &LedgerDb, admin: SocketAddr, users: &[(String, u64)]) {
    for (user, topup) in users {
        let u = lit(user);
        let v = db
            .ints(&format!(
                "SELECT (SELECT COALESCE(SUM(total_coins - returned_coins), 0) FROM packets WHERE sender = {u}),
                        (SELECT COALESCE(SUM(coins), 0) FROM packet_grabs WHERE grabber = {u})"
            ))
            .await;
        let expected = *topup as i64 - v[0] + v[1];
        assert_eq!(balance(admin, user).await as i64, expected, "{user}");
    }
}

/// Opens the packet room as the streamer.
async fn open_packet_room(addr: SocketAddr) -> Ws {
    let mut star = connect(addr, "star", Role::Streamer).await;
    let cmd = json!({ "type": "open_room", "room": PACKET_ROOM, "title": "packets" });
    let opened = request(&mut star, 1, cmd).await;
    assert!(matches!(opened, Some(Ok(_))), "{opened:?}");
    star
}

/// The cycle's expiry: short (kills land while packets expire) two times in three.
fn pick_expiry_ms(rng: &mut StdRng) -> u64 {
    if rng.random_range(0..3) < 2 {
        rng.random_range(SHORT_EXPIRY_MS)
    } else {
        LONG_EXPIRY_MS
    }
}

async fn start_with_expiry(
    dir: &Path,
    ledger: &LedgerConfig,
    cycle: usize,
    expiry_ms: u64,
) -> Server {
    let env = [("GIFTD_RED_PACKETS__EXPIRY_MS", expiry_ms.to_string())];
    start(dir, ledger, cycle, &env).await
}

on_both_ledgers! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_drop_and_grab_and_during_expiry_moves_each_packet_once() {
    let (cycles, seed) = crash_settings("crash_loop (red packets)");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7265_6470_6163_6b74);
    let dir = tempfile::tempdir().unwrap();
    let mut config = giftd::config::Config::default();
    config.ledger.path = dir.path().join("giftd.db");
    let _schema = support::ledger::select(&mut config);
    let ledger_config = config.ledger.clone();
    let droppers: Vec<String> = (0..DROPPERS).map(|d| format!("dropper{d}")).collect();
    let grabbers: Vec<String> = (0..GRABBERS).map(|g| format!("grabber{g}")).collect();
    let users: Vec<(String, u64)> = droppers
        .iter()
        .map(|d| (d.clone(), TOPUP_COINS))
        .chain(grabbers.iter().map(|g| (g.clone(), 0)))
        .collect();
    let started = Instant::now();
    let (mut acked_grabs, mut retried_grabs, mut retried_drops, mut refused_grabs) = (0, 0, 0, 0);

    let mut expiry_ms = pick_expiry_ms(&mut rng);
    let mut server = start_with_expiry(dir.path(), &ledger_config, 0, expiry_ms).await;
    let db = LedgerDb::open(&config).await;
    for user in &droppers {
        let body = json!({ "user": user, "channel": "ios", "coins": TOPUP_COINS, "purchase_id": format!("p-{user}") });
        let (status, text) = support::http(
            server.admin,
            "POST",
            "/admin/topup",
            Some(ADMIN),
            Some(body.to_string()),
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
    // Every acknowledged packet, and every acknowledged grab: (packet, user) -> (share, coins).
    let mut packets: Vec<Packet> = Vec::new();
    let mut grabs: HashMap<(String, String), (u64, u64)> = HashMap::new();

    // The streamer keeps the room open across cycles; a restart loses it, so it is opened again.
    let mut star = open_packet_room(server.addr).await;
    for cycle in 0..cycles {
        // Kill at a random moment: before a drop, between a drop and its grabs, or, with a short
        // expiry, while the packets expire.
        let kill_ms = match (expiry_ms == LONG_EXPIRY_MS, rng.random()) {
            (true, _) => rng.random_range(0..300),
            (false, true) => rng.random_range(0..expiry_ms + 300),
            // Close to the packets' expiry, when the sweeper returns them.
            (false, false) => rng.random_range(expiry_ms - 100..expiry_ms + 300),
        };
        let mut drops = Vec::new();
        let mut grab_tasks = Vec::new();
        for (d, dropper) in droppers.iter().enumerate() {
            let shares = rng.random_range(1..=PACKET_SHARES_MAX);
            let ask = DropAsk {
                sender: dropper.clone(),
                key: format!("rp-{cycle}-{d}"),
                total_coins: rng.random_range(shares..=shares * 50),
                shares,
            };
            let (id_tx, id_rx) = tokio::sync::watch::channel(None);
            drops.push(tokio::spawn(drop_one(server.addr, ask, id_tx)));
            for grabber in &grabbers {
                // Half grab at once, half at any time until just after the kill.
                let delay_ms = if rng.random() {
                    rng.random_range(0..30)
                } else {
                    rng.random_range(0..kill_ms + 100)
                };
                grab_tasks.push(tokio::spawn(grab_one(
                    server.addr,
                    grabber.clone(),
                    id_rx.clone(),
                    Duration::from_millis(delay_ms),
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(kill_ms)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        sessions_of_the_dead_end(&db).await;
        drop(star);

        let mut unacked_drops = Vec::new();
        for d in drops {
            match tokio::time::timeout(Duration::from_secs(60), d)
                .await
                .expect("a dropper notices the kill")
                .unwrap()
            {
                Ok(p) => packets.push(p),
                Err(ask) => unacked_drops.push(ask),
            }
        }
        let mut unacked_grabs = Vec::new();
        let mut refusals = Vec::new();
        for g in grab_tasks {
            match tokio::time::timeout(Duration::from_secs(60), g)
                .await
                .expect("a grabber notices the kill")
                .unwrap()
            {
                GrabOutcome::NotSent => {}
                GrabOutcome::Acked {
                    user,
                    packet_id,
                    ack,
                } => {
                    assert_eq!(ack["replayed"], false, "{user}'s first grab: {ack}");
                    let prev = grabs.insert((packet_id, user), share_of(&ack));
                    assert!(
                        prev.is_none(),
                        "one user's grab of one packet acknowledged twice"
                    );
                    acked_grabs += 1;
                }
                GrabOutcome::Refused {
                    packet_id,
                    reason,
                    at_ms,
                } => refusals.push((packet_id, reason, at_ms)),
                GrabOutcome::Unacked { user, packet_id } => unacked_grabs.push((user, packet_id)),
            }
        }
        // The ledger as SIGKILL left it, before any restart.
        audit_ok(&db, &format!("after the kill of packet cycle {cycle}")).await;

        expiry_ms = pick_expiry_ms(&mut rng);
        server = start_with_expiry(dir.path(), &ledger_config, cycle + 1, expiry_ms).await;
        star = open_packet_room(server.addr).await;
        // 1. Every acknowledged drop is in the ledger once under its key; acknowledged grabs too.
        for p in &packets {
            let rows = packets_with_key(&db, &p.ask.sender, &p.ask.key).await;
            assert_eq!(
                rows,
                vec![(p.packet_id.clone(), p.ask.total_coins, p.ask.shares)],
                "{p:?}"
            );
        }
        for ((packet_id, user), share) in &grabs {
            assert_eq!(
                grabs_of(&db, packet_id, user).await,
                vec![*share],
                "{user}'s grab of {packet_id}"
            );
        }
        // A refused grab was refused for a reason the ledger agrees with.
        for (packet_id, reason, at_ms) in refusals {
            let p = packets
                .iter()
                .find(|p| p.packet_id == packet_id)
                .expect("a grab of a known packet");
            let [grabbed, ..] = packet_state(&db, p).await;
            match reason.as_str() {
                "red_packet_empty" => {
                    assert_eq!(grabbed as u64, p.ask.shares, "{p:?} was not empty")
                }
                _ => assert!(p.expires_ms <= at_ms, "{p:?} refused as expired at {at_ms}"),
            }
            refused_grabs += 1;
        }
        // 2. An unacknowledged drop, resent with its key, makes one packet and one debit.
        for ask in unacked_drops {
            let before = packets_with_key(&db, &ask.sender, &ask.key).await;
            assert!(before.len() <= 1, "{ask:?}: {before:?}");
            let mut ws = member(server.addr, &ask.sender)
                .await
                .expect("the restarted server");
            let ack = request(&mut ws, 2, ask.command())
                .await
                .expect("connection stays up")
                .unwrap();
            assert_eq!(ack["replayed"], before.len() == 1, "{ask:?}: {ack}");
            let p = packet_of(&ask, &ack);
            let again = request(&mut ws, 3, ask.command())
                .await
                .expect("connection stays up")
                .unwrap();
            assert_eq!(
                (again["replayed"].as_bool(), again["packet_id"].as_str()),
                (Some(true), Some(p.packet_id.as_str()))
            );
            assert_eq!(
                packets_with_key(&db, &ask.sender, &ask.key).await,
                vec![(p.packet_id.clone(), ask.total_coins, ask.shares)]
            );
            // One packet per key; `check_packet_balances` below shows each packet was debited once.
            packets.push(p);
            retried_drops += 1;
        }
        // 3. An unacknowledged grab, retried: the same share if it had committed, else a fresh
        // one (or a refusal the ledger agrees with).
        for (user, packet_id) in unacked_grabs {
            let before = grabs_of(&db, &packet_id, &user).await;
            assert!(before.len() <= 1, "{user} {packet_id}: {before:?}");
            let mut ws = member(server.addr, &user)
                .await
                .expect("the restarted server");
            let cmd = json!({ "type": "grab_red_packet", "packet_id": packet_id });
            let reply = request(&mut ws, 2, cmd).await.expect("connection stays up");
            let after = grabs_of(&db, &packet_id, &user).await;
            let p = packets
                .iter()
                .find(|p| p.packet_id == packet_id)
                .expect("a grab of a known packet");
            match reply {
                Ok(ack) => {
                    assert_eq!(
                        ack["replayed"],
                        before.len() == 1,
                        "{user} {packet_id}: {ack}"
                    );
                    if let [share] = before[..] {
                        assert_eq!(
                            share_of(&ack),
                            share,
                            "{user} {packet_id}: a replay is the committed share"
                        );
                    }
                    assert_eq!(after, vec![share_of(&ack)], "{user} {packet_id}");
                    grabs.insert((packet_id, user), share_of(&ack));
                }
                Err(e) => {
                    assert!(
                        before.is_empty(),
                        "{user} had grabbed {packet_id}, yet the retry got {e}"
                    );
                    assert!(
                        after.is_empty(),
                        "{user} {packet_id}: refused, yet recorded"
                    );
                    let [grabbed, ..] = packet_state(&db, p).await;
                    match e["reason"].as_str() {
                        Some("red_packet_empty") => assert_eq!(grabbed as u64, p.ask.shares, "{e}"),
                        Some("red_packet_expired") => assert!(p.expires_ms <= now_ms(), "{e}"),
                        _ => panic!("{user} {packet_id}: {e}"),
                    }
                }
            }
            retried_grabs += 1;
        }
        // 4. Packets whose time ran out are returned by the restarted node's sweeper, once.
        expired_packets_end(&db).await;
        check_packets(&db, &packets).await;
        check_packet_balances(&db, server.admin, &users).await;
        audit_ok(&db, &format!("after packet cycle {cycle}")).await;
        eprintln!(
            "crash_loop (red packets): cycle {cycle}: killed after {kill_ms} ms, {} packets, {} grabs",
            packets.len(),
            grabs.len()
        );
    }
    // Every packet with a short expiry ends, and what was left of it goes back exactly once.
    let last_expiry = packets
        .iter()
        .map(|p| p.expires_ms)
        .filter(|&e| e < now_ms() + LONG_EXPIRY_MS / 2)
        .max();
    if let Some(last) = last_expiry {
        let wait = last.saturating_sub(now_ms());
        assert!(wait <= *SHORT_EXPIRY_MS.end(), "{wait} ms");
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    expired_packets_end(&db).await;
    check_packets(&db, &packets).await;
    check_packet_balances(&db, server.admin, &users).await;
    audit_ok(&db, "at the end of the packet cycles").await;
    drop((star, server));
    let status = Command::new(env!("CARGO_BIN_EXE_giftd"))
        .arg("audit")
        .args(db.audit_args())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let returns = db
        .ints("SELECT COUNT(*) FROM txns WHERE kind = 'packet_return'")
        .await[0];
    eprintln!(
        "crash_loop (red packets): done: {cycles} cycles in {:.1} s, {} packets ({retried_drops} drops resent), \
         {acked_grabs} grabs acknowledged, {retried_grabs} retried, {refused_grabs} refused, {returns} returned at expiry",
        started.elapsed().as_secs_f64(),
        packets.len()
    );
}
}
