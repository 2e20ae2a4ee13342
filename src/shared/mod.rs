//! A team's mounts sharing one fetch per recording through an S3-compatible bucket.
//!
//! RingCentral allows about ten call-log pages and recording downloads a minute per user, and a
//! recording never changes once made. When a team mounts the same account, each mount spending
//! its own budget on the same recordings is waste: one fetch is enough if the bytes are kept where
//! every mount can read them. This module keeps them in a bucket (any S3-compatible service:
//! AWS S3, Garage, MinIO, R2) through `object_store`, which signs, retries and streams.
//!
//! Two roles:
//! - a **publisher** (`ringfs ringcentral MNT --shared s3://BUCKET/PREFIX`) is a normal mount
//!   with the bucket as a tier below its disk ([`tier::BucketTier`] stacked under the disk by
//!   [`crate::store::Stack`]): what the bucket holds is read from it (no RingCentral request),
//!   each recording fetched complete from RingCentral is PUT in the background, and each date
//!   it lists is published as a manifest ([`log::PublishingLog`]);
//! - a **reader** (`ringfs s3://BUCKET/PREFIX MNT`) has no RingCentral credentials at all: the
//!   core reads its call log from the manifests ([`log::BucketLog`]) and its media from the
//!   recording objects with ranged GETs ([`media::BucketMedia`]), with the memory and disk tiers
//!   in front as for any mount.
//!
//! # Bucket layout
//!
//! Every object is immutable: written once, by one single PUT, after its content is complete and
//! checked, and never changed. A PUT is atomic in S3 (a publisher killed mid-PUT leaves no
//! object; multipart uploads are not used), so a reader sees a whole object or none.
//!
//! ```text
//! PREFIX/v1/account.json                      {"version":1,"account":"<server-client-user>"}
//! PREFIX/v1/recordings/<recordingId>.<ext>    the recording's bytes; ext mp3|wav
//! PREFIX/v1/dates/<YYYY-MM-DD>/<gen>.json     one date's call-log records (UTC date)
//! ```
//!
//! - `account.json` names the account the prefix belongs to (the name the disk cache uses:
//!   server, client id and a hash of the user); a publisher of another account refuses to
//!   start, a reader refuses a prefix without one (a typo in the URL).
//! - A recording object has the `Content-Type` RingCentral sent, and metadata `sha256` (hex of
//!   its content) and `size`. Its extension says its audio kind, so that a listing of the
//!   prefix (which shows keys and sizes, not types) tells a mount what every recording is
//!   without a request per object. It is written only when its length is the one RingCentral
//!   stated.
//! - A date manifest holds the records of one UTC date (startTime in `[D 00:00Z, D+1 00:00Z)`),
//!   exactly as the call log returned them (the JSON a mount shows as `call.json`), newest
//!   first. `<gen>` is `g`, the publishing time in milliseconds, zero-padded, and `-final` for
//!   a final one. A date is published when a publisher has listed all of it (today: up to the
//!   listing); again when a re-listing finds new records; and a last time with `"final": true`
//!   once it was listed after it settled (no call can appear any more), after which no
//!   publisher that knows it writes it again. The newest final generation wins, else the
//!   newest one.
//!
//! # Failure semantics
//!
//! - The bucket unreachable: a publisher serves from RingCentral as if it had no bucket and
//!   publishes later (failed PUTs are retried with a backoff, logged once per outage). A reader
//!   serves what its memory and disk tiers hold and fails the rest with EIO at once while a
//!   probe waits for the bucket (the core's "API unreachable" handling).
//! - A publisher killed mid-PUT: no object (single PUTs are atomic); the recording is fetched
//!   again by whichever publisher next needs it.
//! - Two publishers of one account: keys are the recording id and the manifest generation, and
//!   two PUTs of one recording carry identical bytes; nothing is corrupted. Each spends what
//!   the bucket did not hold when it needed it (a recording both fetch at the same minute is
//!   fetched twice; after that, once).
//! - Readers do not verify `sha256` on ranged reads (it covers the whole object); it is there
//!   for audits.

