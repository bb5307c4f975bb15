//! A database connection owned by one thread, called from async handlers. The PostgreSQL
//! driver blocks (and owns a runtime of its own), so it must never run on an async worker.

use msec_store::{Counts, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Mutex};

type Task = Box<dyn FnOnce(&mut Store) + Send>;

/// Counts over whole tables and refusals by reason, as of `.0`.
type Stats = (Instant, Counts, Vec<(String, i64)>);

/// How long the dashboard's counts are served from memory: each count scans a whole table, and
/// any logged-in caller may ask for them.
const STATS_FOR: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct DbHandle {
    tasks: std::sync::mpsc::Sender<Task>,
    stats: Arc<Mutex<Option<Stats>>>,
    /// Turns true when the thread ends.
    ended: watch::Receiver<bool>,
}

/// Says, when dropped (the thread returned or a task panicked), that the thread has ended.
struct Ended(watch::Sender<bool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl DbHandle {
    /// Moves `store` onto a dedicated thread, which ends when the last handle is dropped.
    pub fn start(mut store: Store) -> std::io::Result<DbHandle> {
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        let (ended_tx, ended) = watch::channel(false);
        std::thread::Builder::new()
            .name("msec-api-db".into())
            .spawn(move || {
                let _ended = Ended(ended_tx);
                for task in rx {
                    task(&mut store);
                }
            })?;
        Ok(DbHandle {
            tasks: tx,
            stats: Arc::default(),
            ended,
        })
    }

    /// Resolves once the thread has ended: after the last handle is gone, or early, when a
    /// task panicked (every call then fails). Holds no handle, so it keeps the thread from
    /// nothing.
    pub fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            // A closed channel means the thread and its guard are gone: ended all the same.
            let _ = ended.wait_for(|e| *e).await;
        }
    }

    /// Counts of devices, readings and security events, and refusals by reason: at most
    /// [`STATS_FOR`] old. Concurrent callers wait for one computation, not one each.
    pub async fn stats(&self) -> Result<(Counts, Vec<(String, i64)>), StoreError> {
        let mut cached = self.stats.lock().await;
        if let Some((at, counts, reasons)) = cached.as_ref() {
            if at.elapsed() < STATS_FOR {
                return Ok((counts.clone(), reasons.clone()));
            }
        }
        let (counts, reasons) = self
            .call(|db| Ok((db.counts()?, db.security_event_counts()?)))
            .await?;
        *cached = Some((Instant::now(), counts.clone(), reasons.clone()));
        Ok((counts, reasons))
    }

    /// Runs `f` with the connection and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move |store| {
            let _ = tx.send(f(store));
        });
        self.tasks
            .send(task)
            .map_err(|_| StoreError::Backend("the database thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the database thread has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let dir = std::env::temp_dir().join(msec_testkit::unique("msec-db-handle-"));
        std::fs::create_dir_all(&dir).unwrap();
        let keys: Arc<dyn msec_store::KekProvider> = Arc::new(msec_vault::MemoryKeys::new());
        Store::open(dir.join("msec.db").to_str().unwrap(), keys).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_call_ends_the_thread_and_says_so() {
        let db = DbHandle::start(store()).unwrap();
        let ended = db.ended();
        assert_eq!(db.call(|s| Ok(s.engine())).await.unwrap(), "sqlite");
        let still = tokio::time::timeout(Duration::from_millis(100), db.ended()).await;
        assert!(still.is_err(), "ended while it still runs");
        let failed = db.call(|_| -> Result<(), StoreError> { panic!("on purpose") });
        assert!(failed.await.is_err());
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the end was not reported");
        assert!(db.call(|s| Ok(s.engine())).await.is_err());
    }
}
