//! Leases for jobs that must run on one node at a time: a record in [`keyspaces::JOBS`] naming the
//! holder, taken and renewed by compare-and-swap and expiring with the store's TTL, so when the
//! holder dies another node takes over after at most one lease period. Whoever does not hold the
//! lease skips the job's tick.

use std::time::Duration;

use super::{keyspaces, Cas, Store, StoreResult};

pub struct Lease {
    name: String,
    /// This process (random per start: a restarted node is a new holder).
    holder: String,
    ttl: Duration,
}

impl Lease {
    /// A lease on job `name` lasting `ttl` from each renewal (renew well inside it: a third).
    pub fn new(name: &str, ttl: Duration) -> Self {
        Self {
            name: name.to_string(),
            holder: crate::clock::random_id(),
            ttl,
        }
    }

    /// Takes or renews the lease; `true` when this process holds it now.
    pub async fn hold(&self, store: &dyn Store, now_ms: i64) -> StoreResult<bool> {
        let mine = format!("{} {now_ms}", self.holder).into_bytes();
        let current = store.get(keyspaces::JOBS, &self.name).await?;
        if let Some(c) = &current {
            let owner = c.split(|b| *b == b' ').next().unwrap_or_default();
            if owner != self.holder.as_bytes() {
                return Ok(false);
            }
        }
        // absent/expired → take it; ours → renew. A conflict means another node got there first.
        Ok(matches!(
            store
                .compare_and_swap(
                    keyspaces::JOBS,
                    &self.name,
                    current,
                    Some((mine, Some(self.ttl)))
                )
                .await?,
            Cas::Swapped
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use crate::store::SledStore;

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let clock = FakeClock::new(1_000_000);
        let store = SledStore::temporary(clock.clone()).unwrap();
        let a = Lease::new("sweep", Duration::from_secs(30));
        let b = Lease::new("sweep", Duration::from_secs(30));
        assert!(a.hold(&store, clock.now_ms()).await.unwrap());
        assert!(!b.hold(&store, clock.now_ms()).await.unwrap());
        clock.advance_ms(20_000);
        assert!(a.hold(&store, clock.now_ms()).await.unwrap(), "renewal");
        clock.advance_ms(20_000);
        assert!(
            !b.hold(&store, clock.now_ms()).await.unwrap(),
            "renewed 20 s ago"
        );
        // a stops renewing (dies): b takes over once the lease lapses
        clock.advance_ms(15_000);
        assert!(b.hold(&store, clock.now_ms()).await.unwrap());
        assert!(!a.hold(&store, clock.now_ms()).await.unwrap());
        // another job's lease is independent
        assert!(Lease::new("other", Duration::from_secs(30))
            .hold(&store, clock.now_ms())
            .await
            .unwrap());
    }
}