pub mod archive;
pub mod log;
pub mod media;
pub mod tier;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

use crate::catalog::AudioKind;
use crate::fs::{CallLog, Fs, FsConfig};
use crate::media::{Media, MediaConfig};
use crate::store::Tier;

/// Bucket layout version (the `v1` in every key).
pub const LAYOUT: &str = "v1";

/// The most bytes of fetched recordings a publisher keeps in memory waiting for their PUT.
pub const MAX_PENDING: u64 = 256 << 20;

/// A reader's bucket, from the environment ([`Endpoint::from_env`]): its `account.json` is
/// checked (a prefix no publisher wrote is refused) and what it holds is listed.
pub async fn open_reader(url: &BucketUrl) -> anyhow::Result<Arc<Bucket>> {
    use anyhow::Context;
    let bucket = Arc::new(Bucket::connect(url, &Endpoint::from_env())?);
    let account = bucket
        .account()
        .await
        .with_context(|| format!("reading {url}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{url} holds no ringfs recordings ({LAYOUT}/account.json is missing): a mount \
                 with --shared {url} publishes there"
            )
        })?;
    let n = bucket
        .refresh()
        .await
        .with_context(|| format!("listing {url}"))?;
    tracing::info!("{url}: {n} recordings of account {account}");
    Ok(bucket)
}

/// A publisher's bucket, from the environment: claimed for `account` (refused if it holds
/// another account's recordings) and listed.
pub async fn open_publisher(url: &BucketUrl, account: &str) -> anyhow::Result<Arc<Bucket>> {
    use anyhow::Context;
    let bucket = Arc::new(Bucket::connect(url, &Endpoint::from_env())?);
    match bucket.claim(account).await {
        Ok(()) => {}
        // Another account's prefix: never write there.
        Err(e @ BucketError::Invalid(_)) => {
            return Err(e).with_context(|| format!("publishing to {url}"));
        }
        // Unreachable now: mount anyway (RingCentral serves), claim before the first write.
        Err(e) => {
            tracing::warn!("{url} cannot be reached ({e}); publishing once it can");
            *bucket.unclaimed.lock().unwrap() = Some(account.to_string());
            return Ok(bucket);
        }
    }
    match bucket.refresh().await {
        Ok(n) => tracing::info!("publishing to {url}, which holds {n} recordings"),
        Err(e) => tracing::warn!("listing {url}: {e}"),
    }
    Ok(bucket)
}

/// What a publisher adds to a mount: its tier below memory (the bucket below `disk`, stacked),
/// its call log (the RingCentral one it was given, published), and the bucket tier itself (to
/// flush before the process ends).
pub struct Publishing {
    pub tier: Arc<dyn Tier>,
    pub log: Arc<dyn CallLog>,
    pub bucket_tier: Arc<tier::BucketTier>,
}

/// The pieces of a publisher over `bucket` (see [`Publishing`]); its background tasks run on
/// the current runtime. `settle` is the core's.
pub async fn publishing(
    bucket: Arc<Bucket>,
    call_log: Arc<dyn CallLog>,
    disk: Option<Arc<dyn Tier>>,
    settle: Duration,
) -> Publishing {
    let bucket_tier = tier::BucketTier::new(
        bucket.clone(),
        tokio::runtime::Handle::current(),
        MAX_PENDING,
    );
    let tier: Arc<dyn Tier> = match disk {
        Some(d) => crate::store::Stack::new(d, bucket_tier.clone()),
        None => bucket_tier.clone(),
    };
    let log = Arc::new(log::PublishingLog::new(call_log, bucket, settle).await);
    Publishing {
        tier,
        log,
        bucket_tier,
    }
}

