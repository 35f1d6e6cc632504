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
//! Runs on both ledger backends (`tests/support/ledger.rs`): on PostgreSQL the killed node's
//! open transaction dies with its connection and the restarted node shares the same schema.
//!
//! `GIFTD_CRASH_CYCLES` sets the number of cycles (default 5), `GIFTD_CRASH_SEED` replays a run;
//! the seed is printed.

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

async fn start(dir: &Path, ledger: &LedgerConfig, cycle: usize) -> Server {
    let config = dir.join("giftd.toml");
    if !config.exists() {
        let lots = "{ per_sec = 100000.0, burst = 100000 }";
        std::fs::write(
            &config,
            format!(
                "[server]\nshutdown_grace_ms = 1000\n\n\
                 [limits.connection]\ngifts = {lots}\nquestions = {lots}\ncommands = {lots}\n\n\
                 [limits.user]\ngifts = {lots}\nquestions = {lots}\ncommands = {lots}\n"
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
    let cycles: usize = std::env::var("GIFTD_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("GIFTD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "crash_loop: {cycles} cycles, seed {seed} (GIFTD_CRASH_SEED={seed} replays this run)"
    );
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

    let mut server = start(dir.path(), &ledger_config, 0).await;
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

        server = start(dir.path(), &ledger_config, cycle + 1).await;
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
