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
    /// Dropped after the nodes: they use the schema until they stop.
    _schema: PgSchema,
}

impl TestCluster {
    /// Starts `n` nodes with the test config, adjusted by `tweak`.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> TestCluster {
        let schema = PgSchema::create();
        let namespace = format!("t{:016x}", rand::random::<u64>());
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
            nodes.push(TestServer::start_in(dir, config).await);
        }
        TestCluster {
            nodes,
            namespace,
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
        // On its own thread and runtime: a drop may run inside (or outside) a test's runtime.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let client = async_nats::connect(nats_url()).await?;
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