/// A reader's core: the call log from the manifests, the media from the recording objects,
/// `disk` (and memory) in front. No RingCentral client exists in it.
pub fn reader_core(
    bucket: Arc<Bucket>,
    media: MediaConfig,
    disk: Option<Arc<dyn Tier>>,
    mut config: FsConfig,
) -> Arc<Fs> {
    let media = Media::with_tier(
        Arc::new(media::BucketMedia::new(bucket.clone())),
        media,
        disk,
    );
    // A date no publisher has listed yet may be published later: every date is read again
    // after `recent_ttl` when it is listed (final manifests are kept in memory, so settled
    // dates cost nothing).
    config.settle = config.retention;
    Arc::new(Fs::new(
        Arc::new(log::BucketLog::new(bucket)),
        media,
        config,
    ))
}

/// `s3://BUCKET/PREFIX`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl BucketUrl {
    pub fn parse(s: &str) -> Result<BucketUrl, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{s:?} is not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{s:?}: no bucket name"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("{s:?}: `.` and `..` are not allowed in the prefix"));
        }
        Ok(BucketUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// A name for directories and logs: `bucket-prefix` with `/` as `-`.
    pub fn slug(&self) -> String {
        let mut s = self.bucket.clone();
        if !self.prefix.is_empty() {
            s.push('-');
            s.push_str(&self.prefix.replace('/', "-"));
        }
        s
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// How to reach the bucket when not from the environment (tests, tools).
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// `http://127.0.0.1:3900`; `None`: AWS.
    pub url: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Endpoint {
    /// The standard `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`), else the keys of the AWS credentials file
    /// (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
    /// `default`; `region` and `endpoint_url` are read there too).
    pub fn from_env() -> Endpoint {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut e = Endpoint {
            url: var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
        };
        if e.access_key_id.is_none() {
            let file = var("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
            let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
            if let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) {
                let p = credentials_profile(&text, &profile);
                e.access_key_id = p.get("aws_access_key_id").cloned();
                e.secret_access_key = p.get("aws_secret_access_key").cloned();
                e.region = e.region.or_else(|| p.get("region").cloned());
                e.url = e.url.or_else(|| p.get("endpoint_url").cloned());
            }
        }
        e
    }
}

/// The `key = value` lines of `[profile]` in an AWS credentials file.
fn credentials_profile(text: &str, profile: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// Why the bucket did not do something.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// No such object.
    #[error("{0}: not in the bucket")]
    NotFound(String),
    /// The bucket could not be reached or failed (after object_store's retries).
    #[error("{context}: {message}")]
    Failed { context: String, message: String },
    /// An object that is not what this layout says.
    #[error("{0}")]
    Invalid(String),
}

impl BucketError {
    fn from_store(context: impl Into<String>, e: object_store::Error) -> BucketError {
        let context = context.into();
        match e {
            object_store::Error::NotFound { .. } => BucketError::NotFound(context),
            e => BucketError::Failed {
                context,
                message: crate::api::chain(&e),
            },
        }
    }
}

/// What the bucket holds of one recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub size: u64,
    pub content_type: String,
}

/// Counters, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BucketStats {
    /// Recording objects written.
    pub recordings_put: u64,
    /// Recording PUTs that failed (each retried later).
    pub put_failures: u64,
    /// Date manifests written.
    pub manifests_put: u64,
    /// GET requests for recording bytes.
    pub recording_gets: u64,
    /// GET requests for manifests.
    pub manifest_gets: u64,
    /// LIST requests.
    pub lists: u64,
}

#[derive(Default)]
struct Counters {
    recordings_put: AtomicU64,
    put_failures: AtomicU64,
    manifests_put: AtomicU64,
    recording_gets: AtomicU64,
    manifest_gets: AtomicU64,
    lists: AtomicU64,
}

/// The account record at `PREFIX/v1/account.json`.
#[derive(Debug, Serialize, Deserialize)]
struct AccountFile {
    version: u32,
    account: String,
}

/// One date's manifest.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Listed after the date settled: no later generation will be written.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// When the publisher listed it (RFC 3339).
    pub listed_at: String,
    /// The call log's records, as returned, newest first.
    pub records: Vec<serde_json::Value>,
}

/// A bucket prefix in this layout: keys, the objects' requests, and what is known to be held.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    url: BucketUrl,
    /// Recordings known to be in the bucket (from listings and from our own PUTs).
    held: Mutex<HashMap<String, Held>>,
    /// The account to claim the prefix for before the first write, when the claim at start
    /// could not reach the bucket.
    unclaimed: Mutex<Option<String>>,
    counters: Counters,
}

