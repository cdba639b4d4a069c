//! The one way async code runs blocking work: store reads and synced writes, signature checks,
//! and a block's domain pass (which may wait on bitcoind through the chain seam's `Broadcaster`).

/// A blocking task panicked or was cancelled at shutdown.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct TaskFailed(String);

/// Runs `work` on tokio's blocking pool and returns what it returned.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskFailed> {
    tokio::task::spawn_blocking(work).await.map_err(|e| TaskFailed(e.to_string()))
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread of its own for one owner's blocking work, run in the order it is handed in. The
/// chain follower has one, so that its blocks never queue behind public requests on tokio's
/// blocking pool (capped, and shared by every request): a flood of requests cannot delay a block.
#[derive(Debug, Clone)]
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    /// Starts the thread, named `name`. It ends when the last clone of the worker is dropped.
    pub fn spawn(name: &str) -> std::io::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name(name.to_string()).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(Worker { jobs })
    }

    /// Runs `work` on the worker's thread and returns what it returned (a panic in it is an
    /// error, and the thread goes on).
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, TaskFailed> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = answer.send(result.map_err(|_| TaskFailed("the worker's job panicked".into())));
        });
        self.jobs.send(job).map_err(|_| TaskFailed("the worker thread is gone".into()))?;
        answered.await.map_err(|_| TaskFailed("the worker dropped the job".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_runs_jobs_in_order_on_its_own_thread_and_survives_a_panic() {
        let worker = Worker::spawn("test-worker").unwrap();
        let here = std::thread::current().id();
        let (name, id) = worker
            .run(|| (std::thread::current().name().map(str::to_string), std::thread::current().id()))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-worker"));
        assert_ne!(id, here);
        assert!(worker.run(|| panic!("boom")).await.is_err());
        assert_eq!(worker.run(|| 42).await.unwrap(), 42, "still running after a panic");
    }
}
