//! `max_concurrency` with a bounded wait: at most N invocations run; up to
//! `queue` more wait at most `queue_timeout` for a slot; the rest are refused
//! at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why an invocation did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full: answer 429.
    QueueFull,
    /// It waited `queue_timeout` without a slot: answer 503.
    Timeout,
}

#[derive(Debug)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    max: usize,
    waiting: AtomicUsize,
    queue: usize,
    queue_timeout: Duration,
}

impl Gate {
    pub(crate) fn new(max: u32, queue: u32, queue_timeout: Duration) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(max as usize)),
            max: max as usize,
            waiting: AtomicUsize::new(0),
            queue: queue as usize,
            queue_timeout,
        }
    }

    /// A slot, held until the permit is dropped.
    pub(crate) async fn enter(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::QueueFull);
        }
        let outcome =
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Timeout),
        }
    }

    /// Invocations running now.
    pub(crate) fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Invocations waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The clock is paused (and jumps when every task waits): the timings
    // below hold however slow the machine is.
    #[tokio::test(start_paused = true)]
    async fn excess_waits_then_is_refused() {
        let gate = Arc::new(Gate::new(1, 1, Duration::from_millis(50)));
        let held = gate.enter().await.unwrap();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.waiting(), 1);
        assert_eq!(gate.enter().await.unwrap_err(), Refused::QueueFull);
        assert_eq!(waiter.await.unwrap().unwrap_err(), Refused::Timeout);
        drop(held);
        assert!(gate.enter().await.is_ok());
        assert_eq!(gate.in_use(), 0);
    }
}
