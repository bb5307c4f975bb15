//! A database connection owned by one thread, called from async handlers. The PostgreSQL
//! driver blocks (and owns a runtime of its own), so it must never run on an async worker.

use msec_store::{Counts, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Mutex};

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
}

impl DbHandle {
    /// Moves `store` onto a dedicated thread, which ends when the last handle is dropped.
    pub fn start(mut store: Store) -> std::io::Result<DbHandle> {
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("msec-api-db".into())
            .spawn(move || {
                for task in rx {
                    task(&mut store);
                }
            })?;
        Ok(DbHandle {
            tasks: tx,
            stats: Arc::default(),
        })
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
