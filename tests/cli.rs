//! The operator commands, run as a user would: `check-config`, `token`, and configuration errors.

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
