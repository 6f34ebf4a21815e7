//! The per-connection token bucket behind the publish rate limit.

use tokio::time::Instant;

/// Refills `rate` tokens per second up to `burst`; one frame costs one token.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket::new(10.0, 3.0);
        assert!((0..3).all(|_| b.try_take()));
        assert!(!b.try_take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_take());
        assert!(!b.try_take());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 3);
    }
}
