//! Test support for the cluster: several giftd nodes on one PostgreSQL schema and one NATS
//! namespace of their own.
//!
//! Each [`TestCluster`] gets a namespace `t<random>`, so its subjects and its lease bucket are
//! its own and tests run in parallel; its lease bucket and event stream are deleted when the
//! cluster drops, after its nodes stopped, and its PostgreSQL schema with them. NATS is the one already running
//! (`GIFTD_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).

use giftd::config::{Config, LedgerBackend};

use super::ledger::PgSchema;
use super::{test_config, TestServer};

pub fn nats_url() -> String {
    std::env::var("GIFTD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub struct TestCluster {
    pub nodes: Vec<TestServer>,
    pub namespace: String,
    nats_url: String,
    /// Dropped after the nodes: they use the schema until they stop.
    _schema: PgSchema,
}

impl TestCluster {
    /// Starts `n` nodes with the test config, adjusted by `tweak`.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> TestCluster {
        let schema = PgSchema::create();
        let namespace = format!("t{:016x}", rand::random::<u64>());
        let mut nats = nats_url();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let mut config = test_config(dir.path().join("unused.db"));
            config.ledger.backend = LedgerBackend::Postgres;
            config.ledger.postgres_url = schema.url.clone();
            config.cluster.nats_url = nats_url();
            config.cluster.namespace = namespace.clone();
            config.cluster.node_id = format!("n{i}");
            config.cluster.lease_ms = 1_500;
            tweak(&mut config);
            nats = config.cluster.nats_url.clone();
            nodes.push(TestServer::start_in(dir, config).await);
        }
        TestCluster {
            nodes,
            namespace,
            nats_url: nats,
            _schema: schema,
        }
    }

    pub async fn start(n: usize) -> TestCluster {
        TestCluster::start_with(n, |_| {}).await
    }

    /// Stops every node gracefully.
    pub async fn shutdown(&mut self) {
        for node in &mut self.nodes {
            node.shutdown().await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let bucket = format!("{}_rooms", self.namespace);
        let events = format!("{}_events", self.namespace);
        let url = self.nats_url.clone();
        // On its own thread and runtime: a drop may run inside (or outside) a test's runtime.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let client = async_nats::connect(url).await?;
                    let js = async_nats::jetstream::new(client);
                    js.delete_key_value(&bucket).await?;
                    js.delete_stream(&events).await?;
                    Ok::<_, async_nats::Error>(())
                })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("could not delete the test cluster's bucket");
        }
    }
}

/// A node of a [`TestCluster`] in a process of its own, so a test can kill it with SIGKILL.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub config: Config,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Connects as `user` with a token in the handshake and consumes the welcome.
    pub async fn connect(&self, user: &str, role: giftd::auth::Role) -> super::Client {
        let token = giftd::auth::Authenticator::new(&self.config.auth)
            .mint(user, role, None, 3600)
            .unwrap();
        let mut client = super::Client::connect(&self.url(), Some(&token))
            .await
            .unwrap();
        let welcome = client.next_message().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl TestCluster {
    /// Starts one more node of this cluster as a `giftd serve` process (its config is the first
    /// node's, with its own ports and node id) and waits until it is ready.
    pub async fn spawn_process(&self, node_id: &str) -> NodeProcess {
        let dir = tempfile::tempdir().unwrap();
        // A port can be taken between choosing it and the bind: retry, bounded.
        for _attempt in 0..10 {
            let mut config = self.nodes[0].config.clone();
            config.server.listen = free_addr();
            config.server.admin_listen = free_addr();
            config.cluster.node_id = node_id.to_owned();
            let path = dir.path().join("giftd.toml");
            std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
            let log = std::fs::File::create(dir.path().join("giftd.log")).unwrap();
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_giftd"));
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("GIFTD_") {
                    command.env_remove(name);
                }
            }
            let child = command
                .args(["serve", "--config"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("giftd starts");
            let mut node = NodeProcess {
                child,
                addr: config.server.listen,
                admin_addr: config.server.admin_listen,
                config,
                _dir: tempfile::tempdir().unwrap(),
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = node.child.try_wait() {
                    break;
                }
                let ready = super::try_http(node.admin_addr, "GET", "/readyz", None, None).await;
                if matches!(ready, Ok((200, _))) {
                    node._dir = dir;
                    return node;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            node.kill();
        }
        let log = std::fs::read_to_string(dir.path().join("giftd.log")).unwrap_or_default();
        panic!("the giftd process did not become ready; its log:\n{log}");
    }
}

/// A NATS server of a test's own (the machine's `nats-server` binary, with JetStream in a
/// temporary directory), for tests that restart NATS without disturbing the shared one.
pub struct OwnNats {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OwnNats {
    pub async fn start() -> OwnNats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_addr().port();
        let child = OwnNats::spawn(port, dir.path());
        let nats = OwnNats { child, port, dir };
        nats.wait_up().await;
        nats
    }

    fn spawn(port: u16, dir: &std::path::Path) -> std::process::Child {
        let binary = std::env::var("GIFTD_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (GIFTD_TEST_NATS_SERVER)")
    }

    async fn wait_up(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("nats-server did not listen on {} within 5 s", self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL), waits `down`, and starts it again on the same port and store.
    pub async fn restart(&mut self, down: std::time::Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        self.child = OwnNats::spawn(self.port, self.dir.path());
        self.wait_up().await;
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
