//! Limits that keep one client from hurting the others: JSON nesting,
//! connections per owner, and a token bucket for WebSocket messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How deeply arrays and objects nest in a JSON text (0 for a scalar),
/// counted without parsing, so a hostile document costs one pass.
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Open long-lived connections per owner on this gateway.
#[derive(Debug, Default)]
pub(crate) struct OwnerConnections {
    counts: Mutex<HashMap<String, usize>>,
}

/// One owner's place; released on drop.
#[derive(Debug)]
pub(crate) struct OwnerSlot {
    owner: String,
    registry: Arc<OwnerConnections>,
}

impl OwnerConnections {
    /// A slot for `owner`, unless it already holds `limit`.
    pub(crate) fn acquire(self: &Arc<Self>, owner: &str, limit: usize) -> Option<OwnerSlot> {
        let mut counts = self.lock();
        let count = counts.entry(owner.to_owned()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(OwnerSlot {
            owner: owner.to_owned(),
            registry: Arc::clone(self),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Counters stay consistent whatever panicked while holding the lock.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for OwnerSlot {
    fn drop(&mut self) {
        let mut counts = self.registry.lock();
        if let Some(count) = counts.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_s: u32) -> Self {
        let rate = f64::from(rate_per_s);
        Self {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_nesting_outside_strings() {
        assert_eq!(json_depth("3"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"{"a":"[[[[{{{\"]]"}"#), 1);
        assert_eq!(json_depth(&"[".repeat(10_000)), 10_000);
    }

    #[test]
    fn counts_connections_per_owner() {
        let registry = Arc::new(OwnerConnections::default());
        let first = registry.acquire("alice", 2).expect("first");
        let _second = registry.acquire("alice", 2).expect("second");
        assert!(registry.acquire("alice", 2).is_none());
        assert!(registry.acquire("bob", 2).is_some());
        drop(first);
        assert!(registry.acquire("alice", 2).is_some());
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(5);
        let allowed = (0..100).filter(|_| bucket.take()).count();
        assert_eq!(allowed, 10);
    }
}
