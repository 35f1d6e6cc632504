//! Whether this node should be sent traffic: what `/readyz` answers.
//!
//! A node is ready when it is not shutting down, its ledger's last write succeeded, and the
//! ledger's disk keeps `ledger.disk_reserve_bytes` free. The last rule exists because a write
//! failure alone is a poor signal on a nearly full disk: the readiness probe's own write is one
//! small row and may still fit while a batch of gifts does not, so readiness would flap back to
//! ready while every gift fails. The reserve makes the node unready *before* gifts start to fail
//! for want of space, and keeps it unready until space is freed.

use std::path::{Path, PathBuf};

use crate::config::{LedgerBackend, LedgerConfig};

/// The free-space rule for the file system that holds the ledger.
pub struct DiskReserve {
    /// A directory on that file system (the ledger file's parent).
    dir: PathBuf,
    reserve_bytes: u64,
}

impl DiskReserve {
    /// The rule for a ledger file at `ledger_path`; `reserve_bytes` 0 disables it.
    pub fn new(ledger_path: &Path, reserve_bytes: u64) -> DiskReserve {
        let dir = match ledger_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        DiskReserve { dir, reserve_bytes }
    }

    /// The rule for the configured ledger: the SQLite file's file system, or none at all for a
    /// PostgreSQL ledger (whose disk is the database server's to watch).
    pub fn for_ledger(ledger: &LedgerConfig) -> DiskReserve {
        match ledger.backend {
            LedgerBackend::Sqlite => DiskReserve::new(&ledger.path, ledger.disk_reserve_bytes),
            LedgerBackend::Postgres => DiskReserve::new(&ledger.path, 0),
        }
    }

    /// Bytes available to giftd on the ledger's file system, if they can be read.
    pub fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Whether the reserve is kept. A file system that cannot be queried counts as kept: the
    /// ledger's own write errors still make the node unready.
    pub fn is_kept(&self) -> bool {
        self.reserve_bytes == 0
            || self
                .free_bytes()
                .is_none_or(|free| free >= self.reserve_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_any_disk_is_not_kept_and_zero_always_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("giftd.db");
        assert!(DiskReserve::new(&path, 1).free_bytes().unwrap() > 0);
        assert!(DiskReserve::new(&path, 1).is_kept());
        assert!(!DiskReserve::new(&path, u64::MAX).is_kept());
        assert!(DiskReserve::new(&path, 0).is_kept());
        // A bare file name lives in the working directory.
        assert!(DiskReserve::new(Path::new("giftd.db"), 1)
            .free_bytes()
            .is_some());
    }
}
