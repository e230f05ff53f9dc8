//! A small time-bounded, size-bounded answer cache: what a backend said is
//! kept for a while so that a reconnect storm or a busy publisher does not
//! ask it again each time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Answers kept for `ttl`, at most `max` of them. When full, expired
/// answers are dropped; if none has expired, the new one is not kept (the
/// backend is asked again: bounded memory over hit rate).
#[derive(Debug)]
pub struct Cache<K, V> {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    /// A cache that keeps answers for `ttl` (zero: keeps none), at most `max`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Cache {
            ttl,
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`, if it is still fresh.
    pub fn get(&self, key: &K) -> Option<V> {
        let map = self.map.lock();
        let (value, at) = map.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Keeps `value` for `key`.
    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        let mut map = self.map.lock();
        if map.len() >= self.max && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.max {
                return;
            }
        }
        map.insert(key, (value, Instant::now()));
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_expire_and_the_size_is_bounded() {
        let cache = Cache::new(Duration::from_secs(10), 2);
        cache.put("a", 1);
        cache.put("b", 2);
        cache.put("c", 3);
        assert_eq!((cache.get(&"a"), cache.get(&"c")), (Some(1), None));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get(&"a"), None);
        cache.put("c", 3);
        assert_eq!(cache.get(&"c"), Some(3));
        assert_eq!(cache.len(), 1);
        let none = Cache::new(Duration::ZERO, 10);
        none.put("a", 1);
        assert!(none.is_empty());
    }
}
