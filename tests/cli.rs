//! The operator commands, run as a user would: `check-config`, `token`, `audit`, and
//! configuration errors.

mod support;

use std::process::Command;

fn giftd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_giftd"))
}

#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"0.0.0.0:80\"\nmessage_bytes_max = 1\n[split]\nstreamer_share_bps_default = 20000\n").unwrap();
    let out = giftd().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "message_bytes_max",
        "jwt_secret",
        "admin_token",
        "streamer_share_bps_default",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/giftd.example.toml");
    let out = giftd().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_refuses_an_invalid_config() {
    let out = giftd()
        .arg("serve")
        .env("GIFTD_SERVER__CONNECTIONS_MAX", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connections_max"));
}

#[test]
fn minted_tokens_verify_with_the_same_config() {
    let out = giftd()
        .args([
            "token", "--user", "alice", "--role", "viewer", "--room", "r1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let auth = giftd::auth::Authenticator::new(&giftd::config::Config::default().auth);
    let id = auth.verify(token.trim()).unwrap();
    assert_eq!(
        (id.user.as_str(), id.role, id.room.as_deref()),
        ("alice", giftd::auth::Role::Viewer, Some("r1"))
    );

    let out = giftd()
        .args(["token", "--user", "bad user!", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn unrelated_giftd_variables_are_not_configuration() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/giftd.example.toml");
    let out = giftd()
        .args(["check-config", example])
        .env("GIFTD_CRASH_CYCLES", "5")
        .env("GIFTD_SERVER__SHUTDOWN_GRACE_MS", "2000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = giftd()
        .args(["check-config", example])
        .env("GIFTD_SERVER__NO_SUCH_FIELD", "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "a misspelt section variable is still an error"
    );
}

#[test]
fn logs_to_a_pipe_are_plain_text() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = giftd()
        .arg("serve")
        .env("GIFTD_SERVER__LISTEN", "127.0.0.1:0")
        .env("GIFTD_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("GIFTD_LEDGER__PATH", dir.path().join("giftd.db"))
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.contains("giftd serving"), "{first}");
    assert!(
        !first.contains('\u{1b}'),
        "escape codes in a log that is not a terminal: {first:?}"
    );
}

#[test]
fn check_config_checks_the_ledger_backend() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[ledger]\nbackend = \"postgres\"\npostgres_url = \"postgres://db:port/x\"\ncall_timeout_ms = 1\n",
    )
    .unwrap();
    let out = giftd().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ledger.postgres_url"), "{err}");
    assert!(err.contains("ledger.call_timeout_ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_checks_a_postgres_ledger_and_finds_a_forged_balance() {
    use giftd::gift::{Channel, StoreFees};
    use giftd::ledger::{GiftPurpose, GiftRequest, Ledger, SplitPolicy, TopUpRequest};

    let schema = support::ledger::PgSchema::create();
    let ledger = schema.ledger(16).await;
    let top_up = TopUpRequest {
        user: "v".into(),
        channel: Channel::Ios,
        coins: 100,
        purchase_id: "p".into(),
    };
    ledger.top_up(top_up).await.unwrap();
    let gift = GiftRequest {
        sender: "v".into(),
        streamer: "star".into(),
        room: "r".into(),
        sticker: "s".into(),
        price_coins: 60,
        idempotency_key: "k".into(),
        purpose: GiftPurpose::Sticker,
        policy: SplitPolicy {
            store_fees: StoreFees {
                ios: 3000,
                android: 3000,
                web: 0,
            },
            streamer_share_bps: 5000,
            spend_order: vec![Channel::Web, Channel::Android, Channel::Ios],
        },
        caps: giftd::ledger::CapPolicy {
            window_ms: 86_400_000,
            window_coins_max: 1_000_000,
            minor_window_coins_max: 0,
        },
    };
    ledger.gift(gift).await.unwrap();
    ledger.close().await;

    let audit = || {
        giftd()
            .args(["audit", "--postgres", &schema.url])
            .output()
            .unwrap()
    };
    let out = audit();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gifts 1  top-ups 1"), "{text}");

    let client = giftd::ledger::postgres::connect(&schema.url).await.unwrap();
    client
        .batch_execute(
            "UPDATE account_rows SET balance_coins = balance_coins + 5 WHERE account = 'platform'",
        )
        .await
        .unwrap();
    let out = audit();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("money not conserved"), "{text}");
    assert!(
        text.contains("account balance differs from its entries"),
        "{text}"
    );
}
