//! The HTTP client: one place that sends every request, through the pacer, with auth and retries.
//!
//! Every request goes through [`Client::execute`]:
//! 1. acquire a permit from the pacer of the request's rate group (priority-ordered);
//! 2. for API requests, get the current access token. [`Client::bearer`] renews it under one
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
//! Timeouts: on connect (reqwest's `connect_timeout`), on waiting for response headers, and on
//! each body chunk (`stall_timeout`, applied around each await by the reader). There is no
//! total request timeout, so a long healthy download is never cut, and a consumer that pauses
//! between chunks does not trip anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::{fmt, path::PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;

use super::auth::{self, Secret, Tokens};
use super::media::MediaStream;
use super::pacer::{self, Pacers, RateGroup};
use super::records::{self, CallRecord, RecordingMeta};
use super::{ApiError, Credentials, Priority, Scope};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// App credentials and JWT.
    pub credentials: Credentials,
    /// Where tokens are kept across restarts (mode 0600). `None`: memory only.
    pub state_file: Option<PathBuf>,
    /// Media host base URL for [`Client::recording_content_url`]. `None`: learned from the
    /// `contentUri`s seen, else derived from the API host (`platform.X` -> `media.X`).
    pub media_base: Option<String>,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on waiting for response headers and for each body chunk.
    pub stall_timeout: Duration,
    /// Retries per API request before giving up (media requests are bounded by the media layer).
    pub max_retries: u32,
    /// First backoff delay for 5xx and transport errors; doubles per retry.
    pub backoff_base: Duration,
    /// Cap on the backoff delay.
    pub backoff_max: Duration,
}

