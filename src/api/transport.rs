//! The one request path: every request the client sends goes through [`Transport::execute`],
//! with pacing, auth and retries.
//!
//! Every request goes through [`Transport::execute`]:
//! 1. acquire a permit from the pacer of the request's rate group (priority-ordered);
//! 2. for API requests, get the current access token. [`Transport::bearer`] renews it under one
//!    async mutex, so only one refresh (or JWT login) is ever in flight and the others wait for
//!    its result; it renews before expiry (see [`auth::renew_early_ms`]); it refreshes with the
//!    refresh token when there is one, and logs in with the JWT when there is none or the
//!    service rejects it (after checking whether another process stored fresher tokens);
//! 3. stamp the permit and send; learn from the `X-Rate-Limit-*` headers;
//! 4. on 429 hold the whole group for `Retry-After` (30 s when missing) and retry through the
//!    pacer; on 503 wait `Retry-After`; on other 5xx, transport errors and timeouts back off
//!    exponentially (capped, with jitter); on 401 with a bearer token retry once with the
//!    current token (renewing it first if the one that failed is still current); other 4xx are
//!    returned at once. Every retry acquires a new permit and is counted.
//!
//! The bound: `max_retries` retries per request, whatever their cause (the one 401 retry
//! aside), for requests that retry here at all (`Req::retry_transient`; media requests do not,
//! the media layer owns their budget). A JSON body cut short after a good status is resent by
//! [`Transport::get_json`] from the same count, so a request is sent at most `max_retries + 1`
//! times however its failures mix.
//!
//! Timeouts: on connect (reqwest's `connect_timeout`), on waiting for response headers, and on
//! each body chunk (`stall_timeout`, applied around each await by the reader). There is no
//! total request timeout, so a long healthy download is never cut, and a consumer that pauses
//! between chunks does not trip anything.
//!
//! The token renewal lives here rather than in `auth` because it sends requests through this
//! same path (token requests are paced in the `Auth` group and retried like any other);
//! `auth` holds the pure parts (what a token answer means, when to renew, the state file).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::Priority;
use super::auth::{self, Secret, Tokens};
use super::credentials::Credentials;
use super::error::ApiError;
use super::pacer::{self, Pacers, RateGroup};

/// What the transport needs to know (the request-path part of [`super::ClientConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct TransportConfig {
    /// App credentials and JWT.
    pub credentials: Credentials,
    /// Where tokens are kept across restarts (mode 0600). `None`: memory only.
    pub state_file: Option<PathBuf>,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on waiting for response headers and for each body chunk.
    pub stall_timeout: Duration,
    /// Retries per request that retries here (see the module docs).
    pub max_retries: u32,
    /// First backoff delay for 5xx and transport errors; doubles per retry.
    pub backoff_base: Duration,
    /// Cap on the backoff delay.
    pub backoff_max: Duration,
}

/// Counters of what the client did (since it was created, shared by clones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent, by rate group name (`Heavy`, `Auth`, ...). Retries included.
    pub requests_by_group: BTreeMap<String, u64>,
    /// Requests that were retries (of any cause).
    pub retries: u64,
    /// 429 answers received.
    pub throttled: u64,
    /// 401 answers received.
    pub unauthorized: u64,
    /// JWT logins performed.
    pub logins: u64,
    /// Refresh-token grants performed.
    pub refreshes: u64,
    /// Call-log records skipped as broken.
    pub records_skipped: u64,
}

