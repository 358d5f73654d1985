//! CPU-heavy work a request asks for (the diff of two large service
//! revisions, say) runs on the blocking thread pool, a bounded number at a
//! time: the async workers, which serve every listener's requests and the
//! routers' long polls, stay free. A request that waits too long for a slot
//! is answered 429 `busy` with a `Retry-After`; the work itself carries its
//! own deadline (see its caller).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::http::error::{ApiError, ApiResult};

/// Slots for CPU-heavy request work.
pub struct CpuWork {
    slots: Arc<Semaphore>,
    size: usize,
    queue_wait: Duration,
}

impl Default for CpuWork {
    /// One slot fewer than the machine has cores (at least one), so one core
    /// is always left to the async workers; a request waits up to 10 s.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuWork::new(cores.saturating_sub(1).max(1), Duration::from_secs(10))
    }
}

impl CpuWork {
    pub fn new(slots: usize, queue_wait: Duration) -> Self {
        CpuWork {
            slots: Arc::new(Semaphore::new(slots)),
            size: slots,
            queue_wait,
        }
    }

    /// Whether some work is running now.
    pub fn busy(&self) -> bool {
        self.slots.available_permits() < self.size
    }

    /// Runs `work` on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let slot = tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::TooManyRequests {
                code: "busy",
                message: "the controller is busy with other large requests; retry shortly".into(),
                retry_after: 1,
            })?
            .map_err(|e| anyhow::anyhow!("the CPU work slots closed: {e}"))?;
        let done = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| anyhow::anyhow!("CPU-heavy request work failed: {e}"))?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_waits_for_a_slot_and_gives_up_after_the_queue_wait() {
        let work = Arc::new(CpuWork::new(1, Duration::from_millis(50)));
        let (started, wait_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let work = work.clone();
            async move {
                work.run(move || {
                    started.send(()).unwrap();
                    released.recv().unwrap();
                    7
                })
                .await
            }
        });
        wait_started.await.unwrap();
        // The one slot is taken: the next request is refused after waiting.
        let refused = work.run(|| 8).await.unwrap_err();
        assert_eq!(refused.status_and_code().1, "busy");
        release.send(()).unwrap();
        assert_eq!(busy.await.unwrap().unwrap(), 7);
        assert_eq!(work.run(|| 9).await.unwrap(), 9);
    }
}