impl ClientConfig {
    /// Defaults: no state file, 10 s connect, 30 s stall, 5 retries, backoff 500 ms .. 30 s.
    pub fn new(credentials: Credentials) -> Self {
        ClientConfig {
            credentials,
            state_file: None,
            media_base: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters of what the client did (since it was created, shared by clones).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent, by rate group name (`Heavy`, `Auth`, ...). Retries included.
    pub requests_by_group: std::collections::BTreeMap<String, u64>,
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

struct Inner {
    cfg: ClientConfig,
    http: reqwest::Client,
    pacers: Pacers,
    auth: tokio::sync::Mutex<AuthState>,
    /// Bumped each time the access token changes.
    generation: AtomicU64,
    /// Media base learned from `contentUri`s.
    learned_media: Mutex<Option<String>>,
    counters: Counters,
    jitter: AtomicU64,
}

/// The RingCentral client. Cheap to clone; clones share tokens, pacers and counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server_url", &self.inner.cfg.credentials.server_url)
            .field("client_id", &self.inner.cfg.credentials.client_id)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// ISO 8601 with milliseconds and `Z`, as the call log expects.
pub(crate) fn iso(ts: jiff::Timestamp) -> String {
    format!("{ts:.3}")
}

/// Whether a URL names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(url: &str) -> bool {
    match url::Url::parse(url).ok().and_then(|u| u.host().map(|h| h.to_owned())) {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// `scheme://host[:port]` plus any path before `/restapi/` of an absolute URL.
fn media_base_of(uri: &str) -> Option<String> {
    let u = url::Url::parse(uri).ok()?;
    let origin = u.origin();
    if !origin.is_tuple() {
        return None;
    }
    let prefix = u.path().find("/restapi/").map(|i| &u.path()[..i]).unwrap_or("");
    Some(format!("{}{}", origin.ascii_serialization(), prefix))
}

impl Client {
    /// Builds the client. Sends nothing.
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        url::Url::parse(&config.credentials.server_url)
            .map_err(|e| ApiError::Config(format!("server URL: {e}")))?;
        if let Some(m) = &config.media_base {
            url::Url::parse(m).map_err(|e| ApiError::Config(format!("media base URL: {e}")))?;
        }
        // Proxies from the environment (HTTPS_PROXY, NO_PROXY) are honoured for a real server,
        // as users behind a corporate proxy need; a loopback server (the emulator) is always
        // reached directly, so a proxy set in a developer's shell cannot break the tests.
        let mut builder = super::http_client_builder();
        if is_loopback(&config.credentials.server_url) {
            builder = builder.no_proxy();
        }
        let http = builder
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("ringfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Config(format!("HTTP client: {e}")))?;
        let seed = (now_ms() as u64) ^ (std::process::id() as u64).rotate_left(32) | 1;
        Ok(Client {
            inner: Arc::new(Inner {
                cfg: config,
                http,
                pacers: Pacers::new(),
                auth: tokio::sync::Mutex::new(AuthState { tokens: None, loaded: false }),
                generation: AtomicU64::new(0),
                learned_media: Mutex::new(None),
                counters: Counters::default(),
                jitter: AtomicU64::new(seed),
            }),
        })
    }

    fn server(&self) -> &str {
        &self.inner.cfg.credentials.server_url
    }

    /// Makes sure there is a usable access token: the stored one if still fresh (no request),
    /// else a refresh or a JWT login.
    pub async fn login(&self) -> Result<(), ApiError> {
        self.bearer(Priority::Interactive).await.map(|_| ())
    }

    /// Revokes the current session's access token (best effort) and forgets the stored tokens.
    pub async fn logout(&self) -> Result<(), ApiError> {
        let mut st = self.inner.auth.lock().await;
        self.load_state(&mut st);
        let tokens = st.tokens.take();
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(path) = &self.inner.cfg.state_file {
            auth::store(path, &self.inner.cfg.credentials, None)?;
        }
        drop(st);
        if let Some(t) = tokens {
            let mut req = self.token_req("revoke", "token revoke");
            req.form.push(("token", t.access.0.clone()));
            self.execute(&req, Priority::Interactive).await?;
        }
        Ok(())
    }

    /// Every call-log record with a recording in `[from, to)`, all pages.
    pub async fn list_recorded(
        &self,
        scope: Scope,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        prio: Priority,
    ) -> Result<Vec<CallRecord>, ApiError> {
        let mut req = Req::get(self.call_log_url(scope), RateGroup::Heavy, format!("GET {} call log", scope.name()));
        req.query = vec![
            ("dateFrom", iso(from)),
            ("dateTo", iso(to)),
            ("recordingType", "All".into()),
            ("view", "Detailed".into()),
            ("perPage", "1000".into()),
        ];
        self.all_pages(req, prio).await
    }

    /// One page of the recorded-calls query for `[from, to)` (`perPage=1000`). With `next` (the
    /// `navigation.nextPage` URI an earlier page returned) it continues that query instead. Returns
    /// the records and the next page's URI, if any. The filesystem lists page by page so that it
    /// can stop as soon as the date it was asked for is covered.
    pub async fn call_log_page(
        &self,
        scope: Scope,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        next: Option<&str>,
        prio: Priority,
    ) -> Result<(Vec<CallRecord>, Option<String>), ApiError> {
        let mut req = Req::get(self.call_log_url(scope), RateGroup::Heavy, format!("GET {} call log", scope.name()));
        match next {
            Some(uri) => {
                let server_origin = url::Url::parse(self.server()).map(|u| u.origin()).ok();
                let url = url::Url::parse(self.server())
                    .and_then(|base| base.join(uri))
                    .map_err(|e| ApiError::Decode { context: req.context.clone(), detail: format!("bad nextPage uri: {e}") })?;
                if Some(url.origin()) != server_origin {
                    // The bearer token must not go to another host.
                    return Err(ApiError::Decode {
                        context: req.context.clone(),
                        detail: format!("nextPage points to another host: {}", url.origin().ascii_serialization()),
                    });
                }
                req.url = url.to_string();
            }
            None => {
                req.query = vec![
                    ("dateFrom", iso(from)),
                    ("dateTo", iso(to)),
                    ("recordingType", "All".into()),
                    ("view", "Detailed".into()),
                    ("perPage", "1000".into()),
                ];
            }
        }
        let v = self.get_json(&req, prio).await?;
        let page = records::parse_page(&v)
            .map_err(|detail| ApiError::Decode { context: req.context.clone(), detail })?;
        if page.skipped > 0 {
            self.inner.counters.records_skipped.fetch_add(page.skipped, Ordering::Relaxed);
        }
        if let Some(r) = page.records.iter().flat_map(|r| r.recordings.first()).next() {
            self.learn_media(&r.content_uri);
        }
        Ok((page.records, page.next))
    }

    /// The records of one call session (`sessionId`), searching from `date_from` until now.
    pub async fn find_session(
        &self,
        scope: Scope,
        session_id: &str,
        date_from: jiff::Timestamp,
        prio: Priority,
    ) -> Result<Vec<CallRecord>, ApiError> {
        let mut req = Req::get(
            self.call_log_url(scope),
            RateGroup::Heavy,
            format!("GET {} call log for session {session_id}", scope.name()),
        );
        req.query = vec![
            ("sessionId", session_id.to_owned()),
            ("dateFrom", iso(date_from)),
            ("dateTo", iso(jiff::Timestamp::now())),
            ("view", "Detailed".into()),
            ("perPage", "1000".into()),
        ];
        self.all_pages(req, prio).await
    }

    /// `GET /restapi/v1.0/account/~/recording/{id}`.
    pub async fn recording_meta(&self, recording_id: &str, prio: Priority) -> Result<RecordingMeta, ApiError> {
        let mut url = url::Url::parse(&format!("{}/restapi/v1.0/account/~/recording/", self.server()))
            .map_err(|e| ApiError::Config(format!("server URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| ApiError::Config("server URL cannot have a path".into()))?
            .pop_if_empty()
            .push(recording_id);
        let context = format!("recording {recording_id} metadata");
        let req = Req::get(url.to_string(), RateGroup::Heavy, context.clone());
        let v = self.get_json(&req, prio).await?;
        let meta = RecordingMeta::from_json(&v).map_err(|detail| ApiError::Decode { context, detail })?;
        self.learn_media(&meta.content_uri);
        Ok(meta)
    }

    /// The "manual" content URL `{media}/restapi/v1.0/account/~/recording/{id}/content`, when a
    /// media base is configured, learned, or derivable (`platform.X` -> `media.X`).
    pub fn recording_content_url(&self, recording_id: &str) -> Option<String> {
        let base = self
            .inner
            .cfg
            .media_base
            .clone()
            .or_else(|| self.inner.learned_media.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .or_else(|| {
                let mut u = url::Url::parse(self.server()).ok()?;
                let host = u.host_str()?.strip_prefix("platform.")?.to_owned();
                u.set_host(Some(&format!("media.{host}"))).ok()?;
                Some(u.origin().ascii_serialization())
            })?;
        let mut url = url::Url::parse(&format!("{}/", base.trim_end_matches('/'))).ok()?;
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["restapi", "v1.0", "account", "~", "recording", recording_id, "content"]);
        Some(url.to_string())
    }

    /// Starts streaming `content_uri` from byte `offset`.
    pub async fn open_media(&self, content_uri: &str, offset: u64, prio: Priority) -> Result<MediaStream, ApiError> {
        MediaStream::open(self.clone(), content_uri.to_owned(), offset, prio).await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
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

    fn call_log_url(&self, scope: Scope) -> String {
        match scope {
            Scope::Account => format!("{}/restapi/v1.0/account/~/call-log", self.server()),
            Scope::Extension => format!("{}/restapi/v1.0/account/~/extension/~/call-log", self.server()),
        }
    }

    fn learn_media(&self, content_uri: &str) {
        if let Some(base) = media_base_of(content_uri) {
            let mut m = self.inner.learned_media.lock().unwrap_or_else(|p| p.into_inner());
            if m.as_deref() != Some(base.as_str()) {
                tracing::debug!(media_base = %base, "learned media host");
                *m = Some(base);
            }
        }
    }

    async fn all_pages(&self, first: Req, prio: Priority) -> Result<Vec<CallRecord>, ApiError> {
        let server_origin = url::Url::parse(self.server()).map(|u| u.origin()).ok();
        let mut req = first;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for page_no in 1.. {
            let v = self.get_json(&req, prio).await?;
            let page = records::parse_page(&v).map_err(|detail| ApiError::Decode {
                context: format!("{} page {page_no}", req.context),
                detail,
            })?;
            if page.skipped > 0 {
                self.inner.counters.records_skipped.fetch_add(page.skipped, Ordering::Relaxed);
            }
            if let Some(r) = page.records.iter().flat_map(|r| r.recordings.first()).next() {
                self.learn_media(&r.content_uri);
            }
            tracing::debug!(context = %req.context, page = page_no, records = page.records.len(), "call log page");
            out.extend(page.records);
            let Some(next) = page.next else { break };
            let next = url::Url::parse(self.server())
                .and_then(|base| base.join(&next))
                .map_err(|e| ApiError::Decode { context: req.context.clone(), detail: format!("bad nextPage uri: {e}") })?;
            if Some(next.origin()) != server_origin {
                // The bearer token must not go to another host.
                return Err(ApiError::Decode {
                    context: req.context.clone(),
                    detail: format!("nextPage points to another host: {}", next.origin().ascii_serialization()),
                });
            }
            if !seen.insert(next.to_string()) {
                tracing::warn!(context = %req.context, "call log: nextPage repeats; stopping");
                break;
            }
            req.url = next.to_string();
            req.query.clear();
        }
        Ok(out)
    }

    /// Sends `req` and decodes a JSON body. A body cut short is retried like a transport error.
    pub(crate) async fn get_json(&self, req: &Req, prio: Priority) -> Result<Value, ApiError> {
        let mut attempt = 0u32;
        loop {
            let resp = self.execute(req, prio).await?;
            match self.read_body(resp, &req.context).await {
                Ok(body) => {
                    return serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
                        context: req.context.clone(),
                        detail: format!("invalid JSON: {e}"),
                    });
                }
                Err(e) if e.is_transient() && attempt < self.inner.cfg.max_retries => {
                    attempt += 1;
                    bump(&self.inner.counters.retries);
                    let d = self.backoff(attempt - 1);
                    tracing::debug!(context = %req.context, "body failed ({e}); retrying in {d:?}");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a whole (small) body, with the stall timeout around each chunk.
    async fn read_body(&self, resp: reqwest::Response, context: &str) -> Result<Vec<u8>, ApiError> {
        const MAX: usize = 256 << 20;
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(1 << 20) as usize);
        let mut stream = resp.bytes_stream();
        loop {
            match tokio::time::timeout(self.inner.cfg.stall_timeout, stream.next()).await {
                Err(_) => return Err(ApiError::Timeout { context: context.to_owned(), what: "waiting for body data" }),
                Ok(None) => return Ok(body),
                Ok(Some(Err(e))) => return Err(ApiError::Transport { context: context.to_owned(), source: e }),
                Ok(Some(Ok(chunk))) => {
                    if body.len() + chunk.len() > MAX {
                        return Err(ApiError::Decode { context: context.to_owned(), detail: "body too large".into() });
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Capped exponential backoff with jitter: a random delay in `[d/2, d]`,
    /// `d = min(base * 2^retry, max)`.
    fn backoff(&self, retry: u32) -> Duration {
        let cfg = &self.inner.cfg;
        let d = cfg.backoff_base.saturating_mul(1u32 << retry.min(20)).min(cfg.backoff_max);
        // xorshift64*: jitter only, not security.
        let mut x = self.inner.jitter.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.inner.jitter.store(x, Ordering::Relaxed);
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

    fn load_state(&self, st: &mut AuthState) {
        if st.loaded {
            return;
        }
        st.loaded = true;
        if let Some(path) = &self.inner.cfg.state_file
            && let Some(t) = auth::load(path, &self.inner.cfg.credentials)
        {
            tracing::debug!("using tokens from the state file");
            st.tokens = Some(t);
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The current access token and its generation, renewing it first when needed. Holding the
    /// auth mutex across the renewal makes it the single place tokens are renewed.
    async fn bearer(&self, prio: Priority) -> Result<(Secret, u64), ApiError> {
        let mut st = self.inner.auth.lock().await;
        self.load_state(&mut st);
        if let Some(t) = &st.tokens
            && t.access_fresh(now_ms())
        {
            return Ok((t.access.clone(), self.inner.generation.load(Ordering::SeqCst)));
        }
        let tokens = self.renew(&st, prio).await?;
        let access = tokens.access.clone();
        if let Some(path) = &self.inner.cfg.state_file
            && let Err(e) = auth::store(path, &self.inner.cfg.credentials, Some(&tokens))
        {
            tracing::warn!("cannot save tokens: {e}");
        }
        st.tokens = Some(tokens);
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((access, generation))
    }

    /// Refresh when a refresh token is usable; JWT login otherwise or when the refresh is refused.
    async fn renew(&self, st: &AuthState, prio: Priority) -> Result<Tokens, ApiError> {
        let now = now_ms();
        if let Some(rt) = st.tokens.as_ref().and_then(|t| t.usable_refresh(now)) {
            let mut req = self.token_req("token", "token refresh");
            req.form.push(("grant_type", "refresh_token".into()));
            req.form.push(("refresh_token", rt.0.clone()));
            match self.token_grant(&req, prio).await {
                Ok(t) => {
                    bump(&self.inner.counters.refreshes);
                    tracing::debug!(expires_in = t.access_ttl, refresh = t.refresh.is_some(), "access token refreshed");
                    return Ok(t);
                }
                Err(e) if e.is_service() && !e.is_transient() => {
                    tracing::info!("refresh refused ({e}); logging in with the JWT");
                    // Another process with the same state file may have used the refresh token.
                    if let Some(path) = &self.inner.cfg.state_file
                        && let Some(stored) = auth::load(path, &self.inner.cfg.credentials)
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
        req.form.push(("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()));
        req.form.push(("assertion", self.inner.cfg.credentials.jwt.clone()));
        let t = self.token_grant(&req, prio).await?;
        bump(&self.inner.counters.logins);
        tracing::debug!(expires_in = t.access_ttl, refresh = t.refresh.is_some(), "logged in with the JWT");
        Ok(t)
    }

    async fn token_grant(&self, req: &Req, prio: Priority) -> Result<Tokens, ApiError> {
        // Boxed: `execute` -> `bearer` -> `renew` -> `execute` is recursive as a type, although
        // a token request never asks for a bearer token.
        let v = Box::pin(self.get_json(req, prio)).await?;
        Tokens::from_response(&v, now_ms()).map_err(|detail| ApiError::Decode { context: req.context.clone(), detail })
    }

    /// After a 401: if the token that failed is still the current one, force a renewal.
    async fn invalidate(&self, generation: u64) {
        let mut st = self.inner.auth.lock().await;
        if self.inner.generation.load(Ordering::SeqCst) == generation
            && let Some(t) = st.tokens.as_mut()
        {
            t.expire_access();
        }
    }

    /// Sends `req` with pacing, auth and retries; returns the first successful (or passthrough)
    /// response.
    pub(crate) async fn execute(&self, req: &Req, prio: Priority) -> Result<reqwest::Response, ApiError> {
        let cfg = &self.inner.cfg;
        let mut retries = 0u32;
        let mut auth_retried = false;
        loop {
            let permit = self.inner.pacers.get(req.group).acquire(prio).await;
            let mut rb = self.inner.http.request(req.method.clone(), &req.url);
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
                    let (token, g) = self.bearer(prio).await?;
                    generation = g;
                    rb = rb.bearer_auth(&token.0);
                }
                AuthKind::Basic => {
                    rb = rb.basic_auth(&cfg.credentials.client_id, Some(&cfg.credentials.client_secret));
                }
            }
            // Getting the token may have taken a while (a renewal waits on the Auth group), and a
            // 429 to another request may have put the group on hold meanwhile: sending now would
            // restart the penalty. Queue again; this is not a retry, nothing was sent.
            if self.inner.pacers.get(req.group).held_until().is_some() {
                drop(permit);
                continue;
            }
            permit.stamp();
            bump(&self.inner.counters.requests[req.group as usize]);
            tracing::debug!(context = %req.context, group = req.group.name(), ?prio, retry = retries, "sending request");
            let sent = tokio::time::timeout(cfg.stall_timeout, rb.send()).await;
            let mut wait = None;
            let err = match sent {
                Err(_) => ApiError::Timeout { context: req.context.clone(), what: "waiting for response headers" },
                Ok(Err(e)) if e.is_builder() => return Err(ApiError::Config(format!("{}: {e}", req.context))),
                Ok(Err(e)) => ApiError::Transport { context: req.context.clone(), source: e },
                Ok(Ok(resp)) => {
                    let held = self.inner.pacers.observe(req.group, resp.status().as_u16(), resp.headers());
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
                            bump(&self.inner.counters.throttled);
                            let d = held.unwrap_or(pacer::DEFAULT_RETRY_AFTER);
                            tracing::warn!(group = req.group.name(), "429 received; holding the group for {d:?}");
                        }
                        401 if req.auth == AuthKind::Bearer && !auth_retried => {
                            bump(&self.inner.counters.unauthorized);
                            auth_retried = true;
                            self.invalidate(generation).await;
                            bump(&self.inner.counters.retries);
                            tracing::debug!(context = %req.context, "401: retrying once with the current token");
                            continue;
                        }
                        401 => {
                            bump(&self.inner.counters.unauthorized);
                            return Err(err);
                        }
                        503 => wait = Some(retry_after.unwrap_or_else(|| self.backoff(retries))),
                        s if s >= 500 => wait = Some(self.backoff(retries)),
                        _ => return Err(err),
                    }
                    err
                }
            };
            // The answer (or the failure) is in: the slot starts ageing now, not after the backoff.
            drop(permit);
            if retries >= cfg.max_retries || !req.retry_transient {
                return Err(err);
            }
            let wait = match (&err, wait) {
                (_, Some(w)) => w,
                (ApiError::Transport { .. } | ApiError::Timeout { .. }, None) => self.backoff(retries),
                _ => Duration::ZERO,
            };
            retries += 1;
            bump(&self.inner.counters.retries);
            tracing::debug!(context = %req.context, retry = retries, "retrying in {wait:?} after: {err}");
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads a chunk with the stall timeout (used by media streams).
    pub(crate) async fn next_body_chunk<S>(&self, stream: &mut S, context: &str) -> Result<Option<Bytes>, ApiError>
    where
        S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
    {
        match tokio::time::timeout(self.inner.cfg.stall_timeout, stream.next()).await {
            Err(_) => Err(ApiError::Timeout { context: context.to_owned(), what: "waiting for body data" }),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(ApiError::Transport { context: context.to_owned(), source: e }),
            Ok(Some(Ok(b))) => Ok(Some(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str, media: Option<&str>) -> Client {
        let mut cfg = ClientConfig::new(Credentials {
            server_url: server.into(),
            client_id: "id".into(),
            client_secret: "secret-s3cr3t".into(),
            jwt: "jwt-j3wt".into(),
        });
        cfg.media_base = media.map(str::to_owned);
        Client::new(cfg).unwrap()
    }

    #[test]
    fn only_loopback_servers_bypass_the_proxy() {
        for url in ["http://127.0.0.1:8080", "http://localhost:1/restapi", "http://[::1]:9/", "http://127.3.4.5"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in ["https://platform.ringcentral.com", "https://10.0.0.1", "http://[2001:db8::1]/", "not a url"] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn iso_format() {
        let t: jiff::Timestamp = "2024-03-08T10:11:12.3456Z".parse().unwrap();
        assert_eq!(iso(t), "2024-03-08T10:11:12.345Z");
        let t: jiff::Timestamp = "2024-03-08T10:11:12Z".parse().unwrap();
        assert_eq!(iso(t), "2024-03-08T10:11:12.000Z");
    }

    #[test]
    fn content_url_sources() {
        let c = client("https://platform.ringcentral.com", None);
        assert_eq!(
            c.recording_content_url("123").as_deref(),
            Some("https://media.ringcentral.com/restapi/v1.0/account/~/recording/123/content")
        );
        let c = client("http://127.0.0.1:4000", None);
        assert_eq!(c.recording_content_url("1"), None);
        c.learn_media("http://127.0.0.1:4001/restapi/v1.0/account/9/recording/5/content");
        assert_eq!(
            c.recording_content_url("1").as_deref(),
            Some("http://127.0.0.1:4001/restapi/v1.0/account/~/recording/1/content")
        );
        let c = client("https://platform.ringcentral.com", Some("http://m.example:8/base/"));
        assert_eq!(
            c.recording_content_url("a/b").as_deref(),
            Some("http://m.example:8/base/restapi/v1.0/account/~/recording/a%2Fb/content")
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let c = client("http://127.0.0.1:1", None);
        for retry in 0..30 {
            let d = c.backoff(retry);
            let full = Duration::from_millis(500).saturating_mul(1 << retry.min(20)).min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
        let a: Vec<_> = (0..8).map(|_| c.backoff(3)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "jitter varies: {a:?}");
    }

    #[test]
    fn debug_shows_no_secrets() {
        let c = client("http://127.0.0.1:1", None);
        let d = format!("{c:?} {:?}", c.inner.cfg);
        assert!(!d.contains("s3cr3t") && !d.contains("j3wt"), "{d}");
    }

    #[test]
    fn client_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
    }
}
