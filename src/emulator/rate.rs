//! The gate in front of every RingCentral endpoint, and the rate limiter in it.
//!
//! Every RingCentral request goes through the same gate, in this order:
//! 1. accounting (`by_endpoint`; `media_by_recording` for recording content),
//! 2. the rate limiter of the endpoint's group (`by_group`; 429 `CMN-301`, penalty restarts),
//!    including forced 429s from [`Faults`](super::Faults),
//! 3. injected 5xx answers,
//! 4. authentication (Basic client credentials for OAuth, Bearer or `access_token` otherwise),
//! 5. the endpoint itself.
//!
//! Steps 1-3 are [`State::gated`]; the handler passed to it does 4 and 5 (see `oauth`).
//!
//! Rate limiting comes before authentication on purpose: counting failed requests too is the
//! stricter choice, and an emulator must not be kinder than the real service. Every answer of a
//! RingCentral endpoint carries the `X-Rate-Limit-*` headers of its group.
//!
//! The gate also watches the client: a request sent in a group before the `Retry-After` of that
//! group's last 429 has passed is counted in `Stats::retry_after_violations`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::reply::{server_error, too_many_requests};
use super::state::{Group, State, lock, now_ms};

/// What the limiter decided about one request.
enum Admission {
    Allowed { remaining: u32 },
    Throttled { retry_after: Duration },
}

impl State {
    fn limit(&self, g: Group) -> u32 {
        let r = &self.cfg.rate;
        match g {
            Group::Heavy => r.heavy,
            Group::Auth => r.auth,
            Group::Light => r.light,
            Group::Medium => r.medium,
        }
    }

    fn admit(&self, g: Group) -> Admission {
        let now = Instant::now();
        let limit = self.limit(g);
        let penalty = self.cfg.rate.penalty;
        let (admission, violation) = {
            let mut buckets = lock(&self.rate);
            let b = &mut buckets[g.index()];
            if b.penalty_until.is_some_and(|until| now < until) {
                // The real penalty: a request during it restarts it.
                b.penalty_until = Some(now + penalty);
                (
                    Admission::Throttled {
                        retry_after: penalty,
                    },
                    true,
                )
            } else {
                // A penalty that ran out leaves a fresh window behind.
                if b.penalty_until.take().is_some() {
                    b.window_start = None;
                }
                if b.window_start
                    .is_none_or(|start| now >= start + self.cfg.rate.window)
                {
                    b.window_start = Some(now);
                    b.count = 0;
                }
                if b.count >= limit {
                    b.penalty_until = Some(now + penalty);
                    (
                        Admission::Throttled {
                            retry_after: penalty,
                        },
                        false,
                    )
                } else {
                    b.count += 1;
                    (
                        Admission::Allowed {
                            remaining: limit - b.count,
                        },
                        false,
                    )
                }
            }
        };
        let mut stats = lock(&self.stats);
        *stats.by_group.entry(g.name().to_string()).or_default() += 1;
        if let Admission::Throttled { .. } = admission {
            stats.throttled += 1;
            if violation {
                stats.penalty_violations += 1;
            }
        }
        admission
    }

    fn rate_headers(&self, g: Group, remaining: u32, resp: &mut Response) {
        let h = resp.headers_mut();
        // The header is whole seconds, as on the real service. Round a fractional window *up*:
        // advertising 2 for a 2.5 s window would make a client that trusts the header pace too
        // fast and meet 429s the real service would never send it.
        let window = self.cfg.rate.window.as_millis().div_ceil(1000).max(1) as u64;
        h.insert(
            HeaderName::from_static("x-rate-limit-group"),
            HeaderValue::from_static(g.header()),
        );
        h.insert(
            HeaderName::from_static("x-rate-limit-limit"),
            HeaderValue::from(self.limit(g)),
        );
        h.insert(
            HeaderName::from_static("x-rate-limit-remaining"),
            HeaderValue::from(remaining),
        );
        h.insert(
            HeaderName::from_static("x-rate-limit-window"),
            HeaderValue::from(window),
        );
    }

    /// Steps 1-3 of the gate, then `handler`; adds the rate headers to whatever is answered.
    pub(super) fn gated(
        &self,
        endpoint: &str,
        g: Group,
        handler: impl FnOnce() -> Response,
    ) -> Response {
        *lock(&self.stats)
            .by_endpoint
            .entry(endpoint.to_string())
            .or_default() += 1;
        self.advance_live(now_ms());
        self.check_retry_after(g);
        let faults = self.faults();
        let (mut resp, remaining) = if self.roll(faults.force_429_fraction) {
            self.fault_injected();
            let mut stats = lock(&self.stats);
            *stats.by_group.entry(g.name().to_string()).or_default() += 1;
            stats.throttled += 1;
            drop(stats);
            (
                too_many_requests(faults.force_429_retry_after.map(Duration::from_secs)),
                0,
            )
        } else {
            match self.admit(g) {
                Admission::Throttled { retry_after } => {
                    tracing::debug!(endpoint, group = g.name(), "429: rate limit");
                    (too_many_requests(Some(retry_after)), 0)
                }
                Admission::Allowed { remaining } => {
                    if self.roll(faults.error_5xx_fraction) {
                        self.fault_injected();
                        (self.server_error(), remaining)
                    } else {
                        (handler(), remaining)
                    }
                }
            }
        };
        self.rate_headers(g, remaining, &mut resp);
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            self.advertise_retry_after(g, &resp);
        }
        resp
    }

    /// Counts a request that arrived while the client was told to wait (see
    /// `Stats::retry_after_violations`).
    fn check_retry_after(&self, g: Group) {
        let now = Instant::now();
        let violation = lock(&self.advertised)[g.index()]
            .is_some_and(|(sent, until)| now >= sent + super::IN_FLIGHT_GRACE && now < until);
        if violation {
            tracing::debug!(
                group = g.name(),
                "request before the Retry-After of a 429 passed"
            );
            lock(&self.stats).retry_after_violations += 1;
        }
    }

    /// Remembers how long a 429 told the client to wait (30 s without `Retry-After`).
    fn advertise_retry_after(&self, g: Group, resp: &Response) {
        let secs = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(30);
        let now = Instant::now();
        let until = now + Duration::from_secs(secs);
        let mut adv = lock(&self.advertised);
        let slot = &mut adv[g.index()];
        // A later 429 with an earlier end does not shorten the wait already asked for.
        *slot = Some((now, slot.map_or(until, |(_, u)| u.max(until))));
    }

    fn server_error(&self) -> Response {
        server_error(self.counter.fetch_add(1, Ordering::Relaxed))
    }
}
