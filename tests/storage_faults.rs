//! Storage faults: with the ledger's file read-only, its disk full or its commits failing, giftd
//! refuses money movements with a clear error, sends no receipt without a commit, reports unready,
//! and recovers by itself when storage does.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use giftd::ledger::sqlite::StorageFault;
use serde_json::json;
use support::TestServer;

async fn assert_ready(server: &TestServer, ready: bool) {
    let (status, body) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, if ready { 200 } else { 503 }, "{body}");
    assert!(body.contains(&format!(r#""ledger":{ready}"#)), "{body}");
}

/// Turns storage bad and good again.
trait Fault {
    async fn break_storage(&mut self);
    async fn mend_storage(&mut self);
}

/// A fault switched on the ledger's writer.
struct Injected(
    std::sync::Arc<giftd::ledger::sqlite::SqliteLedger>,
    StorageFault,
);

impl Fault for Injected {
    async fn break_storage(&mut self) {
        self.0.inject_fault(Some(self.1)).await;
    }
    async fn mend_storage(&mut self) {
        self.0.inject_fault(None).await;
    }
}

/// A real full disk: the ledger lives on a small tmpfs that a filler file fills up.
struct FullDisk {
    mount: PathBuf,
}

impl FullDisk {
    fn mount() -> FullDisk {
        let mount = tempfile::tempdir().unwrap().keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&mount)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the full-disk test mounts a small tmpfs and needs root (CI runs as root)"
        );
        FullDisk { mount }
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }
}

impl Fault for FullDisk {
    async fn break_storage(&mut self) {
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    async fn mend_storage(&mut self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

async fn run_fault(server: TestServer, fault: &mut impl Fault) {
    server.top_up("bob", "web", 100, "w1").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    bob.send_gift("clap", "before").await.unwrap();
    assert_ready(&server, true).await;

    fault.break_storage().await;
    // Gifts are refused with a clear code; no receipt, no gift event, no debit.
    for i in 0..3 {
        let e = bob
            .send_gift("clap", &format!("during-{i}"))
            .await
            .unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(19002), Some("ledger_unavailable"))
        );
    }
    let (status, body) = server
        .http(
            "POST",
            "/admin/topup",
            Some(support::ADMIN_TOKEN),
            Some(&json!({ "user": "bob", "channel": "web", "coins": 5, "purchase_id": "w2" })),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    // Readiness never says ready while gifts fail: its own probe write is tiny and may still fit
    // where a gift does not (on a nearly full disk it did, after 30 refused gifts).
    for i in 0..30 {
        assert_ready(&server, false).await;
        let e = bob
            .send_gift("clap", &format!("during-more-{i}"))
            .await
            .unwrap_err();
        assert_eq!(e["reason"], "ledger_unavailable");
    }
    assert_ready(&server, false).await;
    star.ok(json!({ "type": "ping" })).await;
    let gifts: Vec<_> = star
        .backlog()
        .iter()
        .filter(|v| v["kind"] == "gift")
        .collect();
    assert_eq!(
        gifts.len(),
        1,
        "only the gift from before the fault was published: {gifts:?}"
    );

    fault.mend_storage().await;
    assert_ready(&server, true).await;
    // The refused keys were not consumed: a retry now goes through, once.
    let r = bob.send_gift("clap", "during-0").await.unwrap();
    assert_eq!(r["replayed"], false);
    assert_eq!(r["balance_coins"], 80);
    assert_eq!(server.balance("bob").await, 80);

    drop((star, bob));
    let mut server = server;
    server.shutdown().await;
    let report = giftd::ledger::audit::audit(&server.db()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.gifts, 2);
}

#[tokio::test]
async fn read_only_storage_refuses_gifts_and_recovers() {
    let (server, ledger) = TestServer::start_with_ledger(|_| {}).await;
    run_fault(server, &mut Injected(ledger, StorageFault::ReadOnly)).await;
}

#[tokio::test]
async fn a_failed_commit_acknowledges_nothing_in_its_batch_and_recovers() {
    let (server, ledger) = TestServer::start_with_ledger(|_| {}).await;
    run_fault(server, &mut Injected(ledger, StorageFault::CommitFails)).await;
}

#[tokio::test]
async fn full_disk_refuses_gifts_and_recovers() {
    let mut disk = FullDisk::mount();
    let db = disk.mount.join("giftd.db");
    let server = TestServer::start_with(|c| {
        c.ledger.path = db;
        // The 4 MiB disk must keep 1 MiB free to be ready.
        c.ledger.disk_reserve_bytes = 1 << 20;
    })
    .await;
    run_fault(server, &mut disk).await;
}
