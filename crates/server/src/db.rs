//! A database connection owned by one thread, called from async handlers. The PostgreSQL
//! driver blocks (and owns a runtime of its own), so it must never run on an async worker.

use msec_store::{Store, StoreError};
use tokio::sync::oneshot;

type Task = Box<dyn FnOnce(&mut Store) + Send>;

#[derive(Clone)]
pub struct DbHandle(std::sync::mpsc::Sender<Task>);

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
        Ok(DbHandle(tx))
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
        self.0
            .send(task)
            .map_err(|_| StoreError::Backend("the database thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the database thread has stopped".into()))?
    }
}
