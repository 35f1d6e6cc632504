//! A local giftd cluster started by the generator (`--spawn-server BIN --spawn-nodes N`): N
//! `giftd serve` processes on one fresh PostgreSQL schema `giftd_load_<run>` and one NATS
//! namespace `load<run>`, each with its own ports and node id `n<i>`.
//!
//! Everything the run created is removed when the [`Cluster`] drops, on success and on failure
//! alike: the nodes are stopped first (they use the schema and the stream until they exit), then
//! the schema is dropped and the namespace's event stream `<ns>_events` and lease bucket
//! `<ns>_rooms` are deleted. The cluster is built step by step inside the value that cleans up,
//! so a node that fails to start still leaves nothing behind.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::server::{NodeOptions, SpawnOptions, Spawned};

/// What to start.
pub(crate) struct ClusterOptions<'a> {
    pub(crate) bin: &'a std::path::Path,
    pub(crate) nodes: usize,
    pub(crate) connections_max: usize,
    pub(crate) env: &'a [String],
    pub(crate) keep_dir: bool,
    pub(crate) run_id: &'a str,
    pub(crate) nats_url: &'a str,
    /// The database; the run's schema goes on its search path.
    pub(crate) postgres_url: &'a str,
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Spawned>,
    resources: Resources,
}

/// What a cluster run creates outside its nodes' processes and temp directories.
#[derive(Clone)]
struct Resources {
    schema: String,
    namespace: String,
    nats_url: String,
    postgres_url: String,
}

/// `url` with `options=-csearch_path=<schema>` added (percent-encoded as libpq expects).
fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

impl Cluster {
    pub(crate) async fn start(opts: ClusterOptions<'_>) -> Result<Cluster> {
        let schema = format!("giftd_load_{}", opts.run_id);
        let client = giftd::ledger::postgres::connect(opts.postgres_url)
            .await
            .map_err(|e| anyhow!("PostgreSQL at {}: {e}", opts.postgres_url))?;
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(|e| anyhow!("creating schema {schema}: {e}"))?;
        drop(client);
        // From here on, dropping `cluster` removes the schema and the namespace.
        let mut cluster = Cluster {
            nodes: Vec::with_capacity(opts.nodes),
            resources: Resources {
                namespace: format!("load{}", opts.run_id),
                nats_url: opts.nats_url.to_owned(),
                postgres_url: opts.postgres_url.to_owned(),
                schema,
            },
        };
        for i in 0..opts.nodes {
            let node = NodeOptions {
                node_id: format!("n{i}"),
                postgres_url: url_with_schema(opts.postgres_url, &cluster.resources.schema),
                nats_url: opts.nats_url.to_owned(),
                namespace: cluster.resources.namespace.clone(),
            };
            let spawned = Spawned::start(SpawnOptions {
                bin: opts.bin,
                connections_max: opts.connections_max,
                env: opts.env,
                keep_dir: opts.keep_dir,
                run_id: opts.run_id,
                node: Some(&node),
            })
            .await?;
            cluster.nodes.push(spawned);
        }
        Ok(cluster)
    }

    /// Stops every node (all drain at once); returns whether all exited cleanly.
    pub(crate) fn stop(&mut self, grace: Duration) -> bool {
        for node in &mut self.nodes {
            node.terminate();
        }
        let mut clean = true;
        for node in &mut self.nodes {
            clean &= node.stop(grace);
        }
        clean
    }
}

impl Resources {
    /// Drops the schema and deletes the namespace's stream and bucket. Errors are collected, not
    /// returned early: each piece is removed even if another could not be.
    async fn remove(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match giftd::ledger::postgres::connect(&self.postgres_url).await {
            Ok(client) => {
                let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
                if let Err(e) = client.batch_execute(&sql).await {
                    errors.push(format!("dropping schema {}: {e}", self.schema));
                }
            }
            Err(e) => errors.push(format!("PostgreSQL: {e}")),
        }
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(self.nats_url.as_str());
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => {
                let js = async_nats::jetstream::new(client);
                let stream = format!("{}_events", self.namespace);
                let bucket = format!("{}_rooms", self.namespace);
                // A stream or bucket the nodes never created is not an error.
                if let Err(e) = js.delete_stream(&stream).await {
                    if !format!("{e}").contains("not found") {
                        errors.push(format!("deleting NATS stream {stream}: {e}"));
                    }
                }
                if let Err(e) = js.delete_key_value(&bucket).await {
                    if !format!("{e}").contains("not found") {
                        errors.push(format!("deleting NATS bucket {bucket}: {e}"));
                    }
                }
            }
            Ok(Err(e)) => errors.push(format!("NATS at {}: {e}", self.nats_url)),
            Err(_) => errors.push(format!("NATS at {}: connect timed out", self.nats_url)),
        }
        errors
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
        // Each node's own drop removes its temp directory.
        self.nodes.clear();
        // On a thread and runtime of its own: a drop may run inside the generator's runtime.
        let resources = self.resources.clone();
        let done = std::thread::spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(resources.remove()),
                Err(e) => vec![format!("cleanup runtime: {e}")],
            }
        })
        .join();
        match done {
            Ok(errors) => {
                for e in errors {
                    eprintln!("giftd-load: cluster cleanup: {e}");
                }
            }
            Err(_) => eprintln!("giftd-load: cluster cleanup panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_goes_on_the_search_path() {
        assert_eq!(
            url_with_schema("postgres://postgres@127.0.0.1:5432/test", "giftd_load_1"),
            "postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dgiftd_load_1"
        );
        assert_eq!(
            url_with_schema("postgres://p@h/t?sslmode=disable", "s"),
            "postgres://p@h/t?sslmode=disable&options=-csearch_path%3Ds"
        );
    }
}