/// Recording ids become keys: only what RingCentral ids are made of.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The content type a key's extension stands for (exact for what RingCentral sends today).
fn type_of_ext(ext: &str) -> Option<&'static str> {
    match ext {
        "mp3" => Some("audio/mpeg"),
        "wav" => Some("audio/wav"),
        _ => None,
    }
}

impl Bucket {
    /// Connects to `url` (no request is sent yet).
    pub fn connect(url: &BucketUrl, endpoint: &Endpoint) -> Result<Bucket, BucketError> {
        // reqwest's rustls has no provider of its own (see `api::http_client_builder`).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new().with_bucket_name(&url.bucket);
        if let Some(u) = &endpoint.url {
            b = b
                .with_endpoint(u)
                .with_allow_http(u.starts_with("http://"))
                // Garage, MinIO and most self-hosted services address buckets by path.
                .with_virtual_hosted_style_request(false);
        }
        b = b.with_region(
            endpoint
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        );
        if let (Some(k), Some(s)) = (&endpoint.access_key_id, &endpoint.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        let options = ClientOptions::new()
            .with_allow_http(
                endpoint
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("http://")),
            )
            .with_connect_timeout(Duration::from_secs(5))
            // A recording's body streams for as long as its reader reads; the media layer
            // times reads out on its own.
            .with_timeout(Duration::from_secs(600));
        let retry = RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let store = b
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| BucketError::Failed {
                context: format!("bucket {url}"),
                message: crate::api::chain(&e),
            })?;
        Ok(Bucket::with_store(Arc::new(store), url.clone()))
    }

    /// A bucket over any object store (tests use an in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: BucketUrl) -> Bucket {
        Bucket {
            store,
            url,
            held: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub fn url(&self) -> &BucketUrl {
        &self.url
    }

    pub fn stats(&self) -> BucketStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BucketStats {
            recordings_put: l(&c.recordings_put),
            put_failures: l(&c.put_failures),
            manifests_put: l(&c.manifests_put),
            recording_gets: l(&c.recording_gets),
            manifest_gets: l(&c.manifest_gets),
            lists: l(&c.lists),
        }
    }

    fn key(&self, rest: &str) -> Path {
        if self.url.prefix.is_empty() {
            Path::from(format!("{LAYOUT}/{rest}"))
        } else {
            Path::from(format!("{}/{LAYOUT}/{rest}", self.url.prefix))
        }
    }

    fn recording_key(&self, id: &str, ext: &str) -> Path {
        self.key(&format!("recordings/{id}.{ext}"))
    }

    /// The account the prefix belongs to; `None` when no publisher wrote one yet.
    pub async fn account(&self) -> Result<Option<String>, BucketError> {
        let key = self.key("account.json");
        match self.store.get(&key).await {
            Ok(r) => {
                let body = r
                    .bytes()
                    .await
                    .map_err(|e| BucketError::from_store(key.to_string(), e))?;
                let a: AccountFile = serde_json::from_slice(&body)
                    .map_err(|e| BucketError::Invalid(format!("{key}: {e}")))?;
                Ok(Some(a.account))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(BucketError::from_store(key.to_string(), e)),
        }
    }

    /// Claims the prefix for `account` (a publisher): writes `account.json` if there is none,
    /// refuses a prefix of another account.
    pub async fn claim(&self, account: &str) -> Result<(), BucketError> {
        match self.account().await? {
            Some(a) if a == account => Ok(()),
            Some(a) => Err(BucketError::Invalid(format!(
                "{} holds the recordings of account {a}, not of {account}",
                self.url
            ))),
            None => {
                let body = serde_json::to_vec(&AccountFile {
                    version: 1,
                    account: account.to_string(),
                })
                .expect("serialisable");
                let key = self.key("account.json");
                self.put(&key, body.into(), "application/json", &[])
                    .await
                    .map_err(|e| BucketError::from_store(key.to_string(), e))
            }
        }
    }

    /// Claims the prefix if that is still to do (see [`open_publisher`]); then takes the
    /// listing the start could not take.
    async fn ensure_claimed(&self) -> Result<(), BucketError> {
        let account = self.unclaimed.lock().unwrap().clone();
        if let Some(account) = account {
            self.claim(&account).await?;
            *self.unclaimed.lock().unwrap() = None;
            if let Err(e) = self.refresh().await {
                tracing::debug!("listing {}: {e}", self.url);
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        key: &Path,
        payload: PutPayload,
        content_type: &str,
        metadata: &[(&'static str, String)],
    ) -> Result<(), object_store::Error> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        for (k, v) in metadata {
            attributes.insert(Attribute::Metadata((*k).into()), v.clone().into());
        }
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store.put_opts(key, payload, opts).await.map(|_| ())
    }

    /// What the bucket is known to hold of `id` (from memory).
    pub fn held(&self, id: &str) -> Option<Held> {
        self.held.lock().unwrap().get(id).cloned()
    }

    fn note_held(&self, id: &str, held: Held) {
        self.held
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert(held);
    }

    /// Parses `.../recordings/<id>.<ext>` and its size into what is held.
    fn held_of(meta: &object_store::ObjectMeta) -> Option<(String, Held)> {
        let name = meta.location.filename()?;
        let (id, ext) = name.rsplit_once('.')?;
        let content_type = type_of_ext(ext)?;
        valid_id(id).then(|| {
            (
                id.to_string(),
                Held {
                    size: meta.size,
                    content_type: content_type.to_string(),
                },
            )
        })
    }

    /// Lists every recording object (one LIST request per 1000) into what is known held.
    /// Returns how many there are.
    pub async fn refresh(&self) -> Result<usize, BucketError> {
        let prefix = self.key("recordings");
        let mut list = self.store.list(Some(&prefix));
        let mut found = Vec::new();
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        while let Some(item) = list.next().await {
            let meta = item.map_err(|e| BucketError::from_store(prefix.to_string(), e))?;
            if let Some(h) = Bucket::held_of(&meta) {
                found.push(h);
            }
        }
        let n = found.len();
        let mut held = self.held.lock().unwrap();
        for (id, h) in found {
            held.entry(id).or_insert(h);
        }
        Ok(n)
    }

    /// Looks `id` up in the bucket (one LIST of its key prefix) when it is not known held.
    pub async fn find(&self, id: &str) -> Result<Option<Held>, BucketError> {
        if let Some(h) = self.held(id) {
            return Ok(Some(h));
        }
        if !valid_id(id) {
            return Ok(None);
        }
        // `recordings/<id>.` cannot be a LIST prefix through `Path` (it lists by segment), so
        // list the directory's entries after `<id>` and stop at the first that is not it.
        let dir = self.key("recordings");
        let offset = self.key(&format!("recordings/{id}"));
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        let mut list = self.store.list_with_offset(Some(&dir), &offset);
        while let Some(item) = list.next().await {
            let meta = item.map_err(|e| BucketError::from_store(dir.to_string(), e))?;
            match Bucket::held_of(&meta) {
                Some((found, h)) if found == id => {
                    self.note_held(id, h.clone());
                    return Ok(Some(h));
                }
                _ => {
                    let name = meta.location.filename().unwrap_or_default().to_string();
                    if !name.starts_with(&format!("{id}.")) {
                        break;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Writes a complete, checked recording (one PUT).
    pub async fn put_recording(
        &self,
        id: &str,
        content_type: &str,
        data: Bytes,
    ) -> Result<(), BucketError> {
        let kind = AudioKind::from_content_type(content_type).ok_or_else(|| {
            BucketError::Invalid(format!(
                "recording {id}: content type {content_type:?} is not audio this layout keeps"
            ))
        })?;
        if !valid_id(id) {
            return Err(BucketError::Invalid(format!("recording id {id:?}")));
        }
        self.ensure_claimed().await?;
        if self.held(id).is_some() {
            return Ok(()); // the listing after the claim found it
        }
        let key = self.recording_key(id, kind.extension());
        let sha = hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        let size = data.len() as u64;
        let r = self
            .put(
                &key,
                data.into(),
                content_type,
                &[("sha256", sha), ("size", size.to_string())],
            )
            .await;
        match r {
            Ok(()) => {
                self.counters.recordings_put.fetch_add(1, Ordering::Relaxed);
                self.held.lock().unwrap().insert(
                    id.to_string(),
                    Held {
                        size,
                        content_type: content_type.to_string(),
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.counters.put_failures.fetch_add(1, Ordering::Relaxed);
                Err(BucketError::from_store(format!("recording {id}"), e))
            }
        }
    }

    /// A range of a recording the bucket holds, from `offset` (to the end when `len` is `None`):
    /// its content type, total size, ETag and body.
    pub async fn get_recording(
        &self,
        id: &str,
        held: &Held,
        offset: u64,
        len: Option<u64>,
    ) -> Result<RecordingBody, BucketError> {
        let kind = AudioKind::from_content_type(&held.content_type)
            .ok_or_else(|| BucketError::Invalid(format!("recording {id}: unknown type")))?;
        let key = self.recording_key(id, kind.extension());
        let range = match len {
            Some(n) => GetRange::Bounded(offset..(offset + n).min(held.size)),
            None => GetRange::Offset(offset),
        };
        let opts = GetOptions {
            range: Some(range),
            ..GetOptions::default()
        };
        self.counters.recording_gets.fetch_add(1, Ordering::Relaxed);
        let r = self
            .store
            .get_opts(&key, opts)
            .await
            .map_err(|e| BucketError::from_store(format!("recording {id}"), e))?;
        let content_type = r
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .unwrap_or_else(|| held.content_type.clone());
        let metadata = r
            .attributes
            .iter()
            .filter_map(|(k, v)| match k {
                Attribute::Metadata(k) => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect();
        Ok(RecordingBody {
            content_type,
            metadata,
            size: r.meta.size,
            e_tag: r.meta.e_tag.clone(),
            stream: r.into_stream(),
        })
    }

    /// A recording object's content type and metadata (`sha256`, `size`): one HEAD-like GET of
    /// its first byte. For audits and tests; mounts never need it.
    pub async fn recording_metadata(
        &self,
        id: &str,
    ) -> Result<HashMap<String, String>, BucketError> {
        let held = self
            .find(id)
            .await?
            .ok_or_else(|| BucketError::NotFound(format!("recording {id}")))?;
        let r = self.get_recording(id, &held, 0, Some(1)).await?;
        let mut out = r.metadata;
        out.insert("content-type".into(), r.content_type);
        Ok(out)
    }

    fn dates_dir(&self, date: &str) -> Path {
        self.key(&format!("dates/{date}"))
    }

    /// The manifest of `date` (UTC, `YYYY-MM-DD`) that wins: the newest final one if there is
    /// one (a date listed after it settled is complete; a publisher that did not know it was
    /// final may have written an open generation after it), else the newest. One LIST and one
    /// GET.
    pub async fn manifest(&self, date: &str) -> Result<Option<Manifest>, BucketError> {
        let dir = self.dates_dir(date);
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        let mut list = self.store.list(Some(&dir));
        // (is final, generation): the greatest wins.
        let mut newest: Option<((bool, u64), Path)> = None;
        while let Some(item) = list.next().await {
            let meta = item.map_err(|e| BucketError::from_store(dir.to_string(), e))?;
            let Some(rank) = meta.location.filename().and_then(generation) else {
                continue;
            };
            if newest.as_ref().is_none_or(|(r, _)| *r < rank) {
                newest = Some((rank, meta.location.clone()));
            }
        }
        let newest = newest.map(|(_, k)| k);
        let Some(key) = newest else {
            return Ok(None);
        };
        self.counters.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let body = self
            .store
            .get(&key)
            .await
            .map_err(|e| BucketError::from_store(key.to_string(), e))?
            .bytes()
            .await
            .map_err(|e| BucketError::from_store(key.to_string(), e))?;
        let m: Manifest = serde_json::from_slice(&body)
            .map_err(|e| BucketError::Invalid(format!("{key}: {e}")))?;
        Ok(Some(m))
    }

    /// The dates that have a final manifest (one LIST of all manifests).
    pub async fn final_dates(&self) -> Result<Vec<String>, BucketError> {
        let dir = self.key("dates");
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        let mut list = self.store.list(Some(&dir));
        let mut out = Vec::new();
        while let Some(item) = list.next().await {
            let meta = item.map_err(|e| BucketError::from_store(dir.to_string(), e))?;
            if meta
                .location
                .filename()
                .is_some_and(|n| n.ends_with("-final.json"))
                && let Some(date) = meta.location.parts().rev().nth(1)
            {
                out.push(date.as_ref().to_string());
            }
        }
        Ok(out)
    }

    /// Writes a new generation of a date's manifest (one PUT).
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), BucketError> {
        self.ensure_claimed().await?;
        let millis = jiff::Timestamp::now().as_millisecond().max(0);
        let name = format!(
            "g{millis:016}{}.json",
            if m.is_final { "-final" } else { "" }
        );
        let key = self.key(&format!("dates/{}/{name}", m.date));
        let body = serde_json::to_vec(m).expect("serialisable");
        self.put(&key, body.into(), "application/json", &[])
            .await
            .map_err(|e| BucketError::from_store(key.to_string(), e))?;
        self.counters.manifests_put.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A recording GET's answer.
pub struct RecordingBody {
    pub content_type: String,
    /// The object's user metadata (`sha256`, `size`).
    pub metadata: HashMap<String, String>,
    /// The whole object's size.
    pub size: u64,
    pub e_tag: Option<String>,
    pub stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
}

/// `g<ms>[-final].json` -> (final, ms).
fn generation(name: &str) -> Option<(bool, u64)> {
    let stem = name.strip_prefix('g')?.strip_suffix(".json")?;
    let (ms, is_final) = match stem.strip_suffix("-final") {
        Some(ms) => (ms, true),
        None => (stem, false),
    };
    Some((is_final, ms.parse().ok()?))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = BucketUrl::parse("s3://team/calls/acme/").unwrap();
        assert_eq!(u.bucket, "team");
        assert_eq!(u.prefix, "calls/acme");
        assert_eq!(u.slug(), "team-calls-acme");
        assert_eq!(BucketUrl::parse("s3://team").unwrap().prefix, "");
        assert!(BucketUrl::parse("s3:///x").is_err());
        assert!(BucketUrl::parse("https://x/y").is_err());
        assert!(BucketUrl::parse("s3://b/a/../c").is_err());
    }

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n[profile team]\n\
                    aws_access_key_id=C\nregion = garage\n";
        let d = credentials_profile(text, "default");
        assert_eq!(d.get("aws_access_key_id").map(String::as_str), Some("A"));
        assert_eq!(
            d.get("aws_secret_access_key").map(String::as_str),
            Some("B")
        );
        let t = credentials_profile(text, "team");
        assert_eq!(t.get("aws_access_key_id").map(String::as_str), Some("C"));
        assert_eq!(t.get("region").map(String::as_str), Some("garage"));
        assert!(!t.contains_key("aws_secret_access_key"));
    }

    #[test]
    fn the_final_manifest_wins_then_the_newest() {
        assert_eq!(
            generation("g0000001700000000.json"),
            Some((false, 1_700_000_000))
        );
        assert_eq!(generation("g0000000000000005-final.json"), Some((true, 5)));
        assert_eq!(generation("x.json"), None);
        assert_eq!(generation("g12.txt"), None);
        assert!(generation("g9-final.json") > generation("g10.json"));
        assert!(generation("g10.json") > generation("g9.json"));
    }

    #[test]
    fn ids_and_kinds() {
        assert!(valid_id("44444444"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert_eq!(type_of_ext("mp3"), Some("audio/mpeg"));
        assert_eq!(type_of_ext("exe"), None);
    }
}
