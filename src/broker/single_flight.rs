//! One piece of work per key at a time, shared by everyone who asks while it runs.
//!
//! The work runs on a task of its own, so it is not cancelled when the callers that wait for
//! it give up (a fetch already sent upstream completes and its result is kept), and the
//! flight is cleared when the work ends, even by a panic, so the next caller starts anew.

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;

/// What the waiters get when the work's task did not finish (it panicked or was aborted).
pub trait Outcome: Clone + Send + Sync + 'static {
    fn lost(e: tokio::task::JoinError) -> Self;
}

/// A running piece of work; await it (any number of times, from any number of callers).
pub type Flight<T> = Shared<BoxFuture<'static, T>>;

/// At most one running [`Flight`]. Boxed while it runs, so an idle one costs one pointer.
pub struct SingleFlight<T> {
    running: Mutex<Option<Box<Flight<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            running: Mutex::new(None),
        }
    }
}

impl<T: Outcome> SingleFlight<T> {
    pub fn is_running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// Joins the running flight of `owner`'s [`SingleFlight`] (reached with `flight`), or
    /// starts one with the work `start` returns. `start` runs under the flight's lock, so
    /// two callers cannot both start; it may refuse (e.g. during a backoff), and nothing
    /// runs. The spawned work keeps `owner` alive until it ends.
    pub fn join_or_start<O, W, E>(
        owner: &Arc<O>,
        flight: fn(&O) -> &SingleFlight<T>,
        start: impl FnOnce() -> Result<W, E>,
    ) -> Result<Flight<T>, E>
    where
        O: Send + Sync + 'static,
        W: Future<Output = T> + Send + 'static,
    {
        let mut running = flight(owner).running.lock();
        if let Some(f) = running.as_ref() {
            return Ok((**f).clone());
        }
        let work = start()?;
        let clear = ClearOnDrop {
            owner: owner.clone(),
            flight,
        };
        let handle = tokio::spawn(async move {
            // Dropped when the work ends or unwinds; it waits for this lock to be released,
            // so the flight is always stored before it is cleared.
            let _clear = clear;
            work.await
        });
        let shared = async move { handle.await.unwrap_or_else(T::lost) }
            .boxed()
            .shared();
        *running = Some(Box::new(shared.clone()));
        Ok(shared)
    }
}

struct ClearOnDrop<O: Send + Sync + 'static, T: Outcome> {
    owner: Arc<O>,
    flight: fn(&O) -> &SingleFlight<T>,
}

impl<O: Send + Sync + 'static, T: Outcome> Drop for ClearOnDrop<O, T> {
    fn drop(&mut self) {
        *(self.flight)(&self.owner).running.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Clone, Debug, PartialEq)]
    enum Out {
        Done(usize),
        Lost,
    }

    impl Outcome for Out {
        fn lost(_: tokio::task::JoinError) -> Self {
            Out::Lost
        }
    }

    #[derive(Default)]
    struct Key {
        flight: SingleFlight<Out>,
        runs: AtomicUsize,
    }

    fn flight_of(k: &Key) -> &SingleFlight<Out> {
        &k.flight
    }

    fn start(key: &Arc<Key>, delay: Duration) -> Flight<Out> {
        let k = key.clone();
        SingleFlight::join_or_start(key, flight_of, || {
            Ok::<_, ()>(async move {
                let n = k.runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                Out::Done(n)
            })
        })
        .unwrap()
    }

    #[tokio::test]
    async fn callers_while_it_runs_share_one_run_and_the_next_starts_anew() {
        let key = Arc::new(Key::default());
        let waiters: Vec<_> = (0..10)
            .map(|_| start(&key, Duration::from_millis(50)))
            .collect();
        assert!(key.flight.is_running());
        for w in waiters {
            assert_eq!(w.await, Out::Done(1));
        }
        assert!(!key.flight.is_running());
        assert_eq!(start(&key, Duration::ZERO).await, Out::Done(2));
    }

    #[tokio::test]
    async fn the_work_goes_on_when_every_caller_gave_up() {
        let key = Arc::new(Key::default());
        let f = start(&key, Duration::from_millis(30));
        drop(f);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(key.runs.load(Ordering::SeqCst), 1);
        assert!(!key.flight.is_running());
    }

    #[tokio::test]
    async fn a_refusal_starts_nothing() {
        let key = Arc::new(Key::default());
        let r = SingleFlight::join_or_start(&key, flight_of, || {
            Err::<futures::future::Ready<Out>, _>("backing off")
        });
        assert_eq!(r.err(), Some("backing off"));
        assert!(!key.flight.is_running());
    }

    #[tokio::test]
    async fn a_panic_is_lost_and_clears_the_flight() {
        let key = Arc::new(Key::default());
        let f = SingleFlight::join_or_start(&key, flight_of, || {
            Ok::<_, ()>(async {
                if true {
                    panic!("bug in the work");
                }
                Out::Done(0)
            })
        })
        .unwrap();
        assert_eq!(f.await, Out::Lost);
        assert!(!key.flight.is_running());
    }
}
