//! The retry budget: retries may be at most a set fraction of requests, so a sick cluster is
//! not hammered by a storm of retries on top of its normal load. Each worker keeps its own.

/// Retries saved up at most (and at start, unless the budget is zero), so a short burst of
/// failures can still be retried.
const MAX_TOKENS: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retry tokens earned per request (the budget's fraction).
    per_request: f64,
    tokens: f64,
}

impl RetryBudget {
    /// A budget of `percent` retries per 100 requests.
    pub fn new(percent: u32) -> RetryBudget {
        let per_request = f64::from(percent) / 100.0;
        let tokens = if percent > 0 { MAX_TOKENS } else { 0.0 };
        RetryBudget {
            per_request,
            tokens,
        }
    }

    /// A new request earns its fraction of a retry.
    pub fn on_request(&mut self) {
        self.tokens = (self.tokens + self.per_request).min(MAX_TOKENS);
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_retry(&mut self) -> bool {
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustained_retries_are_held_to_the_budget() {
        let mut budget = RetryBudget::new(20);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.on_request();
            if budget.try_retry() {
                retries += 1;
            }
        }
        // 20% of 1000 requests, plus up to the tokens saved up at the start.
        assert!((200..=250).contains(&retries), "{retries}");
    }

    #[test]
    fn a_short_burst_is_retried_in_full() {
        let mut budget = RetryBudget::new(20);
        assert!((0..50).all(|_| budget.try_retry()));
        assert!(!budget.try_retry());
    }

    #[test]
    fn a_zero_budget_allows_no_retry() {
        let mut budget = RetryBudget::new(0);
        (0..100).for_each(|_| budget.on_request());
        assert!(!budget.try_retry());
    }
}
