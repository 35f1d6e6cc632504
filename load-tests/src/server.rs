//! The giftd process under test: spawning one (`--spawn-server`), finding the pid of one already
//! running (from its listening port), reading its resident memory, stopping it, and auditing its
//! ledger afterwards.
//!
//! A spawned server gets a generated config in a fresh temp directory: a free loopback port
//! (found by binding 127.0.0.1:0 and releasing it), its own ledger file, and rate limits raised so
//! that the generator, not the per-user token buckets, sets the pace. `--server-env` adds
//! `GIFTD_...` overrides on top.

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A giftd child process started by the generator.
pub(crate) struct Spawned {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    /// The admin listener: health, metrics and top-ups.
    pub(crate) admin: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) db: PathBuf,
    pub(crate) bin: PathBuf,
    keep_dir: bool,
}

/// What the generated config must accommodate.
pub(crate) struct SpawnOptions<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) connections_max: usize,
    pub(crate) env: &'a [String],
    pub(crate) keep_dir: bool,
    pub(crate) run_id: &'a str,
    /// Set for a node of a cluster: its shared ledger and NATS settings.
    pub(crate) node: Option<&'a NodeOptions>,
}

/// What makes a spawned server a node of a cluster.
pub(crate) struct NodeOptions {
    pub(crate) node_id: String,
    pub(crate) postgres_url: String,
    pub(crate) nats_url: String,
    pub(crate) namespace: String,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn config_text(
    addr: SocketAddr,
    admin: SocketAddr,
    db: &Path,
    connections_max: usize,
    node: Option<&NodeOptions>,
) -> String {
    // Generous limits: the generator controls the rates. 1e9 tokens per second is "unlimited".
    let unlimited = "{ per_sec = 1000000000.0, burst = 1000000000 }";
    // URLs, ids and the namespace are plain ASCII without quotes, so `{:?}` is a TOML string.
    let (ledger, cluster) = match node {
        Some(n) => (
            format!(
                "backend = \"postgres\"\npostgres_url = {:?}\n",
                n.postgres_url
            ),
            format!(
                "\n[cluster]\nnats_url = {:?}\nnode_id = {:?}\nnamespace = {:?}\n",
                n.nats_url, n.node_id, n.namespace
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"[server]
listen = "{addr}"
admin_listen = "{admin}"
connections_max = {connections_max}
shutdown_grace_ms = 5000
handshake_timeout_ms = 30000

[ledger]
{ledger}path = "{db}"

[limits.connection]
gifts = {unlimited}
questions = {unlimited}
commands = {unlimited}

[limits.user]
gifts = {unlimited}
questions = {unlimited}
commands = {unlimited}
{cluster}"#,
        db = db.display()
    )
}

impl Spawned {
    pub(crate) async fn start(opts: SpawnOptions<'_>) -> Result<Spawned> {
        let bin = fs::canonicalize(opts.bin)
            .with_context(|| format!("giftd binary {}", opts.bin.display()))?;
        let dir = match opts.node {
            Some(n) => {
                std::env::temp_dir().join(format!("giftd-load-{}-{}", opts.run_id, n.node_id))
            }
            None => std::env::temp_dir().join(format!("giftd-load-{}", opts.run_id)),
        };
        fs::create_dir_all(&dir)?;
        let db = dir.join("giftd.db");
        let port = free_port()?;
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.join("giftd.toml");
        fs::write(
            &config,
            config_text(addr, admin, &db, opts.connections_max, opts.node),
        )?;
        let log = fs::File::create(dir.join("giftd.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("GIFTD_LOAD_SERVER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for kv in opts.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--server-env {kv}: expected NAME=VALUE"))?;
            if !k.starts_with("GIFTD_") {
                bail!("--server-env {kv}: only GIFTD_ variables are passed");
            }
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut spawned = Spawned {
            pid: child.id(),
            child,
            addr,
            admin,
            dir,
            db,
            bin,
            keep_dir: opts.keep_dir,
        };
        // A node of a cluster is ready once it reaches NATS and PostgreSQL, not merely alive.
        let path = if opts.node.is_some() {
            "/readyz"
        } else {
            "/healthz"
        };
        // Short waits, so that a server that exits at once (a bad setting) fails the run at once.
        let deadline = Instant::now() + Duration::from_secs(20);
        let failure = loop {
            let step = Duration::from_millis(500);
            match crate::net::wait_healthy(admin, path, step).await {
                Ok(()) => return Ok(spawned),
                Err(e) if Instant::now() >= deadline => break e.to_string(),
                Err(_) => {}
            }
            if let Ok(Some(status)) = spawned.child.try_wait() {
                break format!("giftd exited at start ({status})");
            }
        };
        let log = fs::read_to_string(spawned.dir.join("giftd.log")).unwrap_or_default();
        spawned.stop(Duration::from_secs(1));
        bail!("{failure}\n--- giftd log ---\n{log}");
    }

    /// Sends SIGTERM without waiting, so that several nodes drain at once.
    pub(crate) fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
        }
    }

    /// SIGTERM, then up to `grace` for a clean drain (the ledger commits what is queued), then
    /// SIGKILL. Returns whether it exited by itself.
    pub(crate) fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Resident set size of `pid`, in bytes (VmRSS of /proc/<pid>/status).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("bad VmRSS line")?;
    Ok(kib * 1024)
}

/// CPU time `pid` has used so far (user + system), in seconds, from /proc/<pid>/stat.
pub(crate) fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' do not.
    let rest = stat.rsplit_once(')').context("bad stat line")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("bad stat line")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS_PER_SEC)
}

/// USER_HZ: 100 on every Linux architecture giftd-load runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// The pid of the process listening on `port`, from /proc/net/tcp{,6} and /proc/*/fd.
pub(crate) fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue;
            }
            let local_port = cols[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if inodes.contains(link.to_string_lossy().as_ref()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The pid of the process named `name` (its `/proc/<pid>/comm`) when exactly one runs: the NATS
/// server of a cluster run (`nats-server`), whose CPU the report includes. Several matches are
/// ambiguous and give `None` (pass the pid instead).
pub(crate) fn pid_by_name(name: &str) -> Option<u32> {
    match pids_by_name(name)[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// Every pid whose `/proc/<pid>/comm` is `name`.
fn pids_by_name(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == name).then_some(pid)
        })
        .collect()
}

/// Runs `giftd audit --db` and checks every receipted gift id is in the ledger's `gifts` table.
/// Returns the problems found (empty when clean) and the number of gifts in the ledger.
pub(crate) fn audit(bin: &Path, db: &Path, receipted: &[String]) -> Result<(Vec<String>, u64)> {
    let mut problems = Vec::new();
    let out = Command::new(bin)
        .arg("audit")
        .arg("--db")
        .arg(db)
        .output()
        .with_context(|| format!("running {} audit", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        problems.push(format!(
            "giftd audit failed ({}): {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", db.display()))?;
    let mut stmt = conn.prepare("SELECT gift_id FROM gifts")?;
    let in_ledger: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    let missing: Vec<&String> = receipted
        .iter()
        .filter(|g| !in_ledger.contains(*g))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} receipted gift(s) missing from the ledger, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    Ok((problems, in_ledger.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid() {
        let text = config_text(
            "127.0.0.1:9999".parse().unwrap(),
            "127.0.0.1:9998".parse().unwrap(),
            Path::new("/tmp/x.db"),
            19_500,
            None,
        );
        giftd::config::Config::from_toml(&text).unwrap();
    }

    #[test]
    fn generated_node_config_is_valid() {
        let node = NodeOptions {
            node_id: "n1".into(),
            postgres_url: "postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dx"
                .into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            namespace: "load1234abcd".into(),
        };
        let text = config_text(
            "127.0.0.1:9999".parse().unwrap(),
            "127.0.0.1:9998".parse().unwrap(),
            Path::new("/tmp/x.db"),
            19_500,
            Some(&node),
        );
        let config = giftd::config::Config::from_toml(&text).unwrap();
        assert_eq!(
            config.ledger.backend,
            giftd::config::LedgerBackend::Postgres
        );
        assert_eq!(config.cluster.node_id, "n1");
        assert_eq!(config.cluster.namespace, "load1234abcd");
    }

    #[test]
    fn reads_own_cpu_time() {
        // Burn a little CPU so the reading is above zero on a coarse clock.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_secs(std::process::id()).unwrap() > 0.0);
    }

    #[test]
    fn finds_a_process_by_name() {
        let comm = fs::read_to_string(format!("/proc/{}/comm", std::process::id())).unwrap();
        // Another copy of this test binary may run at the same time, so only membership holds.
        assert!(pids_by_name(comm.trim_end()).contains(&std::process::id()));
        assert!(pids_by_name("no-such-process-name").is_empty());
        assert_eq!(pid_by_name("no-such-process-name"), None);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
