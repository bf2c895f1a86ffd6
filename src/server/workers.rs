//! Stalled HTTP workers. Each actix worker thread runs its own single-threaded event loop: a
//! handler that blocks it (a CPU-bound step without `spawn_blocking`, a blocking call) stalls
//! every connection that worker holds, while the other workers — and `/health/ready` served by
//! one of them — carry on. Each worker ticks a heartbeat on its own loop; readiness is 503 while
//! any live worker's last tick is older than `server.worker_stall_ms`, so a balancer stops
//! sending requests the stalled worker would hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often a worker ticks.
const TICK: Duration = Duration::from_millis(250);

/// The heartbeats of the HTTP workers of this process.
#[derive(Debug)]
pub struct WorkerBeats {
    origin: Instant,
    /// One slot per worker, held strongly by the worker's ticking task: a worker that is gone
    /// (restarted after a panic) drops out instead of looking stalled forever.
    slots: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Default for WorkerBeats {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            slots: Mutex::default(),
        }
    }
}

impl WorkerBeats {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A new slot, ticked now.
    pub fn register(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(self.now_ms()));
        if let Ok(mut s) = self.slots.lock() {
            s.retain(|w| w.strong_count() > 0);
            s.push(Arc::downgrade(&slot));
        }
        slot
    }

    /// Called in each worker's app factory (on that worker's thread): registers it and ticks
    /// its slot from a task on its own event loop.
    pub fn start_worker(self: &Arc<Self>) {
        let slot = self.register();
        let beats = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(TICK);
            loop {
                tick.tick().await;
                let Some(b) = beats.upgrade() else { break };
                slot.store(b.now_ms(), Ordering::Relaxed);
            }
        });
    }

    /// How many live workers have not ticked for `threshold`, and the longest silence.
    pub fn stalled(&self, threshold: Duration) -> (usize, Duration) {
        let now = self.now_ms();
        let limit = u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX);
        let Ok(s) = self.slots.lock() else {
            return (0, Duration::ZERO);
        };
        let silences: Vec<u64> = s
            .iter()
            .filter_map(Weak::upgrade)
            .map(|slot| now.saturating_sub(slot.load(Ordering::Relaxed)))
            .collect();
        let stalled = silences.iter().filter(|&&ms| ms > limit).count();
        let longest = silences.into_iter().max().unwrap_or(0);
        (stalled, Duration::from_millis(longest))
    }
}

// Blocking a thread is what these tests simulate (a handler that blocks its worker's loop).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_worker_is_stalled_and_a_gone_one_is_forgotten() {
        let beats = WorkerBeats::default();
        let ticking = beats.register();
        let silent = beats.register();
        assert_eq!(beats.stalled(Duration::from_millis(50)).0, 0);
        std::thread::sleep(Duration::from_millis(120));
        ticking.store(beats.now_ms(), Ordering::Relaxed);
        let (n, longest) = beats.stalled(Duration::from_millis(50));
        assert_eq!(n, 1, "only the silent worker");
        assert!(longest >= Duration::from_millis(100));
        drop(silent);
        assert_eq!(beats.stalled(Duration::from_millis(50)).0, 0);
    }

    /// Workers on real actix event loops tick; one whose loop is blocked stops ticking.
    #[test]
    fn a_blocked_event_loop_stops_ticking() {
        let beats = Arc::new(WorkerBeats::default());
        let b = beats.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                b.start_worker();
                actix_web::rt::time::sleep(Duration::from_millis(400)).await;
                tx.send(()).unwrap();
                // a handler that blocks the loop
                std::thread::sleep(Duration::from_millis(900));
            });
        });
        rx.recv().unwrap();
        assert_eq!(beats.stalled(Duration::from_millis(500)).0, 0, "ticking");
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(beats.stalled(Duration::from_millis(500)).0, 1, "blocked");
        worker.join().unwrap();
    }
}
