//! PostgreSQL clusters a test owns beside the shared one: a primary of its own (to stop it, to
//! fail over from it) and streaming replicas made with `pg_basebackup`. Each is stopped and
//! removed when dropped, also when the test fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use pgsidecar::dev::{LocalCluster, free_port};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A cluster that lives as long as the test holding it.
pub struct OwnedCluster {
    cluster: LocalCluster,
    dir: PathBuf,
}

impl OwnedCluster {
    fn dir(role: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "pgsidecar-it-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A fresh primary (superuser `postgres`, password `postgres`) that streaming replicas
    /// can be made from.
    pub fn primary() -> Self {
        let dir = Self::dir("primary");
        let cluster = LocalCluster::new(&dir, free_port().unwrap());
        cluster.init("scram-sha-256").unwrap();
        cluster
            .start(&[("max_connections", "200"), ("shared_buffers", "32MB")])
            .unwrap();
        Self { cluster, dir }
    }

    /// A hot-standby streaming replica of the server on `primary_port`.
    pub fn replica_of(primary_port: u16) -> Self {
        let dir = Self::dir("replica");
        let cluster = LocalCluster::new(&dir, free_port().unwrap());
        cluster.replicate(primary_port, "postgres").unwrap();
        cluster
            .start(&[("hot_standby", "on"), ("max_connections", "400")])
            .unwrap();
        Self { cluster, dir }
    }

    /// The cluster, to stop, promote or connect to.
    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.cluster.port())
    }
}

impl Drop for OwnedCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
