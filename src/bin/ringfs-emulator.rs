//! `ringfs-emulator`: an offline RingCentral account (API host + media host) for development.
//!
//! Prints the API base URL and then the media base URL as the first two lines of stdout, then
//! serves until SIGINT or SIGTERM. Logs go to stderr (`RINGFS_LOG=debug` for more).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use ringfs::emulator::{
    self, AudioFormat, Config, Faults, MediaBehaviour, Notifications, RateLimits,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Mp3,
    Wav,
    Mixed,
}

/// An emulated RingCentral account with call recordings, for offline development and tests.
///
/// Log in with the JWT bearer grant at {API}/restapi/oauth/token using the demo credentials below
/// (Basic auth with client id and secret, assertion = the JWT), then read
/// {API}/restapi/v1.0/account/~/extension/~/call-log and fetch each record's recording.contentUri.
///
/// The media host also serves {MEDIA}/__emulator/files/, a plain HTTP directory of the recordings
/// (no auth, no rate limits) for tools that only speak plain HTTP; {API}/__emulator/stats counts
/// every request.
///
/// Telephony session events: POST {API}/restapi/oauth/wstoken gives a WebSocket URI and token;
/// subscribe over the socket to /restapi/v1.0/account/~/telephony/sessions (or
/// .../extension/~/telephony/sessions). With --live, each call emits Setup, Proceeding, Answered
/// and Disconnected.
#[derive(Debug, Parser)]
#[command(name = "ringfs-emulator", version)]
struct Args {
    /// API host address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Media host address (recording content).
    #[arg(long, default_value = "127.0.0.1:0")]
    media_listen: SocketAddr,
    /// Seed of the data set.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of calls (plus the seed document's example call).
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Spread the calls over the last DAYS dates in UTC, today included (as `ringfs --days`).
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// Recording format of the account.
    #[arg(long, value_enum, default_value = "mp3")]
    format: Format,
    /// A new call ends every SECS seconds after start.
    #[arg(long, value_name = "SECS")]
    live: Option<f64>,
    /// Accepted OAuth client id.
    #[arg(long, default_value = emulator::DEMO_CLIENT_ID)]
    client_id: String,
    /// Accepted OAuth client secret.
    #[arg(long, default_value = emulator::DEMO_CLIENT_SECRET)]
    client_secret: String,
    /// Accepted JWT credential.
    #[arg(long, default_value = emulator::DEMO_JWT)]
    jwt: String,
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 3600.0, value_name = "S")]
    access_ttl: f64,
    /// Refresh-token lifetime in seconds.
    #[arg(long, default_value_t = 604_800.0, value_name = "S")]
    refresh_ttl: f64,
    /// Do not issue refresh tokens (log in again with the JWT instead).
    #[arg(long)]
    no_refresh_tokens: bool,
    /// The user is not an admin: the account-level call log answers 403.
    #[arg(long)]
    not_admin: bool,
    /// Rate-limit window in seconds.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    rate_window: f64,
    /// Penalty after exceeding a limit, in seconds.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    rate_penalty: f64,
    /// Light group requests per window.
    #[arg(long, default_value_t = 50)]
    light_limit: u32,
    /// Medium group requests per window.
    #[arg(long, default_value_t = 40)]
    medium_limit: u32,
    /// Heavy group requests per window (call log, recordings).
    #[arg(long, default_value_t = 10)]
    heavy_limit: u32,
    /// Auth group requests per window (token, revoke).
    #[arg(long, default_value_t = 5)]
    auth_limit: u32,
    /// No rate limits at all.
    #[arg(long)]
    unlimited: bool,
    /// Seconds from a call's end until its record shows in the call log.
    #[arg(long, default_value_t = 20.0, value_name = "S")]
    record_delay: f64,
    /// Seconds from the record showing until the recording can be fetched.
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    recording_delay: f64,
    /// Media: send bodies chunked, without Content-Length.
    #[arg(long)]
    omit_content_length: bool,
    /// Media: send bodies without Content-Length, delimited by closing the connection (an
    /// HTTP/1.0 answer): a cut connection then looks like the end of the body.
    #[arg(long)]
    close_delimited: bool,
    /// Media: ignore Range requests (always 200 with the whole body).
    #[arg(long)]
    ignore_range: bool,
    /// Media: answer audio/x-wav instead of audio/wav.
    #[arg(long)]
    x_wav: bool,
    /// Media: every recording draws its own mix of quirks from SEED (chunked or not, or delimited
    /// by closing the connection; Range honoured, ignored, capped or without a total; 416 with or
    /// without Content-Range or a whole body; audio/x-wav; cuts at fixed offsets; a speed cap; a
    /// 404 and 5xx before the content); the media flags above are then ignored.
    #[arg(long, value_name = "SEED")]
    media_mix: Option<u64>,
    /// Fault: cut media connections after N body bytes.
    #[arg(long, value_name = "N")]
    drop_after_bytes: Option<u64>,
    /// Fault: fraction of media responses cut mid-body.
    #[arg(long, default_value_t = 0.0)]
    drop_fraction: f64,
    /// Fault: media body speed cap in bytes per second.
    #[arg(long, value_name = "N")]
    max_bytes_per_sec: Option<u64>,
    /// Fault: fraction of requests answered 503/500/502.
    #[arg(long, default_value_t = 0.0)]
    error_5xx_fraction: f64,
    /// Fault: fraction of requests answered 429 regardless of the budget.
    #[arg(long, default_value_t = 0.0)]
    force_429_fraction: f64,
    /// Fault: Retry-After of forced 429s (none when absent).
    #[arg(long, value_name = "S")]
    force_429_retry_after: Option<u64>,
    /// Fault: fraction of call-log pages with truncated JSON.
    #[arg(long, default_value_t = 0.0)]
    malformed_json_fraction: f64,
    /// WebSocket: lifetime of a ws_access_token, in seconds.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    wstoken_ttl: f64,
    /// WebSocket: recoveryTimeout, how long a dropped connection's session can be recovered.
    #[arg(long, default_value_t = 180.0, value_name = "S")]
    ws_recovery_timeout: f64,
    /// WebSocket: recoveryBufferSize, events kept per session for a recovery.
    #[arg(long, default_value_t = 100, value_name = "N")]
    ws_recovery_buffer: usize,
    /// WebSocket: idleTimeout, close a connection after S seconds without a client message.
    #[arg(long, default_value_t = 1800.0, value_name = "S")]
    ws_idle_timeout: f64,
    /// WebSocket: absoluteTimeout, close a connection S seconds after it opened.
    #[arg(long, default_value_t = 86_400.0, value_name = "S")]
    ws_absolute_timeout: f64,
    /// Fault: drop every WebSocket connection S seconds after it opened (no close frame).
    #[arg(long, value_name = "S")]
    ws_drop_after: Option<f64>,
    /// Refuse wstoken (403 CMN-401) for lack of this app permission.
    #[arg(long, value_name = "PERMISSION", num_args = 0..=1, default_missing_value = "WebSocketsSubscription")]
    refuse_wstoken: Option<String>,
    /// Refuse subscriptions over the WebSocket (403 CMN-401) for lack of this app permission.
    #[arg(long, value_name = "PERMISSION", num_args = 0..=1, default_missing_value = "CallControl")]
    refuse_subscription: Option<String>,
    /// Telephony events: seconds from a call's start to Proceeding and to Answered.
    #[arg(long, num_args = 2, value_names = ["PROCEEDING", "ANSWERED"], default_values_t = [1.0, 3.0])]
    event_delays: Vec<f64>,
    /// Telephony events: send each event S seconds after its eventTime.
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    event_delivery_delay: f64,
    /// Telephony events: deliver each session's events in swapped pairs (sequence 2 before 1).
    #[arg(long)]
    events_out_of_order: bool,
    /// Telephony events: a Disconnected with reason BlindTransfer halfway through each call.
    #[arg(long)]
    events_transfer: bool,
}

