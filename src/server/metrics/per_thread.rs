//! [`PerThread`]: a value kept once per thread that records into it, so
//! that recording takes a lock only that thread and the scraper ever take
//! (a value shared by every worker would be a lock they all take per call);
//! a scrape visits every thread's value.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Distinguishes the [`PerThread`]s of one process (a server has several,
/// tests make several servers).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One thread's value, as the thread holds it.
type Own = Arc<dyn Any + Send + Sync>;

thread_local! {
    /// This thread's value of each [`PerThread`] it recorded into, by id.
    static OWN: RefCell<Vec<(u64, Own)>> = const { RefCell::new(Vec::new()) };
}

/// One `T` per recording thread; see the module doc.
#[derive(Debug)]
pub struct PerThread<T> {
    id: u64,
    /// Every thread's value (a thread's is added when it first records).
    values: Mutex<Vec<Arc<Mutex<T>>>>,
}

impl<T: Default + Send + 'static> Default for PerThread<T> {
    fn default() -> Self {
        PerThread {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            values: Mutex::default(),
        }
    }
}

impl<T: Default + Send + 'static> PerThread<T> {
    /// Runs `record` on this thread's value, made on its first use.
    pub fn with_own(&self, record: impl FnOnce(&mut T)) {
        OWN.with(|own| {
            let mut own = own.borrow_mut();
            let index = match own.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    let value = Arc::<Mutex<T>>::default();
                    self.values.lock().push(value.clone());
                    own.push((self.id, value));
                    own.len() - 1
                }
            };
            let value = own[index].1.downcast_ref::<Mutex<T>>();
            record(&mut value.expect("a PerThread id names one type").lock());
        });
    }

    /// Runs `visit` on every thread's value in turn (the scraper).
    pub fn for_each(&self, mut visit: impl FnMut(&mut T)) {
        for value in self.values.lock().iter() {
            visit(&mut value.lock());
        }
    }

    /// How many threads have recorded.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.values.lock().len()
    }
}