impl ClientStats {
    /// Requests sent in one group.
    pub fn requests(&self, group: &str) -> u64 {
        self.requests_by_group.get(group).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct Counters {
    /// Indexed by `RateGroup as usize`.
    requests: [AtomicU64; 4],
    retries: AtomicU64,
    throttled: AtomicU64,
    unauthorized: AtomicU64,
    logins: AtomicU64,
    refreshes: AtomicU64,
    records_skipped: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Which credentials a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthKind {
    /// `Authorization: Bearer <access token>` (API and media requests).
    Bearer,
    /// `Authorization: Basic base64(client_id:client_secret)` (token endpoint).
    Basic,
}

/// One request to send (and possibly resend).
pub(crate) struct Req {
    pub method: Method,
    pub url: String,
    pub query: Vec<(&'static str, String)>,
    /// Form body; may contain secrets, never logged.
    pub form: Vec<(&'static str, String)>,
    pub auth: AuthKind,
    pub group: RateGroup,
    /// Send `Range: bytes={n}-`.
    pub range_from: Option<u64>,
    /// Non-2xx statuses handed back as `Ok(response)` instead of an error (416 for media).
    pub passthrough: &'static [u16],
    /// Retry 5xx, 429, transport errors and timeouts here. Media requests say no: the media
    /// layer counts every request made for a recording and owns their one retry budget.
    pub retry_transient: bool,
    /// What this is, for errors and logs ("GET call-log"). Never contains secrets.
    pub context: String,
}

impl Req {
    /// What the request is for, as the pacer's queue shows it: media requests are the ones
    /// that do not retry here.
    pub fn kind(&self) -> pacer::RequestKind {
        match self.group {
            RateGroup::Auth => pacer::RequestKind::Auth,
            RateGroup::Heavy if !self.retry_transient => pacer::RequestKind::Download,
            RateGroup::Heavy => pacer::RequestKind::Listing,
            RateGroup::Light | RateGroup::Medium => pacer::RequestKind::Other,
        }
    }

    /// A bearer-authenticated `GET` that retries here.
    pub fn get(url: String, group: RateGroup, context: impl Into<String>) -> Req {
        Req {
            method: Method::GET,
            url,
            query: Vec::new(),
            form: Vec::new(),
            auth: AuthKind::Bearer,
            group,
            range_from: None,
            passthrough: &[],
            retry_transient: true,
            context: context.into(),
        }
    }
}

struct AuthState {
    tokens: Option<Tokens>,
    /// Whether the state file has been read.
    loaded: bool,
}

struct Shared {
    cfg: TransportConfig,
    http: reqwest::Client,
    pacers: Pacers,
    /// The only place tokens change; held across a renewal so renewals are single-flight.
    auth: tokio::sync::Mutex<AuthState>,
    /// Bumped each time the access token changes.
    generation: AtomicU64,
    counters: Counters,
    /// xorshift state for the backoff jitter.
    jitter: AtomicU64,
}

/// The request path. Cheap to clone; clones share tokens, pacers and counters.
#[derive(Clone)]
pub(crate) struct Transport {
    shared: Arc<Shared>,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Whether a URL names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(url: &str) -> bool {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

impl Transport {
    /// Builds the HTTP client. Sends nothing.
    pub fn new(cfg: TransportConfig) -> Result<Transport, ApiError> {
        // Proxies from the environment (HTTPS_PROXY, NO_PROXY) are honoured for a real server,
        // as users behind a corporate proxy need; a loopback server (the emulator) is always
        // reached directly, so a proxy set in a developer's shell cannot break the tests.
        let mut builder = super::http_client_builder();
        if is_loopback(&cfg.credentials.server_url) {
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("ringfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Config(format!("HTTP client: {e}")))?;
        let seed = (now_ms() as u64) ^ (std::process::id() as u64).rotate_left(32) | 1;
        Ok(Transport {
            shared: Arc::new(Shared {
                cfg,
                http,
                pacers: Pacers::new(),
                auth: tokio::sync::Mutex::new(AuthState {
                    tokens: None,
                    loaded: false,
                }),
                generation: AtomicU64::new(0),
                counters: Counters::default(),
                jitter: AtomicU64::new(seed),
            }),
        })
    }

    /// The API server's base URL.
    pub fn server(&self) -> &str {
        &self.shared.cfg.credentials.server_url
    }

    /// The app's client id (not a secret; shown by `Debug`).
    pub fn client_id(&self) -> &str {
        &self.shared.cfg.credentials.client_id
    }

    /// Makes sure there is a usable access token: the stored one if still fresh (no request),
    /// else a refresh or a JWT login.
    pub async fn login(&self, prio: Priority) -> Result<(), ApiError> {
        self.bearer(prio).await.map(|_| ())
    }

    /// Revokes the current session's access token (best effort) and forgets the stored tokens.
    pub async fn logout(&self) -> Result<(), ApiError> {
        let sh = &self.shared;
        let mut st = sh.auth.lock().await;
        self.load_state(&mut st).await;
        let tokens = st.tokens.take();
        sh.generation.fetch_add(1, Ordering::SeqCst);
        self.store_tokens(None).await?;
        drop(st);
        if let Some(t) = tokens {
            let mut req = self.token_req("revoke", "token revoke");
            req.form.push(("token", t.access.0.clone()));
            self.execute(&req, Priority::Interactive).await?;
        }
        Ok(())
    }

    /// Counts call-log records skipped as broken.
    pub fn note_skipped(&self, n: u64) {
        if n > 0 {
            self.shared
                .counters
                .records_skipped
                .fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            requests_by_group: RateGroup::ALL
                .iter()
                .map(|g| (g.name().to_owned(), get(&c.requests[*g as usize])))
                .filter(|(_, n)| *n > 0)
                .collect(),
            retries: get(&c.retries),
            throttled: get(&c.throttled),
            unauthorized: get(&c.unauthorized),
            logins: get(&c.logins),
            refreshes: get(&c.refreshes),
            records_skipped: get(&c.records_skipped),
        }
    }

    /// What every group's pacer holds now (no request).
    pub fn rate_snapshot(&self) -> Vec<pacer::GroupSnapshot> {
        RateGroup::ALL
            .iter()
            .map(|g| self.shared.pacers.get(*g).snapshot())
            .collect()
    }

    /// Sends `req` and decodes a JSON body. A body cut short is retried like a transport error,
    /// from the same budget of retries as the request itself: at most `max_retries + 1` sends
    /// whatever fails.
    pub async fn get_json(&self, req: &Req, prio: Priority) -> Result<Value, ApiError> {
        let mut retries = 0u32;
        loop {
            let resp = self.execute_counted(req, prio, &mut retries).await?;
            match self.read_body(resp, &req.context).await {
                Ok(body) => {
                    return serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                        context: req.context.clone(),
                        detail: format!("invalid JSON: {e}"),
                    });
                }
                Err(e)
                    if e.is_transient()
                        && req.retry_transient
                        && retries < self.shared.cfg.max_retries =>
                {
                    let d = self.backoff(retries);
                    retries += 1;
                    bump(&self.shared.counters.retries);
                    tracing::debug!(context = %req.context, "body failed ({}); retrying in {d:?}", super::chain(&e));
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a whole (small) body, with the stall timeout around each chunk.
    pub async fn read_body(
        &self,
        resp: reqwest::Response,
        context: &str,
    ) -> Result<Vec<u8>, ApiError> {
        const MAX: usize = 256 << 20;
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(1 << 20) as usize);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = self.next_body_chunk(&mut stream, context).await? {
            if body.len() + chunk.len() > MAX {
                return Err(ApiError::Decode {
                    context: context.to_owned(),
                    detail: "body too large".into(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Reads one chunk of a body with the stall timeout; `None` at its clean end.
    pub async fn next_body_chunk<S>(
        &self,
        stream: &mut S,
        context: &str,
    ) -> Result<Option<Bytes>, ApiError>
    where
        S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        match tokio::time::timeout(self.shared.cfg.stall_timeout, stream.next()).await {
            Err(_) => Err(ApiError::Timeout {
                context: context.to_owned(),
                what: "waiting for body data",
            }),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(ApiError::Transport {
                context: context.to_owned(),
                source: e,
            }),
            Ok(Some(Ok(b))) => Ok(Some(b)),
        }
    }

    /// Sends `req` with pacing, auth and retries; returns the first successful (or passthrough)
    /// response.
    pub async fn execute(&self, req: &Req, prio: Priority) -> Result<reqwest::Response, ApiError> {
        self.execute_counted(req, prio, &mut 0).await
    }

    /// [`Transport::execute`], spending retries from `retries` (shared with a caller that also
    /// retries, so that one bound covers both).
    async fn execute_counted(
        &self,
        req: &Req,
        prio: Priority,
        retries: &mut u32,
    ) -> Result<reqwest::Response, ApiError> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let mut auth_retried = false;
        loop {
            // A bearer request in the Auth group (`wstoken`) gets its token before its permit:
            // renewing the token takes an Auth permit of its own, which the pacer may not
            // grant while this request holds one (before the group's first answer it grants
            // one at a time), so renewing under the permit would wait forever. A token that
            // expires while the permit is awaited earns a 401, which is retried below.
            let mut early = None;
            if req.auth == AuthKind::Bearer && req.group == RateGroup::Auth {
                early = Some(self.bearer(prio).await?);
            }
            let permit = sh.pacers.get(req.group).acquire_as(prio, req.kind()).await;
            let mut rb = sh.http.request(req.method.clone(), &req.url);
            if !req.query.is_empty() {
                rb = rb.query(&req.query);
            }
            if !req.form.is_empty() {
                rb = rb.form(&req.form);
            }
            if let Some(from) = req.range_from {
                rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let mut generation = 0;
            match req.auth {
                AuthKind::Bearer => {
                    let (token, g) = match early.take() {
                        Some(t) => t,
                        None => self.bearer(prio).await?,
                    };
                    generation = g;
                    rb = rb.bearer_auth(&token.0);
                }
                AuthKind::Basic => {
                    rb = rb.basic_auth(
                        &cfg.credentials.client_id,
                        Some(&cfg.credentials.client_secret),
                    );
                }
            }
            // Getting the token may have taken a while (a renewal waits on the Auth group), and a
            // 429 to another request may have put the group on hold meanwhile: sending now would
            // restart the penalty. Queue again; this is not a retry, nothing was sent.
            if sh.pacers.get(req.group).held_until().is_some() {
                drop(permit);
                continue;
            }
            permit.stamp();
            bump(&sh.counters.requests[req.group as usize]);
            tracing::debug!(context = %req.context, group = req.group.name(), ?prio, retry = retries, "sending request");
            let sent = tokio::time::timeout(cfg.stall_timeout, rb.send()).await;
            crate::metrics::request(
                req.group.name(),
                match &sent {
                    Err(_) => "timeout",
                    Ok(Err(_)) => "transport_error",
                    Ok(Ok(r)) => crate::metrics::outcome_of_status(r.status().as_u16()),
                },
            );
            let mut wait = None;
            let err = match sent {
                Err(_) => ApiError::Timeout {
                    context: req.context.clone(),
                    what: "waiting for response headers",
                },
                Ok(Err(e)) if e.is_builder() => {
                    return Err(ApiError::Config(format!("{}: {e}", req.context)));
                }
                Ok(Err(e)) => ApiError::Transport {
                    context: req.context.clone(),
                    source: e,
                },
                Ok(Ok(resp)) => {
                    let held = sh
                        .pacers
                        .observe(req.group, resp.status().as_u16(), resp.headers());
                    let status = resp.status().as_u16();
                    if resp.status().is_success() || req.passthrough.contains(&status) {
                        return Ok(resp);
                    }
                    let retry_after = pacer::retry_after(resp.headers());
                    let body = self.read_body(resp, &req.context).await.unwrap_or_default();
                    let err = ApiError::from_body(status, &body, req.context.clone());
                    tracing::debug!(context = %req.context, status, code = ?err.error_code(), "service error");
                    match status {
                        429 => {
                            // `observe` above already holds the group.
                            bump(&sh.counters.throttled);
                            let d = held.unwrap_or(pacer::DEFAULT_RETRY_AFTER);
                            tracing::warn!(
                                group = req.group.name(),
                                "429 received; holding the group for {d:?}"
                            );
                        }
                        401 if req.auth == AuthKind::Bearer && !auth_retried => {
                            bump(&sh.counters.unauthorized);
                            auth_retried = true;
                            self.invalidate(generation).await;
                            bump(&sh.counters.retries);
                            tracing::debug!(context = %req.context, "401: retrying once with the current token");
                            continue;
                        }
                        401 => {
                            bump(&sh.counters.unauthorized);
                            return Err(err);
                        }
                        503 => wait = Some(retry_after.unwrap_or_else(|| self.backoff(*retries))),
                        s if s >= 500 => wait = Some(self.backoff(*retries)),
                        _ => return Err(err),
                    }
                    err
                }
            };
            // The answer (or the failure) is in: the slot starts ageing now, not after the backoff.
            drop(permit);
            if *retries >= cfg.max_retries || !req.retry_transient {
                return Err(err);
            }
            let wait = match (&err, wait) {
                (_, Some(w)) => w,
                (ApiError::Transport { .. } | ApiError::Timeout { .. }, None) => {
                    self.backoff(*retries)
                }
                _ => Duration::ZERO,
            };
            *retries += 1;
            bump(&sh.counters.retries);
            tracing::debug!(context = %req.context, retry = retries, "retrying in {wait:?} after: {}", super::chain(&err));
            tokio::time::sleep(wait).await;
        }
    }

    /// Capped exponential backoff with jitter: a random delay in `[d/2, d]`,
    /// `d = min(base * 2^retry, max)`.
    fn backoff(&self, retry: u32) -> Duration {
        let cfg = &self.shared.cfg;
        let d = cfg
            .backoff_base
            .saturating_mul(1u32 << retry.min(20))
            .min(cfg.backoff_max);
        // xorshift64*: jitter only, not security.
        let mut x = self.shared.jitter.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.shared.jitter.store(x, Ordering::Relaxed);
        let r = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + 0.5 * r)
    }

    fn token_req(&self, endpoint: &str, context: &str) -> Req {
        Req {
            method: Method::POST,
            url: format!("{}/restapi/oauth/{endpoint}", self.server()),
            query: Vec::new(),
            form: Vec::new(),
            auth: AuthKind::Basic,
            group: RateGroup::Auth,
            range_from: None,
            passthrough: &[],
            retry_transient: true,
            context: context.to_owned(),
        }
    }

    async fn load_state(&self, st: &mut AuthState) {
        if st.loaded {
            return;
        }
        st.loaded = true;
        if let Some(t) = self.stored_tokens().await {
            tracing::debug!("using tokens from the state file");
            st.tokens = Some(t);
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The tokens the state file holds for these credentials. File I/O runs on the blocking
    /// pool, not on a runtime worker that other requests and reads are waiting for.
    async fn stored_tokens(&self) -> Option<Tokens> {
        let path = self.shared.cfg.state_file.clone()?;
        let creds = self.shared.cfg.credentials.clone();
        tokio::task::spawn_blocking(move || auth::load(&path, &creds))
            .await
            .ok()
            .flatten()
    }

    /// Writes (or with `None`, forgets) the tokens in the state file, fsync included, on the
    /// blocking pool.
    async fn store_tokens(&self, tokens: Option<Tokens>) -> Result<(), ApiError> {
        let Some(path) = self.shared.cfg.state_file.clone() else {
            return Ok(());
        };
        let creds = self.shared.cfg.credentials.clone();
        let stored =
            tokio::task::spawn_blocking(move || auth::store(&path, &creds, tokens.as_ref())).await;
        stored.unwrap_or_else(|e| Err(ApiError::Config(format!("saving tokens: {e}"))))
    }

    /// The current access token and its generation, renewing it first when needed. Holding the
    /// auth mutex across the renewal makes it the single place tokens are renewed.
    async fn bearer(&self, prio: Priority) -> Result<(Secret, u64), ApiError> {
        let sh = &self.shared;
        let mut st = sh.auth.lock().await;
        self.load_state(&mut st).await;
        if let Some(t) = &st.tokens
            && t.access_fresh(now_ms())
        {
            return Ok((t.access.clone(), sh.generation.load(Ordering::SeqCst)));
        }
        let tokens = self.renew(&st, prio).await?;
        let access = tokens.access.clone();
        if let Err(e) = self.store_tokens(Some(tokens.clone())).await {
            tracing::warn!("cannot save tokens: {}", super::chain(&e));
        }
        st.tokens = Some(tokens);
        let generation = sh.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((access, generation))
    }

    /// Refresh when a refresh token is usable; JWT login otherwise or when the refresh is refused.
    async fn renew(&self, st: &AuthState, prio: Priority) -> Result<Tokens, ApiError> {
        let sh = &self.shared;
        let now = now_ms();
        if let Some(rt) = st.tokens.as_ref().and_then(|t| t.usable_refresh(now)) {
            let mut req = self.token_req("token", "token refresh");
            req.form.push(("grant_type", "refresh_token".into()));
            req.form.push(("refresh_token", rt.0.clone()));
            match self.token_grant(&req, prio).await {
                Ok(t) => {
                    bump(&sh.counters.refreshes);
                    tracing::debug!(
                        expires_in = t.access_ttl,
                        refresh = t.refresh.is_some(),
                        "access token refreshed"
                    );
                    return Ok(t);
                }
                Err(e) if e.is_service() && !e.is_transient() => {
                    tracing::info!("refresh refused ({e}); logging in with the JWT");
                    // Another process with the same state file may have used the refresh token.
                    if let Some(stored) = self.stored_tokens().await
                        && Some(&stored.access) != st.tokens.as_ref().map(|t| &t.access)
                        && stored.access_fresh(now_ms())
                    {
                        tracing::debug!("adopting tokens another process stored");
                        return Ok(stored);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let mut req = self.token_req("token", "JWT login");
        req.form.push((
            "grant_type",
            "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
        ));
        req.form.push(("assertion", sh.cfg.credentials.jwt.clone()));
        let t = self.token_grant(&req, prio).await?;
        bump(&sh.counters.logins);
        tracing::debug!(
            expires_in = t.access_ttl,
            refresh = t.refresh.is_some(),
            "logged in with the JWT"
        );
        Ok(t)
    }

    async fn token_grant(&self, req: &Req, prio: Priority) -> Result<Tokens, ApiError> {
        // Boxed: `execute` -> `bearer` -> `renew` -> `execute` is recursive as a type, although
        // a token request never asks for a bearer token.
        let v = Box::pin(self.get_json(req, prio)).await?;
        Tokens::from_response(&v, now_ms()).map_err(|detail| ApiError::Decode {
            context: req.context.clone(),
            detail,
        })
    }

    /// After a 401: if the token that failed is still the current one, force a renewal.
    async fn invalidate(&self, generation: u64) {
        let mut st = self.shared.auth.lock().await;
        if self.shared.generation.load(Ordering::SeqCst) == generation
            && let Some(t) = st.tokens.as_mut()
        {
            t.expire_access();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport() -> Transport {
        Transport::new(TransportConfig {
            credentials: Credentials {
                server_url: "http://127.0.0.1:1".into(),
                client_id: "id".into(),
                client_secret: "secret-s3cr3t".into(),
                jwt: "jwt-j3wt".into(),
            },
            state_file: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        })
        .unwrap()
    }

    #[test]
    fn only_loopback_servers_bypass_the_proxy() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:1/restapi",
            "http://[::1]:9/",
            "http://127.3.4.5",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://platform.ringcentral.com",
            "https://10.0.0.1",
            "http://[2001:db8::1]/",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let t = transport();
        for retry in 0..30 {
            let d = t.backoff(retry);
            let full = Duration::from_millis(500)
                .saturating_mul(1 << retry.min(20))
                .min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
        let a: Vec<_> = (0..8).map(|_| t.backoff(3)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "jitter varies: {a:?}");
    }

    #[test]
    fn config_debug_shows_no_secrets() {
        let t = transport();
        let d = format!("{:?}", t.shared.cfg);
        assert!(!d.contains("s3cr3t") && !d.contains("j3wt"), "{d}");
    }

    #[test]
    fn transport_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Transport>();
    }
}
