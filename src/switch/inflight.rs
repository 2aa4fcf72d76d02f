//! Produce ordering across a flip (DESIGN.md decision 7): batches of a partition in
//! flight to the cluster its writes are leaving must complete before the first batch
//! for it goes to the new cluster. Otherwise a failed old batch could be retried
//! after newer ones were written elsewhere, and per-key order would break.
//!
//! Each forwarded Produce holds a guard on its partitions, released when its response
//! has been handled or its connection is gone. A Produce for a partition whose
//! batches are in flight on another cluster waits (bounded) until they are released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

type Partition = (String, i32);

#[derive(Debug, Default)]
pub struct Inflight {
    /// partition -> (cluster index, requests in flight)
    map: Mutex<HashMap<Partition, (usize, u32)>>,
    released: Notify,
}

/// Partitions of one forwarded Produce, held until dropped.
#[derive(Debug)]
pub struct InflightGuard {
    registry: Arc<Inflight>,
    parts: Vec<Partition>,
    cluster: usize,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut map = self.registry.map.lock().expect("inflight lock");
        for p in &self.parts {
            if let Some((c, n)) = map.get_mut(p) {
                if *c == self.cluster {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(p);
                    }
                }
            }
        }
        drop(map);
        self.registry.released.notify_waiters();
    }
}

impl Inflight {
    /// Waits until no Produce for any partition of `topics` is in flight on any
    /// cluster, at most `limit`; returns whether they drained. Only meaningful
    /// once no new write of them can start (a fenced flip).
    pub async fn drained(
        &self,
        topics: &std::collections::BTreeSet<String>,
        limit: Duration,
    ) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let released = self.released.notified();
            let busy = {
                let map = self.map.lock().expect("inflight lock");
                map.iter()
                    .any(|((topic, _), (_, n))| *n > 0 && topics.contains(topic))
            };
            if !busy {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), released).await;
        }
    }

    /// Takes all of `parts` for `cluster` if none is in flight elsewhere.
    fn try_take(self: &Arc<Self>, parts: &[Partition], cluster: usize) -> Option<InflightGuard> {
        let mut map = self.map.lock().expect("inflight lock");
        if parts
            .iter()
            .any(|p| map.get(p).is_some_and(|(c, n)| *c != cluster && *n > 0))
        {
            return None;
        }
        for p in parts {
            let e = map.entry(p.clone()).or_insert((cluster, 0));
            e.0 = cluster;
            e.1 += 1;
        }
        Some(InflightGuard {
            registry: self.clone(),
            parts: parts.to_vec(),
            cluster,
        })
    }

    /// Waits until `parts` can be written to `cluster`, at most `limit`. Past it the
    /// guard is taken anyway (the broker's own checks still apply) and the wait is
    /// reported as `false`.
    pub async fn take(
        self: &Arc<Self>,
        parts: Vec<Partition>,
        cluster: usize,
        limit: Duration,
    ) -> (InflightGuard, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let released = self.released.notified();
            if let Some(g) = self.try_take(&parts, cluster) {
                return (g, true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let mut map = self.map.lock().expect("inflight lock");
                for p in &parts {
                    map.insert(p.clone(), (cluster, 1));
                }
                drop(map);
                return (
                    InflightGuard {
                        registry: self.clone(),
                        parts,
                        cluster,
                    },
                    false,
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), released).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_cluster_waits_for_the_old_ones_in_flight() {
        let reg = Arc::new(Inflight::default());
        let p = vec![("orders".to_string(), 0)];
        let (old, ok) = reg.take(p.clone(), 0, Duration::from_secs(1)).await;
        assert!(ok);
        // Same cluster: no wait.
        let (same, ok) = reg.take(p.clone(), 0, Duration::from_millis(10)).await;
        assert!(ok);
        drop(same);
        let reg2 = reg.clone();
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { reg2.take(p2, 1, Duration::from_secs(5)).await.1 });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "must wait while the old cluster has it in flight"
        );
        drop(old);
        assert!(waiter.await.unwrap(), "proceeds once released");
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let reg = Arc::new(Inflight::default());
        let p = vec![("orders".to_string(), 0)];
        let (_old, _) = reg.take(p.clone(), 0, Duration::from_secs(1)).await;
        let (_g, ok) = reg.take(p, 1, Duration::from_millis(20)).await;
        assert!(!ok);
    }
}