fn secs(s: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{name}: {s} is not a duration in seconds"))
}

impl Args {
    fn config(&self) -> anyhow::Result<Config> {
        let fraction = |v: f64, name: &str| {
            anyhow::ensure!((0.0..=1.0).contains(&v), "--{name}: {v} is not within 0..1");
            Ok(v)
        };
        let rate = if self.unlimited {
            RateLimits::unlimited()
        } else {
            RateLimits {
                window: secs(self.rate_window, "rate-window")?,
                penalty: secs(self.rate_penalty, "rate-penalty")?,
                light: self.light_limit,
                medium: self.medium_limit,
                heavy: self.heavy_limit,
                auth: self.auth_limit,
            }
        };
        anyhow::ensure!(self.days >= 1, "--days must be at least 1");
        Ok(Config {
            seed: self.seed,
            calls: self.calls,
            days: self.days,
            format: match self.format {
                Format::Mp3 => AudioFormat::Mp3,
                Format::Wav => AudioFormat::Wav,
                Format::Mixed => AudioFormat::Mixed,
            },
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            jwt: self.jwt.clone(),
            access_ttl: secs(self.access_ttl, "access-ttl")?,
            refresh_ttl: secs(self.refresh_ttl, "refresh-ttl")?,
            issue_refresh_tokens: !self.no_refresh_tokens,
            admin: !self.not_admin,
            rate,
            record_delay: secs(self.record_delay, "record-delay")?,
            recording_delay: secs(self.recording_delay, "recording-delay")?,
            live: self.live.map(|s| secs(s, "live")).transpose()?,
            media: MediaBehaviour {
                omit_content_length: self.omit_content_length,
                close_delimited: self.close_delimited,
                ignore_range: self.ignore_range,
                x_wav: self.x_wav,
                mixed: self.media_mix,
                ..MediaBehaviour::default()
            },
            faults: Faults {
                drop_after_bytes: self.drop_after_bytes,
                drop_fraction: fraction(self.drop_fraction, "drop-fraction")?,
                max_bytes_per_sec: self.max_bytes_per_sec,
                error_5xx_fraction: fraction(self.error_5xx_fraction, "error-5xx-fraction")?,
                force_429_fraction: fraction(self.force_429_fraction, "force-429-fraction")?,
                force_429_retry_after: self.force_429_retry_after,
                malformed_json_fraction: fraction(
                    self.malformed_json_fraction,
                    "malformed-json-fraction",
                )?,
                ..Faults::default()
            },
            extra_calls: Vec::new(),
            notifications: Notifications {
                wstoken_ttl: secs(self.wstoken_ttl, "wstoken-ttl")?,
                recovery_timeout: secs(self.ws_recovery_timeout, "ws-recovery-timeout")?,
                recovery_buffer_size: self.ws_recovery_buffer,
                idle_timeout: secs(self.ws_idle_timeout, "ws-idle-timeout")?,
                absolute_timeout: secs(self.ws_absolute_timeout, "ws-absolute-timeout")?,
                drop_after: self
                    .ws_drop_after
                    .map(|s| secs(s, "ws-drop-after"))
                    .transpose()?,
                refuse_wstoken: self.refuse_wstoken.clone(),
                refuse_subscription: self.refuse_subscription.clone(),
                proceeding_after: secs(self.event_delays[0], "event-delays")?,
                answered_after: secs(self.event_delays[1], "event-delays")?,
                delivery_delay: secs(self.event_delivery_delay, "event-delivery-delay")?,
                out_of_order: self.events_out_of_order,
                transfer_reason: self.events_transfer,
                ..Notifications::default()
            },
        })
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(std::io::stderr)
            .finish()
            .with(ringfs::cli::log_filter("info"))
            .init();
    }
    let args = Args::parse();
    let config = args.config()?;
    let api = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let media = tokio::net::TcpListener::bind(args.media_listen)
        .await
        .with_context(|| format!("binding {}", args.media_listen))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{}", api.local_addr()?)?;
        writeln!(out, "http://{}", media.local_addr()?)?;
        out.flush()?;
    }
    emulator::run(api, media, config, shutdown_signal()).await?;
    Ok(())
}
