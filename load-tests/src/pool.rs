//! The parent's side of the worker processes: re-executing this binary as `giftd-load worker`,
//! splitting a run's passive connections between workers, forwarding gift send times to all of
//! them, and collecting their readiness and results.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::worker::{Control, Ready, Report, WorkerResult, WorkerSpec};

/// Sends control lines to every worker.
#[derive(Clone)]
pub(crate) struct Broadcaster(Vec<mpsc::UnboundedSender<String>>);

impl Broadcaster {
    pub(crate) fn send(&self, control: &Control) {
        let line = serde_json::to_string(control).expect("controls serialize");
        for w in &self.0 {
            let _ = w.send(line.clone());
        }
    }
}

pub(crate) struct Pool {
    children: Vec<Child>,
    broadcaster: Broadcaster,
    reports: mpsc::UnboundedReceiver<(usize, Report)>,
}

/// Splits `total` connections into shares of at most `per_worker`, as even as possible.
pub(crate) fn shares(total: usize, per_worker: usize) -> Vec<(usize, usize)> {
    if total == 0 {
        return Vec::new();
    }
    let workers = total.div_ceil(per_worker.max(1));
    let base = total / workers;
    let extra = total % workers;
    let mut first = 0;
    (0..workers)
        .map(|w| {
            let count = base + usize::from(w < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

impl Pool {
    pub(crate) async fn spawn(specs: Vec<WorkerSpec>) -> Result<Pool> {
        let exe = std::env::current_exe().context("locating giftd-load")?;
        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut writers = Vec::new();
        for spec in specs {
            let index = spec.worker;
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
            tx.send(serde_json::to_string(&spec)?)?;
            tokio::spawn(async move {
                while let Some(mut line) = rx.recv().await {
                    line.push('\n');
                    if stdin.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
            let report_tx = report_tx.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Report>(&line) {
                        Ok(r) => {
                            let _ = report_tx.send((index, r));
                        }
                        Err(e) => eprintln!("giftd-load: worker {index}: bad line: {e}"),
                    }
                }
            });
            children.push(child);
            writers.push(tx);
        }
        Ok(Pool {
            children,
            broadcaster: Broadcaster(writers),
            reports,
        })
    }

    /// The worker processes' pids (for their CPU).
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.children.iter().map(|c| c.id()).collect()
    }

    pub(crate) fn broadcaster(&self) -> Broadcaster {
        self.broadcaster.clone()
    }

    /// Waits for every worker's `ready`, showing connection progress on `bar`.
    pub(crate) async fn wait_ready(
        &mut self,
        bar: &ProgressBar,
        timeout: Duration,
    ) -> Result<Vec<Ready>> {
        let n = self.children.len();
        let mut progress = vec![(0u64, 0u64); n];
        let mut ready: Vec<Option<Ready>> = vec![None; n];
        let deadline = tokio::time::Instant::now() + timeout;
        while ready.iter().any(Option::is_none) {
            let next = tokio::time::timeout_at(deadline, self.reports.recv()).await;
            let (i, report) = match next {
                Err(_) => bail!("workers not ready after {timeout:?}"),
                Ok(None) => bail!("a worker exited before it was ready"),
                Ok(Some(r)) => r,
            };
            match report {
                Report::Progress { connected, failed } => progress[i] = (connected, failed),
                Report::Ready(r) => {
                    progress[i] = (r.connected, r.failed);
                    ready[i] = Some(r);
                }
                Report::Result(_) => bail!("worker {i} reported a result before ready"),
            }
            let connected: u64 = progress.iter().map(|p| p.0).sum();
            let failed: u64 = progress.iter().map(|p| p.1).sum();
            bar.set_position(connected + failed);
            bar.set_message(format!("connected {connected}, failed {failed}"));
        }
        Ok(ready.into_iter().flatten().collect())
    }

    /// Tells every worker to finish and collects their results.
    pub(crate) async fn finish(
        mut self,
        final_seq: BTreeMap<String, u64>,
        wait: Duration,
    ) -> Result<Vec<WorkerResult>> {
        self.broadcaster.send(&Control::Finish {
            final_seq,
            wait_ms: wait.as_millis() as u64,
        });
        let n = self.children.len();
        let mut results: Vec<Option<WorkerResult>> = vec![None; n];
        let deadline = tokio::time::Instant::now() + wait + Duration::from_secs(30);
        while results.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Err(_) => bail!(
                    "workers did not report within {:?}",
                    wait + Duration::from_secs(30)
                ),
                Ok(None) => bail!("a worker exited without a result"),
                Ok(Some((i, Report::Result(r)))) => results[i] = Some(*r),
                Ok(Some(_)) => {}
            }
        }
        drop(self.broadcaster);
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_cover_everything() {
        assert_eq!(
            shares(19_000, 9_000),
            vec![(0, 6334), (6334, 6333), (12667, 6333)]
        );
        assert_eq!(shares(50, 9_000), vec![(0, 50)]);
        assert!(shares(0, 10).is_empty());
    }
}
