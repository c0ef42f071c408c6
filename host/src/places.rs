//! A bounded count of places, each taken as a guard that gives it back when
//! dropped, on every path, a panic included, so no failure can leak one.
//! Admission uses it for the rollouts the server holds (running or waiting
//! for a slot), the runtime for the slots of its warm instance pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Places taken, shared by the holder and every guard.
#[derive(Debug, Default, Clone)]
pub struct Places {
    taken: Arc<AtomicUsize>,
}

impl Places {
    /// Takes a place if fewer than `capacity` are taken.
    pub fn try_take(&self, capacity: usize) -> Option<Place> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Place {
                taken: self.taken.clone(),
            })
    }

    /// Places taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One place; given back on drop.
#[derive(Debug)]
pub struct Place {
    taken: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_given_back_on_drop_and_on_panic() {
        let places = Places::default();
        let first = places.try_take(2).unwrap();
        let _second = places.try_take(2).unwrap();
        assert!(places.try_take(2).is_none(), "capacity is 2");
        drop(first);
        assert_eq!(places.taken(), 1);
        let held = places.try_take(2).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = held;
            panic!("while holding a place");
        }));
        assert!(panicked.is_err());
        assert_eq!(places.taken(), 1, "the panic gave its place back");
    }
}
