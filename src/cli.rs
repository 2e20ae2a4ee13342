//! The command line: flags and `-o` options -> one validated [`Options`], and [`run`], which
//! mounts and serves.
//!
//! `ringfs [OPTIONS] <SOURCE> <MOUNTPOINT>` follows sshfs, so `mount -t fuse.ringfs` and fstab
//! work: `mount.fuse3` calls `ringfs SOURCE MOUNTPOINT -o opts`. Every long flag is also a
//! `-o key=value` option (`-o days=30,cache-size=64M`), and the usual FUSE/fstab options
//! (`ro`, `allow_other`, `uid=`, ...) are understood or, for generic ones like `defaults`,
//! `noauto` and `_netdev`, accepted and ignored.
//!
//! Without `-f` the process forks before any thread exists; the parent waits on a pipe until the
//! child says the mount is ready (exit 0) or why it failed (the reason, and the [`Exit`] status
//! the parent exits with), as mountpoint-s3 and sshfs do.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Parser;

use crate::api::{Client, ClientConfig, Credentials, Scope};
use crate::catalog::{AudioKind, Window};
use crate::fs::{Fs, FsConfig, ScopeChoice};
use crate::media::{Media, MediaConfig};

/// Flags, exactly as typed (after `-o` options were turned into flags).
#[derive(Debug, Parser)]
#[command(
    name = "ringfs",
    version,
    about = "Mount a RingCentral account's call recordings as a read-only filesystem",
    long_about = "Mount a RingCentral account's call recordings as a read-only filesystem.\n\n\
SOURCE is `demo` (a built-in emulated account, no credentials), `ringcentral` (a real account:\n\
credentials from RC_CLIENT_ID, RC_CLIENT_SECRET, RC_JWT and optionally RC_SERVER_URL, or from\n\
--credentials FILE), an API base URL such as https://platform.ringcentral.com, or a team's bucket\n\
s3://BUCKET/PREFIX that a mount with --shared publishes to (no RingCentral credentials needed;\n\
the bucket's from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION or\n\
~/.aws/credentials).\n\n\
Every long flag can also be given as a mount option: -o days=30,cache-size=64M,allow_other.\n\
Logging: RINGFS_LOG=debug, or per module: RINGFS_LOG=ringfs::api=trace,info; in the background logs go to --log-file only.\n\n\
The disk cache: `ringfs cache info [SOURCE]` shows where it is, what it holds and its limit;\n\
`ringfs cache clear [SOURCE]` empties it (refused while a mount uses it). They take --cache-dir DIR,\n\
or find the directory a mount of SOURCE would use (see `ringfs cache --help`).\n\n\
New recordings: `ringfs watch MOUNTPOINT [--json]` prints each one as it becomes readable.\n\
Progress: `ringfs status [MOUNTPOINT] [--json] [--watch [SECS]]` shows the rate limits, queued\n\
downloads and when they should be done, and the caches (see `ringfs status --help`).\n\
`ringfs man` prints the man page; `ringfs completions bash|zsh|fish` a shell completion script.\n\
Exit statuses: 2 usage, 3 mount point, 4 no FUSE, 5 already mounted, 6 credentials, 7 API unreachable,\n\
8 --events websocket refused, 1 other.",
    after_help = "Request costs (RingCentral's Heavy group allows about 10 requests a minute):\n\
  listing the root, by-session/ and by-recording/         0 requests\n\
  listing a date with < 1000 recordings                    at most 1 call-log request\n\
  a full walk of N recordings                              about ceil(N/1000) call-log requests\n\
  reading a recording start to end                         1 media request\n\
  reading it again (within --cache-size)                   0 requests\n\
  reading it after a remount (within --disk-cache-size)    0 requests\n\
  by-session/<id> not yet seen                             1 call-log request\n\
  by-recording/<id> not yet seen                           1 media request (+1 metadata on 404)\n\
  mounting with stored tokens                              0 auth requests\n\
  what the bucket holds, with --shared                     0 requests\n\
  a mount of s3://BUCKET/PREFIX                            0 requests (bucket GETs only)"
)]
pub struct Flags {
    /// `demo`, `ringcentral`, an API base URL, or `s3://BUCKET/PREFIX` (a team's bucket).
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Stay in the foreground (do not daemonize).
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma separated (see above).
    #[arg(short = 'o', value_name = "OPTS")]
    pub options: Vec<String>,
    /// Show this many dates, ending today (90: RingCentral's retention).
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// First date shown (YYYY-MM-DD); overrides --days.
    #[arg(long)]
    pub since: Option<jiff::civil::Date>,
    /// Last date shown (YYYY-MM-DD); default today.
    #[arg(long)]
    pub until: Option<jiff::civil::Date>,
    /// Time zone of the date directories (IANA name); default the system's.
    #[arg(long)]
    pub tz: Option<String>,
    /// Which call log to read: the company's (`account`, needs an admin user), the user's own
    /// (`extension`), or `auto`: the account's when allowed.
    #[arg(long, default_value = "auto")]
    pub scope: String,
    /// Memory for cached audio, e.g. 256M, 1G.
    #[arg(long, default_value = "256M")]
    pub cache_size: String,
    /// Where fetched recordings are kept between mounts (0700); default
    /// $XDG_CACHE_HOME/ringfs/ACCOUNT/ (~/.cache/...), per server, client id and user. `demo` keeps
    /// none unless given one.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disk for kept recordings, e.g. 10G; the least recently used go first, and at least 1 GiB
    /// or 5 % of the filesystem is left free.
    #[arg(long, default_value = "10G", value_name = "SIZE")]
    pub disk_cache_size: String,
    /// Keep nothing on disk: no audio, no call index (every mount fetches and lists again).
    #[arg(long)]
    pub no_disk_cache: bool,
    /// Serve every read through ringfs. By default the kernel reads recordings complete in the
    /// disk cache straight from their files (FUSE passthrough: Linux 6.9+, as root).
    #[arg(long)]
    pub no_passthrough: bool,
    /// The format names use until the account's real format is seen (mp3 or wav).
    #[arg(long, default_value = "mp3")]
    pub format: String,
    /// A file of RC_*=value lines (for fstab, which has no environment); only its owner may
    /// read it.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Where tokens are kept between mounts (0600); default $XDG_STATE_HOME/ringfs/tokens.json.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// Do not keep tokens on disk (every mount then spends one Auth request).
    #[arg(long)]
    pub no_state_file: bool,
    /// Write logs to this file, created 0600 (in the background, logs are otherwise discarded).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics; a port alone listens on 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Learn of new calls from RingCentral's telephony events over a WebSocket: `auto`
    /// subscribes when the app may and otherwise lists today again every --recent-ttl;
    /// `websocket` fails the mount when the subscription is refused; `off` only lists.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub events: EventsMode,
    /// Seconds a listing of today (or a date that may still change) is reused.
    #[arg(long, default_value_t = 30)]
    pub recent_ttl: u64,
    /// Seconds a read or an id lookup may wait for the API, or a listing may go without a page, before EIO.
    #[arg(long, default_value_t = 30)]
    pub read_timeout: u64,
    /// Let other users in (needs user_allow_other in /etc/fuse.conf for non-root users).
    #[arg(long)]
    pub allow_other: bool,
    /// Let root in as well as the mounting user.
    #[arg(long)]
    pub allow_root: bool,
    /// Let the kernel check permissions against the modes shown.
    #[arg(long)]
    pub default_permissions: bool,
    /// Owner shown for every file (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group shown for every file (default: the mounting user's).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits masked out (octal, default 077: files 0400, directories 0500).
    #[arg(long, default_value = "077")]
    pub umask: String,
    /// Share fetched recordings and listed dates with a team through this bucket
    /// (`s3://BUCKET/PREFIX`): what it holds is read from it, what is fetched is published.
    #[arg(long, value_name = "S3_URL")]
    pub shared: Option<String>,
    /// Demo: number of calls in the emulated account.
    #[arg(long, default_value_t = 300)]
    pub demo_calls: usize,
    /// Demo: a new call ends every this many seconds (0: none).
    #[arg(long, default_value_t = 30)]
    pub demo_live: u64,
    /// Demo: recordings are mp3, wav or mixed.
    #[arg(long, default_value = "mp3")]
    pub demo_format: String,
}

/// What the mount was asked for, validated.
#[derive(Debug)]
pub struct Options {
    pub source: Source,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub window: Window,
    pub scope: ScopeChoice,
    pub cache_bytes: u64,
    /// `--cache-dir` as given (see [`Options::disk_cache_dir`] for the default).
    pub cache_dir: Option<PathBuf>,
    pub disk_cache_bytes: u64,
    pub no_disk_cache: bool,
    pub no_passthrough: bool,
    pub format: AudioKind,
    pub credentials_file: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub metrics: Option<std::net::SocketAddr>,
    pub events: EventsMode,
    pub recent_ttl: Duration,
    pub read_timeout: Duration,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: u16,
    pub demo_calls: usize,
    pub demo_live: Option<Duration>,
    pub demo_format: crate::emulator::AudioFormat,
    /// `--shared`: the team's bucket this mount publishes to.
    pub shared: Option<crate::shared::BucketUrl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Demo,
    RingCentral,
    Url(String),
    /// A team's bucket: read only from it, no RingCentral at all.
    Bucket(crate::shared::BucketUrl),
}

/// Options mount(8) and fstab pass that mean nothing here, or that are always true.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "ro",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "async",
    "sync",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "auto_unmount",
    "comment",
    "delay_connect",
    "fsname",
    "subtype",
];

/// Turns `-o a,b=c` (anywhere on the line, also `-oa,b`) into `--a --b=c`, so that every long
/// flag is also a mount option. Generic fstab options are dropped.
pub fn expand_mount_options(
    args: impl IntoIterator<Item = OsString>,
) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let opts = if arg == "-o" {
            Some(args.next().ok_or("-o needs a value")?)
        } else {
            arg.to_str()
                .and_then(|s| s.strip_prefix("-o"))
                .filter(|r| !r.is_empty())
                .map(OsString::from)
        };
        let Some(opts) = opts else {
            out.push(arg);
            continue;
        };
        let opts = opts
            .into_string()
            .map_err(|_| "mount options must be UTF-8".to_string())?;
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            if IGNORED.contains(&key) || key.starts_with("x-") {
                continue;
            }
            let key = key.replace('_', "-");
            out.push(OsString::from(match value {
                Some(v) => format!("--{key}={v}"),
                None => format!("--{key}"),
            }));
        }
    }
    Ok(out)
}

/// How the mount learns of new calls (`--events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsMode {
    /// Subscribe when the app may, list again on --recent-ttl when it may not.
    Auto,
    /// Subscribe, and fail the mount when the subscription is refused.
    #[value(name = "websocket")]
    WebSocket,
    /// Never subscribe: list today again every --recent-ttl.
    Off,
}

/// The exit status of a failed `ringfs` run, for service managers and scripts (the README's
/// table). Every failure also prints one line saying what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything not below.
    Failure = 1,
    /// A bad flag or option value (clap's own usage errors exit 2 too).
    Usage = 2,
    /// The mount point is missing, not a directory, or a stale FUSE mount.
    MountPoint = 3,
    /// FUSE is not available (/dev/fuse missing) or mounting is not allowed.
    NoFuse = 4,
    /// A ringfs mount is already there.
    AlreadyMounted = 5,
    /// Credentials missing, unreadable, or refused by RingCentral.
    Credentials = 6,
    /// The RingCentral API could not be reached.
    Unreachable = 7,
    /// `--events websocket` and the subscription was refused or did not come.
    Events = 8,
}

/// An error that decides the exit status; its message is the line printed.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Failed {
    pub exit: Exit,
    msg: String,
}

fn failed(exit: Exit, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Failed {
        exit,
        msg: msg.to_string(),
    })
}

/// The exit status for `e`: what a [`Failed`] in its chain says, else what a failed login
/// tells (refused credentials, or no answer), else [`Exit::Failure`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(f) = e.chain().find_map(|c| c.downcast_ref::<Failed>()) {
        return f.exit as u8;
    }
    if let Some(api) = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::api::ApiError>())
    {
        use crate::api::ApiError as A;
        return match api {
            A::Service {
                status: 400 | 401 | 403,
                ..
            } => Exit::Credentials as u8,
            A::Transport { .. } | A::Timeout { .. } => Exit::Unreachable as u8,
            _ => Exit::Failure as u8,
        };
    }
    Exit::Failure as u8
}

/// Parses a size such as `256M`, `1G`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..]
                .trim_end_matches(['B', 'b', 'i'])
                .to_ascii_uppercase();
            let mult = match unit.as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("bad size {s:?} (use e.g. 256M or 1G)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (use e.g. 256M or 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

impl Options {
    pub fn from_flags(f: Flags) -> anyhow::Result<Options> {
        let source = match f.source.as_str() {
            "demo" => Source::Demo,
            "ringcentral" => Source::RingCentral,
            s if s.starts_with("https://") || s.starts_with("http://") => {
                Source::Url(s.trim_end_matches('/').to_string())
            }
            s if s.starts_with("s3://") => {
                Source::Bucket(crate::shared::BucketUrl::parse(s).map_err(|e| anyhow!(e))?)
            }
            s => bail!(
                "unknown source {s:?}: use `demo`, `ringcentral`, an API base URL or s3://BUCKET/PREFIX"
            ),
        };
        let shared = match &f.shared {
            Some(u) => Some(crate::shared::BucketUrl::parse(u).map_err(|e| anyhow!(e))?),
            None => None,
        };
        if shared.is_some() && matches!(source, Source::Bucket(_) | Source::Demo) {
            bail!(
                "--shared publishes a RingCentral account's recordings: use it with `ringcentral` or an API URL"
            );
        }
        let tz = match &f.tz {
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|e| anyhow!("unknown time zone {name:?}: {e}"))?,
            None => jiff::tz::TimeZone::system(),
        };
        if let (Some(s), Some(u)) = (f.since, f.until)
            && s > u
        {
            bail!("--since {s} is after --until {u}");
        }
        if f.days == 0 {
            bail!("--days must be at least 1");
        }
        let window = Window {
            tz,
            since: f.since,
            until: f.until,
            days: f.days,
        };
        let scope = match f.scope.as_str() {
            "auto" => ScopeChoice::Auto,
            "account" => ScopeChoice::Fixed(Scope::Account),
            "extension" => ScopeChoice::Fixed(Scope::Extension),
            s => bail!("unknown scope {s:?}: use auto, account or extension"),
        };
        let format = AudioKind::from_extension(&f.format)
            .ok_or_else(|| anyhow!("unknown format {:?}: use mp3 or wav", f.format))?;
        let demo_format = match f.demo_format.as_str() {
            "mp3" => crate::emulator::AudioFormat::Mp3,
            "wav" => crate::emulator::AudioFormat::Wav,
            "mixed" => crate::emulator::AudioFormat::Mixed,
            s => bail!("unknown demo format {s:?}: use mp3, wav or mixed"),
        };
        let umask = u16::from_str_radix(f.umask.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| anyhow!("bad umask {:?}: use octal such as 077 or 022", f.umask))?;
        let cache_bytes = parse_size(&f.cache_size).map_err(|e| anyhow!(e))?;
        if cache_bytes < 4 << 20 {
            bail!("--cache-size must be at least 4M");
        }
        let disk_cache_bytes = parse_size(&f.disk_cache_size).map_err(|e| anyhow!(e))?;
        let state_file = if f.no_state_file {
            None
        } else {
            f.state_file.or_else(default_state_file)
        };
        Ok(Options {
            source,
            mountpoint: f.mountpoint,
            foreground: f.foreground,
            window,
            scope,
            cache_bytes,
            cache_dir: f.cache_dir,
            disk_cache_bytes,
            no_disk_cache: f.no_disk_cache,
            no_passthrough: f.no_passthrough,
            format,
            credentials_file: f.credentials,
            state_file,
            log_file: f.log_file,
            events: f.events,
            metrics: f
                .metrics
                .as_deref()
                .map(crate::scrape::parse_addr)
                .transpose()
                .map_err(|e| anyhow!(e))?,
            recent_ttl: Duration::from_secs(f.recent_ttl.max(1)),
            read_timeout: Duration::from_secs(f.read_timeout.max(1)),
            allow_other: f.allow_other,
            allow_root: f.allow_root,
            default_permissions: f.default_permissions,
            uid: f.uid,
            gid: f.gid,
            umask,
            demo_calls: f.demo_calls,
            demo_live: (f.demo_live > 0).then(|| Duration::from_secs(f.demo_live)),
            demo_format,
            shared,
        })
    }

    /// The core's settings from these options.
    pub fn fs_config(&self) -> FsConfig {
        let mut c = FsConfig::new(self.window.clone());
        c.scope = self.scope;
        if let Some(uid) = self.uid {
            c.uid = uid;
        }
        if let Some(gid) = self.gid {
            c.gid = gid;
        }
        c.file_mode = 0o444 & !self.umask;
        c.dir_mode = 0o555 & !self.umask;
        c.recent_ttl = self.recent_ttl;
        c.assumed_format = self.format;
        c.read_timeout = self.read_timeout;
        c
    }

    /// Where recordings are kept between mounts, if anywhere: `--cache-dir`, else (not for
    /// `demo`, whose emulated account is new at every mount) the account's directory under
    /// `$XDG_CACHE_HOME/ringfs/`.
    pub fn disk_cache_dir(&self, creds: Option<&Credentials>) -> Option<PathBuf> {
        if self.no_disk_cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        if let Source::Bucket(url) = &self.source {
            return cache_base().map(|b| b.join("ringfs").join(format!("s3-{}", url.slug())));
        }
        let creds = creds.filter(|_| self.source != Source::Demo)?;
        default_cache_dir(creds)
    }
}

/// The account's directory under `$XDG_CACHE_HOME/ringfs/` (`~/.cache/ringfs/`).
fn default_cache_dir(creds: &Credentials) -> Option<PathBuf> {
    Some(cache_base()?.join("ringfs").join(account_name(creds)))
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
fn cache_base() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
}

/// A stable directory name for what these credentials reach: the server's host and a hash of
/// the server URL, the client id and the user the JWT acts for (two users of one app must never
/// share a cache: each sees only its own calls). No secret goes into it in clear, and the name is
/// the same at every mount, with the API reachable or not.
pub fn account_name(creds: &Credentials) -> String {
    let (server_url, client_id) = (&creds.server_url, &creds.client_id);
    let user = jwt_subject(&creds.jwt);
    let host = url::Url::parse(server_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{server_url}\n{client_id}\n{user}").as_bytes());
    if host.is_empty() {
        format!("{hash:016x}")
    } else {
        format!("{host}-{hash:016x}")
    }
}

/// The user a JWT credential acts for: its `sub` claim (read, not verified: it only names a
/// directory), or a fingerprint of the whole token when it has none.
fn jwt_subject(jwt: &str) -> String {
    use base64::Engine as _;
    let claims = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    match claims.as_ref().and_then(|c| c.get("sub")) {
        Some(serde_json::Value::String(s)) => format!("sub:{s}"),
        Some(serde_json::Value::Number(n)) => format!("sub:{n}"),
        _ => format!("jwt:{:016x}", xxhash_rust::xxh3::xxh3_64(jwt.as_bytes())),
    }
}

fn default_state_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("ringfs").join("tokens.json"))
}

/// Runs the command line: `ringfs cache ...`, `ringfs watch ...`, `ringfs status ...`,
/// `ringfs completions ...`, `ringfs man`, or a mount.
pub fn main(args: Vec<OsString>) -> anyhow::Result<()> {
    if args.get(1).is_some_and(|a| a == "watch") {
        let rest = std::iter::once(OsString::from("ringfs watch")).chain(args.into_iter().skip(2));
        return watch(WatchFlags::try_parse_from(rest).unwrap_or_else(|e| e.exit()));
    }
    if args.get(1).is_some_and(|a| a == "status") {
        let rest = std::iter::once(OsString::from("ringfs status")).chain(args.into_iter().skip(2));
        return status(StatusFlags::try_parse_from(rest).unwrap_or_else(|e| e.exit()));
    }
    if args.get(1).is_some_and(|a| a == "cache") {
        let rest = std::iter::once(OsString::from("ringfs cache")).chain(args.into_iter().skip(2));
        let flags = CacheFlags::try_parse_from(rest).unwrap_or_else(|e| e.exit());
        return cache(flags);
    }
    if args.get(1).is_some_and(|a| a == "archive") {
        let rest =
            std::iter::once(OsString::from("ringfs archive")).chain(args.into_iter().skip(2));
        let flags = ArchiveFlags::try_parse_from(rest).unwrap_or_else(|e| e.exit());
        return archive(flags);
    }
    if args
        .get(1)
        .is_some_and(|a| a == "completions" || a == "man")
    {
        return crate::manual::main(args.into_iter().skip(1).collect());
    }
    parse(args).and_then(run)
}

/// `ringfs watch MOUNTPOINT [--json]`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs watch",
    about = "Print each recording that becomes readable in a mount, as it does",
    long_about = "Print each recording that becomes readable in a mount, as it does: its path \
(one line, flushed), or with --json the call's record as one JSON line. Recordings of calls that \
end while watching show within a minute or so with live events, otherwise when a listing of the \
date finds them. Exits 0 when the mount goes away."
)]
pub struct WatchFlags {
    /// The mount point of a running ringfs mount.
    pub mountpoint: PathBuf,
    /// Print the call's record (one JSON object per line) instead of the path.
    #[arg(long)]
    pub json: bool,
}

fn watch(flags: WatchFlags) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&flags.mountpoint)
        .with_context(|| format!("mount point {}", flags.mountpoint.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut stream = crate::control::watch(&mountpoint).await.with_context(|| {
            format!(
                "no ringfs control socket for {} (is it a ringfs mount of this user?)",
                mountpoint.display()
            )
        })?;
        let mut out = std::io::stdout().lock();
        while let Some(line) = stream.next().await.context("reading the control socket")? {
            let text = match line {
                crate::control::WatchLine::Readable(r) if flags.json => r.record.to_string(),
                crate::control::WatchLine::Readable(r) => {
                    mountpoint.join(&r.path).display().to_string()
                }
                crate::control::WatchLine::Missed(n) => {
                    eprintln!("ringfs watch: fell behind, {n} recordings not shown");
                    continue;
                }
            };
            match writeln!(out, "{text}").and_then(|()| out.flush()) {
                Ok(()) => {}
                // The reader went away (`ringfs watch | head -1`): done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e).context("writing to stdout"),
            }
        }
        Ok(())
    })
}

/// `ringfs status [MOUNTPOINT] [--json] [--watch [SECS]]`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs status",
    about = "Show what a mount is doing: rate limits, queued downloads and when they are done, caches",
    long_about = "Show what a mount is doing: per rate group the requests used and left in the \
current window and any hold after a 429, requests waiting for the pacer, downloads in flight, \
how many downloads are queued and when they should be done at the rate allowed, the memory and \
disk caches, the event feed, the account and the uptime. Asking sends no request.\n\n\
Without MOUNTPOINT: every ringfs mount of this user (found through its control socket in the \
runtime directory). Only the mounting user can ask."
)]
pub struct StatusFlags {
    /// The mount point of a running ringfs mount (default: every mount of this user).
    pub mountpoint: Option<PathBuf>,
    /// Print the raw status object (one JSON line per mount).
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until interrupted (`ringfs status MOUNTPOINT
    /// --watch`: the mount point goes first, or it would be read as SECS).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
}

/// The control sockets to ask: the one of `mountpoint`, or every one in the runtime directory.
fn status_sockets(mountpoint: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(m) = mountpoint {
        let path = crate::control::socket_path(m, false).with_context(|| {
            format!(
                "no ringfs control socket for {} (is it a ringfs mount of this user?)",
                m.display()
            )
        })?;
        return Ok(vec![path]);
    }
    let dir = crate::control::runtime_dir(false).context("no ringfs mount of this user")?;
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect();
    sockets.sort();
    Ok(sockets)
}

fn status(flags: StatusFlags) -> anyhow::Result<()> {
    let interval = match flags.watch {
        Some(s) if !(s.is_finite() && s > 0.0) => anyhow::bail!("--watch SECS must be > 0"),
        Some(s) => Some(Duration::from_secs_f64(s.max(0.1))),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut out = std::io::stdout().lock();
    loop {
        // Found again at each refresh: mounts come and go while watching.
        let sockets = status_sockets(flags.mountpoint.as_deref())?;
        let mut text = String::new();
        let mut answered = 0;
        for socket in &sockets {
            match rt.block_on(crate::control::status_at(socket)) {
                Ok(v) => {
                    answered += 1;
                    if flags.json {
                        text += &format!("{v}\n");
                    } else {
                        if answered > 1 {
                            text.push('\n');
                        }
                        text += &crate::status::render(&v);
                    }
                }
                // Without a mount point a socket left by a mount that died is skipped; a mount
                // point that was asked for is an error.
                Err(e) if flags.mountpoint.is_some() => {
                    let m = flags.mountpoint.as_deref().unwrap_or(Path::new("?"));
                    return Err(anyhow::anyhow!(
                        "no ringfs control socket for {} (is it a ringfs mount of this user?): {e}",
                        m.display()
                    ));
                }
                Err(_) => {}
            }
        }
        if answered == 0 {
            anyhow::bail!("no ringfs mount of this user answers");
        }
        if interval.is_some() && !flags.json {
            // Home and clear the screen: the summary is redrawn in place.
            text = format!("\x1b[H\x1b[2J{text}");
        }
        match write!(out, "{text}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
        let Some(every) = interval else {
            return Ok(());
        };
        std::thread::sleep(every);
    }
}

/// `ringfs archive SOURCE s3://BUCKET/PREFIX`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs archive",
    about = "Fetch every recording of a window that a team's bucket lacks, and publish it",
    long_about = "Fetch every recording of a window that a team's bucket lacks, newest first, at \
the pace RingCentral's rate limit allows, and publish it (and the dates listed) to the bucket, \
as a mount with --shared would. What the bucket holds is skipped: an interrupted archive \
resumes, and a rerun spends no media request. RingCentral credentials as for a mount; the \
bucket's from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION or \
~/.aws/credentials."
)]
pub struct ArchiveFlags {
    /// `ringcentral` or an API base URL.
    pub source: String,
    /// The team's bucket: s3://BUCKET/PREFIX.
    pub bucket: String,
    /// This many dates, ending today.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// First date (YYYY-MM-DD); overrides --days.
    #[arg(long)]
    pub since: Option<jiff::civil::Date>,
    /// Last date (YYYY-MM-DD); default today.
    #[arg(long)]
    pub until: Option<jiff::civil::Date>,
    /// Time zone of the dates (IANA name); default the system's.
    #[arg(long)]
    pub tz: Option<String>,
    /// Which call log: auto, account or extension.
    #[arg(long, default_value = "auto")]
    pub scope: String,
    /// A file of RC_*=value lines.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Where tokens are kept (default as for a mount).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

fn archive(f: ArchiveFlags) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(log_filter("ringfs=warn"))
        .try_init();
    // Reuse the mount's validation of the window, zone and scope.
    let mut mount_args: Vec<OsString> = vec!["ringfs".into(), f.source.clone().into(), "/".into()];
    mount_args.extend([
        "--days".into(),
        f.days.to_string().into(),
        "--scope".into(),
        f.scope.clone().into(),
    ]);
    for (flag, v) in [
        ("--since", f.since.map(|d| d.to_string())),
        ("--until", f.until.map(|d| d.to_string())),
        ("--tz", f.tz.clone()),
    ] {
        if let Some(v) = v {
            mount_args.extend([flag.into(), v.into()]);
        }
    }
    let mut opts = parse(mount_args)?;
    if !matches!(opts.source, Source::RingCentral | Source::Url(_)) {
        bail!("ringfs archive fetches from RingCentral: use `ringcentral` or an API base URL");
    }
    if let Some(s) = f.state_file {
        opts.state_file = Some(s);
    }
    let url = crate::shared::BucketUrl::parse(&f.bucket).map_err(|e| anyhow!(e))?;
    let creds = account_credentials(f.credentials.as_deref(), &opts.source)?;
    let account = account_name(&creds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (client, _) = rt.block_on(connect(&opts, Some(creds)))?;
    let bucket = rt.block_on(crate::shared::open_publisher(&url, &account))?;
    // A publisher without a disk: every recording fetched goes to the bucket. Nobody waits on
    // a read here, so a read may wait as long as the pacer makes it (a 429's penalty too).
    let patience = Duration::from_secs(600);
    let mut config = opts.fs_config();
    config.read_timeout = patience;
    let p = rt.block_on(crate::shared::publishing(
        bucket.clone(),
        Arc::new(client.clone()),
        None,
        config.settle,
    ));
    let media = Media::with_tier(
        Arc::new(crate::source::ApiMedia::new(client.clone())),
        MediaConfig {
            read_timeout: patience,
            ..MediaConfig::default()
        },
        Some(p.tier),
    );
    let core = Fs::new(p.log, media, config);
    let tier = p.bucket_tier;
    rt.block_on(client.login())
        .context("logging in to RingCentral")?;
    let tty = std::io::stderr().is_terminal();
    let report = rt.block_on(crate::shared::archive::archive(
        &core,
        &bucket,
        &tier,
        |p| {
            if tty {
                eprint!("\r\x1b[K{p}");
            } else if p.fetched % 10 == 0 || p.left() == 0 {
                eprintln!("{p}");
            }
        },
    ))?;
    if tty {
        eprintln!();
    }
    println!("{}", crate::shared::archive::summary(&report, &bucket));
    if report.failed > 0 {
        bail!(
            "{} recordings could not be fetched (a rerun tries them again)",
            report.failed
        );
    }
    Ok(())
}

/// `ringfs cache info|clear`.
#[derive(Debug, Parser)]
#[command(
    name = "ringfs cache",
    about = "Show or empty the disk cache of fetched recordings",
    long_about = "Show or empty the disk cache of fetched recordings.\n\n\
The cache is --cache-dir DIR, or the directory a mount of SOURCE would use: \
$XDG_CACHE_HOME/ringfs/<account>/, named after the server URL and client id, which come from \
SOURCE (an API base URL) or RC_SERVER_URL, and RC_CLIENT_ID (with the other RC_* variables), \
or from --credentials FILE, as for a mount."
)]
pub struct CacheFlags {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheAction {
    /// Print where the cache is, how many recordings it holds (complete / partial), their bytes
    /// and the limit, and whether a mount uses it.
    Info(CacheArgs),
    /// Remove every kept recording (files and index rows); refused while a mount uses the cache.
    Clear(CacheArgs),
}

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// `ringcentral` (the default) or an API base URL, as given to the mount.
    pub source: Option<String>,
    /// The cache directory (as given to the mount).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A file of RC_*=value lines (as given to the mount).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// The limit the mount is given (`info` prints it).
    #[arg(long, default_value = "10G", value_name = "SIZE")]
    pub disk_cache_size: String,
}

impl CacheArgs {
    /// The directory: `--cache-dir`, else the account's default one.
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        let source = match self.source.as_deref().unwrap_or("ringcentral") {
            "ringcentral" => Source::RingCentral,
            s if s.starts_with("https://") || s.starts_with("http://") => {
                Source::Url(s.trim_end_matches('/').to_string())
            }
            "demo" => bail!("`demo` keeps no cache unless the mount is given --cache-dir DIR"),
            s => bail!("unknown source {s:?}: use `ringcentral` or an API base URL"),
        };
        let creds = account_credentials(self.credentials.as_deref(), &source)?;
        default_cache_dir(&creds)
            .ok_or_else(|| anyhow!("no cache directory: neither XDG_CACHE_HOME nor HOME is set"))
    }
}

/// Bytes for people: `1.5 GiB (1610612736 bytes)`.
fn human_bytes(n: u64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = None;
    for u in units {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{v:.1} {u} ({n} bytes)"),
        None => format!("{n} bytes"),
    }
}

fn cache(flags: CacheFlags) -> anyhow::Result<()> {
    use crate::store::{DiskStore, InUse, StoreConfig, disk};
    match flags.action {
        CacheAction::Info(args) => {
            let limit = parse_size(&args.disk_cache_size).map_err(|e| anyhow!(e))?;
            let dir = args.dir()?;
            println!("cache directory: {}", dir.display());
            match disk::summary(&dir)? {
                None => println!("recordings: 0 (nothing kept yet)"),
                Some(s) => {
                    println!(
                        "recordings: {} ({} complete, {} partial)",
                        s.complete + s.partial,
                        s.complete,
                        s.partial
                    );
                    println!("bytes: {}", human_bytes(s.bytes));
                }
            }
            let free = StoreConfig::default();
            println!(
                "limit: {} (--disk-cache-size), and at least {} or {} % of the filesystem left free",
                human_bytes(limit),
                human_bytes(free.keep_free_bytes),
                free.keep_free_percent
            );
            if let Some(calls) = crate::store::MetaStore::count(&dir) {
                println!("call index: {calls} calls");
            }
            if disk::in_use(&dir) {
                println!("in use by a running mount");
            }
            Ok(())
        }
        CacheAction::Clear(args) => {
            let dir = args.dir()?;
            if !dir.join("index.sqlite").exists() {
                println!("nothing to clear in {}", dir.display());
                return Ok(());
            }
            let config = StoreConfig {
                max_bytes: u64::MAX,
                keep_free_bytes: 0,
                keep_free_percent: 0,
            };
            let store = match DiskStore::open(&dir, config) {
                Ok(store) => store,
                Err(e) if e.downcast_ref::<InUse>().is_some() => bail!(
                    "cache directory {} is in use by a running mount; unmount it first (nothing was removed)",
                    dir.display()
                ),
                Err(e) => return Err(e),
            };
            let discarded = store.stats().discarded;
            let (recordings, bytes) = store.clear();
            // The call index goes too: the next mount lists the call log again.
            let calls = crate::store::MetaStore::count(&dir).unwrap_or(0);
            if calls > 0 {
                let meta =
                    crate::store::MetaStore::open(&dir, Duration::from_secs(100 * 365 * 86_400))?;
                meta.reset();
                meta.shutdown();
            }
            store.shutdown();
            println!(
                "removed {} recordings ({}) and {calls} calls of the call index from {}",
                recordings + discarded,
                human_bytes(bytes),
                dir.display()
            );
            Ok(())
        }
    }
}

/// Parses the command line; clap prints help and usage errors itself.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Options> {
    let args = expand_mount_options(args).map_err(|e| failed(Exit::Usage, e))?;
    let flags = Flags::try_parse_from(args).unwrap_or_else(|e| e.exit());
    Options::from_flags(flags).map_err(|e| failed(Exit::Usage, format!("{e:#}")))
}

/// Checks the mount point before anything else, with a message that says what to do.
fn check_mountpoint(path: &Path) -> anyhow::Result<()> {
    let bad = |msg: String| Err(failed(Exit::MountPoint, msg));
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            if ringfs_mounted_at(path) {
                return Err(failed(
                    Exit::AlreadyMounted,
                    format!(
                        "{} is already a ringfs mount (unmount it first: `umount {}`)",
                        path.display(),
                        path.display()
                    ),
                ));
            }
            Ok(())
        }
        Ok(_) => bad(format!("mount point {} is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bad(format!(
            "mount point {p} is a stale FUSE mount left by a process that died \
             (Transport endpoint is not connected); clear it with `fusermount3 -u {p}` or `umount -l {p}`",
            p = path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bad(format!(
            "mount point {} does not exist (mkdir it first)",
            path.display()
        )),
        Err(e) => bad(format!("mount point {}: {e}", path.display())),
    }
}

/// Whether a ringfs mount is at `path` already (the kernel would stack a second one on it).
fn ringfs_mounted_at(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        // Mount points with spaces are written with octal escapes (`\040`).
        f.len() > 2 && f[2] == "fuse.ringfs" && f[1].replace("\\040", " ") == path.to_string_lossy()
    })
}

fn check_fuse() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        return Err(failed(
            Exit::NoFuse,
            "FUSE is not available: /dev/fuse is missing (install fuse3 and load the fuse module)",
        ));
    }
    Ok(())
}

/// The credentials for a real account: `--credentials FILE` or the environment.
fn credentials(opts: &Options) -> anyhow::Result<Credentials> {
    account_credentials(opts.credentials_file.as_deref(), &opts.source)
        .map_err(|e| failed(Exit::Credentials, format!("{e:#}")))
}

/// The credentials from `file` or the environment, with the server URL of `source` if it is one.
fn account_credentials(file: Option<&Path>, source: &Source) -> anyhow::Result<Credentials> {
    let mut creds = match file {
        Some(path) => Credentials::from_file(path)
            .with_context(|| format!("credentials file {}", path.display()))?,
        None => Credentials::from_env().context("credentials")?,
    };
    if let Source::Url(url) = source {
        creds.server_url = url.clone();
    }
    Ok(creds)
}

/// Mounts and serves until unmounted. Forks first unless `--foreground`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    check_fuse()?;
    check_mountpoint(&opts.mountpoint)?;
    // A bucket reader never reads RingCentral credentials, even when RC_* variables are set.
    let creds = match opts.source {
        Source::Demo | Source::Bucket(_) => None,
        _ => Some(credentials(&opts)?),
    };
    let mut ready = if opts.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    let result = serve(opts, creds, &mut ready);
    if let (Err(e), Some(pipe)) = (&result, ready.as_mut()) {
        // The parent prints this; our own stderr may already be /dev/null.
        let _ = writeln!(pipe, "{} {e:#}", exit_code(e));
        // The parent prints it: this process's own report (in `main`) would repeat it.
        detach_stdio();
    }
    result
}

/// Forks; the parent waits for the child's word and exits with it. Returns the write end of the
/// pipe in the child. Must run before any thread is started.
fn daemonize() -> anyhow::Result<std::fs::File> {
    let mut fds = [0; 2];
    // SAFETY: plain pipe(2)/fork(2); no threads exist yet (checked by the caller's design: the
    // tokio runtime is built after this returns).
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    // macOS has no pipe2; no other thread exists to race the FD_CLOEXEC.
    #[cfg(not(target_os = "linux"))]
    let rc = unsafe {
        let rc = libc::pipe(fds.as_mut_ptr());
        if rc == 0 {
            for fd in fds {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        rc
    };
    if rc != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists (see above), so the child inherits a consistent process.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            drop(r);
            // SAFETY: setsid has no memory-safety preconditions; it fails only if already a leader.
            unsafe { libc::setsid() };
            Ok(std::fs::File::from(w))
        }
        _child => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg.trim() == "ready" {
                std::process::exit(0);
            }
            // `<exit status> <message>`, as `run` writes it.
            let msg = msg.trim();
            let (code, msg) = match msg.split_once(' ') {
                Some((c, m)) if c.parse::<u8>().is_ok() => (c.parse().unwrap_or(1), m),
                _ => (1, msg),
            };
            if msg.is_empty() {
                eprintln!("ringfs: the mount process exited before the mount was ready");
            } else {
                eprintln!("ringfs: {msg}");
            }
            std::process::exit(code);
        }
    }
}

/// The log filter from `RINGFS_LOG` (`debug`, `ringfs=debug,hyper=info`, ...), else `default`.
///
/// tracing-subscriber's `Targets` rather than `EnvFilter`: the same `target=level` syntax for
/// what ringfs needs, without the regex engine EnvFilter compiles in.
pub fn log_filter(default: &str) -> tracing_subscriber::filter::Targets {
    let from_env = std::env::var("RINGFS_LOG")
        .ok()
        .and_then(|v| match v.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("ringfs: ignoring RINGFS_LOG={v:?}: {e}");
                None
            }
        });
    let filter: tracing_subscriber::filter::Targets =
        from_env.unwrap_or_else(|| default.parse().expect("default log filter"));
    // tungstenite traces the WebSocket request line, whose query holds the connection's token:
    // never below debug, whatever RINGFS_LOG asks.
    if filter.would_enable("tungstenite", &tracing::Level::TRACE) {
        filter.with_target("tungstenite", tracing::Level::DEBUG)
    } else {
        filter
    }
}

/// Drops fuser's "Failed to send FUSE reply" when the kernel answers ENOENT: it no longer waits
/// for that answer, because the program that asked was interrupted (a Ctrl-C while `ls` waited
/// for a listing). Nothing failed then, and an ERROR line would say otherwise; fuser's other
/// reply errors stay in the log.
struct AbandonedReplies;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AbandonedReplies {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // fuser logs through `log`: such an event's own target is "log", the module's is in
        // its `log.target` field.
        #[derive(Default)]
        struct Fields {
            fuser: bool,
            abandoned: bool,
        }
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "log.target" {
                    self.fuser |= value.starts_with("fuser");
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let m = format!("{value:?}");
                    self.abandoned |=
                        m.contains("Failed to send FUSE reply") && m.contains("(os error 2)");
                }
            }
        }
        let mut f = Fields {
            fuser: event.metadata().target().starts_with("fuser"),
            ..Fields::default()
        };
        event.record(&mut f);
        !(f.fuser && f.abandoned)
    }
}

fn init_logging(opts: &Options) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // fuser's own warnings (a request it could not answer) belong in the log too.
    let filter = log_filter("ringfs=info,fuser=warn");
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_target(false);
    match &opts.log_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            // Logs name the account's calls: only the owner reads them.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("log file {}", path.display()))?;
            // `mode` only applies to a file created now: an existing log becomes 0600 too.
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("log file {}", path.display()))?;
            }
            let _ = builder
                .with_ansi(false)
                .with_writer(Arc::new(file))
                .finish()
                .with(filter)
                .with(AbandonedReplies)
                .try_init();
        }
        None if opts.foreground => {
            let _ = builder
                .with_writer(std::io::stderr)
                .finish()
                .with(filter)
                .with(AbandonedReplies)
                .try_init();
        }
        None => {
            let _ = builder
                .with_writer(std::io::sink)
                .finish()
                .with(filter)
                .with(AbandonedReplies)
                .try_init();
        }
    }
    Ok(())
}

fn serve(
    opts: Options,
    creds: Option<Credentials>,
    ready: &mut Option<std::fs::File>,
) -> anyhow::Result<()> {
    init_logging(&opts)?;
    let started = tokio::time::Instant::now();
    let disk = opts.disk_cache_dir(creds.as_ref()).and_then(|dir| {
        let config = crate::store::StoreConfig {
            max_bytes: opts.disk_cache_bytes,
            ..Default::default()
        };
        match crate::store::DiskStore::open(&dir, config) {
            Ok(store) => {
                tracing::info!("keeping recordings in {}", dir.display());
                Some(store)
            }
            Err(e) => {
                // A cache is never a reason not to mount: serve from memory and the network.
                tracing::warn!("no disk cache: {e:#}");
                None
            }
        }
    });
    // The call index lives beside the recordings, under the same lock. Not for `demo`: its
    // emulated account is new at every mount.
    let config = opts.fs_config();
    let meta = disk
        .as_ref()
        .filter(|_| !matches!(opts.source, Source::Demo | Source::Bucket(_)))
        .and_then(
            |d| match crate::store::MetaStore::open(d.dir(), config.retention) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::warn!("no call index: {e:#}");
                    None
                }
            },
        );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("ringfs")
        .build()
        .context("starting the runtime")?;
    let media_config = MediaConfig {
        cache_bytes: opts.cache_bytes,
        read_timeout: opts.read_timeout,
        ..MediaConfig::default()
    };
    // The tiers below memory are chosen here and only here: a team's bucket goes below the
    // disk, stacked with it into the one tier given (see "Adding a tier" in `crate::store`).
    let mut tier = disk.clone().map(|d| d as Arc<dyn crate::store::Tier>);
    let mut publishing = None;
    // The demo's emulator lives as long as the mount.
    let mut _emulator = None;
    let (core, client, events) = if let Source::Bucket(url) = &opts.source {
        // A reader: no RingCentral client at all (see `crate::shared`).
        let bucket = rt.block_on(crate::shared::open_reader(url))?;
        let core = crate::shared::reader_core(bucket, media_config, tier, config);
        rt.block_on(core.start(async { Ok(()) }))?;
        if opts.metrics.is_some() {
            tracing::warn!("--metrics is not served by a bucket reader");
        }
        (core, None, None)
    } else {
        let account = creds.as_ref().map(account_name);
        let (client, emulator) = rt.block_on(connect(&opts, creds))?;
        _emulator = emulator;
        let mut log: Arc<dyn crate::fs::CallLog> = Arc::new(client.clone());
        if let (Some(url), Some(account)) = (&opts.shared, account) {
            let bucket = rt.block_on(crate::shared::open_publisher(url, &account))?;
            let p = rt.block_on(crate::shared::publishing(bucket, log, tier, config.settle));
            (log, tier) = (p.log, Some(p.tier));
            publishing = Some(p.bucket_tier);
        }
        let media = Media::with_tier(
            Arc::new(crate::source::ApiMedia::new(client.clone())),
            media_config,
            tier,
        );
        if let Some(addr) = opts.metrics {
            // Bound before the mount is reported ready, so a taken port fails the start.
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("metrics address {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!("metrics on http://{bound}/metrics");
            let sources = crate::scrape::Sources {
                client: client.clone(),
                media: media.clone(),
                disk: disk.clone(),
            };
            rt.spawn(crate::scrape::serve(listener, sources));
        }
        let core = Arc::new(match &meta {
            Some(meta) => Fs::with_index(log, media, config, meta.clone()),
            None => Fs::new(log, media, config),
        });
        // Logging in is fatal only when there is no call index to serve from (see `Fs::start`).
        rt.block_on(core.start(client.login()))
            .context("logging in to RingCentral")?;
        let events = start_events(&rt, &opts, &client, &core)?;
        (core, Some(client), events)
    };
    // Named now: finding it stats the mount point, which once mounted waits for this process.
    let canonical = std::fs::canonicalize(&opts.mountpoint).unwrap_or(opts.mountpoint.clone());
    let control_path = crate::control::socket_path(&opts.mountpoint, true)
        .map_err(|e| tracing::warn!("no control socket (`ringfs watch` will not work): {e}"))
        .ok();
    let adapter = crate::fuse::FuseAdapter::new(core.clone(), rt.handle().clone());
    let settings = crate::fuse::MountSettings {
        fsname: source_name(&opts.source),
        allow_other: opts.allow_other,
        allow_root: opts.allow_root,
        default_permissions: opts.default_permissions,
        // Backing files only come from the disk cache.
        passthrough: !opts.no_passthrough && disk.is_some(),
    };
    let mut session = crate::fuse::mount(adapter, &opts.mountpoint, &settings)?;
    core.set_changes(session.changes());
    let control = control_path.and_then(|path| {
        let _in_runtime = rt.enter();
        let mountpoint = canonical.clone();
        // What the pacer and the caches say needs the RingCentral client; a bucket reader has
        // none and tells what its core knows.
        let status: crate::control::StatusSource = match &client {
            Some(client) => {
                let sources = crate::status::Sources {
                    fs: core.clone(),
                    client: client.clone(),
                    disk: disk.clone(),
                    disk_cap: opts.disk_cache_bytes,
                    started,
                };
                Arc::new(move || crate::control::Status::gather(&mountpoint, &sources))
            }
            None => {
                let core = core.clone();
                Arc::new(move || crate::control::Status::of(&mountpoint, &core))
            }
        };
        crate::control::serve(&path, core.clone(), status)
            .map_err(|e| tracing::warn!("no control socket (`ringfs watch` will not work): {e}"))
            .ok()
    });
    tracing::info!(
        "mounted {} on {}",
        source_name(&opts.source),
        opts.mountpoint.display()
    );
    // SIGINT/SIGTERM unmount; the session loop below then returns. The handlers are installed
    // before the parent is told "ready": a SIGTERM sent as soon as `ringfs` returned used to
    // meet the default action and leave a stale mount behind (tests/cli.rs
    // `sigterm_unmounts_cleanly` failed that way on a loaded machine).
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    if let Some(mut pipe) = ready.take() {
        writeln!(pipe, "ready").ok();
        drop(pipe);
        detach_stdio();
    }
    let mut unmounter = session.unmount_callable();
    rt.spawn(async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::info!("signal received, unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::warn!("unmount failed: {e}");
        }
    });
    let result = session.run();
    tracing::info!("unmounted");
    if let Some(events) = events {
        events.stop(&rt);
    }
    // Ends the watchers' streams and removes the socket.
    drop(control);
    if let Some(tier) = publishing {
        // Recordings fetched but not yet published go to the bucket before the process ends.
        if !rt.block_on(tier.flush(Duration::from_secs(30))) {
            tracing::warn!("{} recordings were not published", tier.queued());
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    if let Some(meta) = meta {
        meta.shutdown();
    }
    if let Some(disk) = disk {
        // What was fetched and is still queued goes to disk before the process ends.
        disk.shutdown();
    }
    result.context("serving the mount")
}

/// The running event feed: the core's consumer and the subscription's task.
struct EventsFeed {
    follow: tokio::task::JoinHandle<()>,
    feed: tokio::task::JoinHandle<()>,
}

impl EventsFeed {
    /// Stops the feed at unmount: the consumer goes, and the subscription is deleted (over the
    /// socket, no rate-limited request) before the runtime ends; bounded by the feed's own
    /// timeout.
    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.follow.abort();
        let feed = self.feed;
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), feed).await });
    }
}

/// Starts the live event feed into the core (`--events`). With `websocket`, waits (up to
/// --read-timeout) until the subscription is live and fails the start when it is refused or
/// does not come, so a service manager sees it; with `auto`, the mount does not wait for it.
fn start_events(
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    client: &Client,
    core: &Arc<Fs>,
) -> anyhow::Result<Option<EventsFeed>> {
    if opts.events == EventsMode::Off {
        return Ok(None);
    }
    let _in_runtime = rt.enter();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let follow = core.clone().follow(rx);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let insist = opts.events == EventsMode::WebSocket;
    let feed = rt.spawn(crate::source::live_feed(
        client.clone(),
        opts.scope,
        crate::api::EventsConfig::default(),
        tx,
        insist.then_some(first_tx),
    ));
    if insist {
        let first = rt.block_on(tokio::time::timeout(opts.read_timeout, first_rx));
        match first {
            Ok(Ok(crate::api::LiveNotice::Live { .. })) => {}
            Ok(Ok(crate::api::LiveNotice::Unavailable(why))) => {
                return Err(failed(
                    Exit::Events,
                    format!("--events websocket: the subscription was refused: {why}"),
                ));
            }
            _ => {
                return Err(failed(
                    Exit::Events,
                    format!(
                        "--events websocket: no live subscription within {} s",
                        opts.read_timeout.as_secs()
                    ),
                ));
            }
        }
    }
    Ok(Some(EventsFeed { follow, feed }))
}

/// The mount's source column in /proc/mounts: `ringfs:demo`, `ringfs:ringcentral`, or
/// `ringfs:` and the API server's host (no scheme: mount tables split fields on spaces and some
/// tools trip over `://`).
pub fn source_name(s: &Source) -> String {
    let what = match s {
        Source::Demo => "demo".to_string(),
        Source::RingCentral => "ringcentral".to_string(),
        Source::Url(u) => {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            rest.split('/').next().unwrap_or(rest).to_string()
        }
        // `ringfs:s3:BUCKET/PREFIX`.
        Source::Bucket(u) => {
            let text = u.to_string();
            format!("s3:{}", text.trim_start_matches("s3://"))
        }
    };
    format!("ringfs:{what}")
}

/// Builds the client (starting the in-process emulator for `demo`); logging in is left to
/// [`Fs::start`].
async fn connect(
    opts: &Options,
    creds: Option<Credentials>,
) -> anyhow::Result<(Client, Option<crate::emulator::Emulator>)> {
    let (config, emulator) = match creds {
        Some(creds) => {
            let mut c = ClientConfig::new(creds);
            c.state_file = opts.state_file.clone();
            (c, None)
        }
        None => {
            let emu_config = crate::emulator::Config {
                calls: opts.demo_calls,
                live: opts.demo_live,
                format: opts.demo_format,
                ..crate::emulator::Config::default()
            };
            let emu = crate::emulator::Emulator::start(emu_config.clone())
                .await
                .context("starting the demo account")?;
            let creds = Credentials {
                server_url: emu.api_url(),
                client_id: emu_config.client_id.clone(),
                client_secret: emu_config.client_secret.clone(),
                jwt: emu_config.jwt.clone(),
            };
            let mut c = ClientConfig::new(creds);
            c.media_base = Some(emu.media_url());
            c.state_file = None; // a new emulator each time: stored tokens would never be valid
            (c, Some(emu))
        }
    };
    let mut config = config;
    // A response silent for a third of the read timeout is taken for a drop and resumed, so a
    // stalled connection costs a waiting reader one more request, not its whole wait.
    config.stall_timeout =
        (opts.read_timeout / 3).clamp(Duration::from_secs(2), Duration::from_secs(30));
    let client = Client::new(config).context("setting up the RingCentral client")?;
    Ok((client, emulator))
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_the_kernel_no_longer_waits_for_is_not_logged_as_an_error() {
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Seen(Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                struct M(String);
                impl tracing::field::Visit for M {
                    fn record_debug(
                        &mut self,
                        _: &tracing::field::Field,
                        value: &dyn std::fmt::Debug,
                    ) {
                        self.0 += &format!("{value:?}");
                    }
                }
                let mut m = M(String::new());
                event.record(&mut m);
                self.0.lock().unwrap().push(m.0);
            }
        }
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(AbandonedReplies)
            .with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: Invalid argument (os error 22)");
            // As fuser's `log` records arrive through tracing-log.
            tracing::error!(target: "log", { log.target = "fuser::reply" }, "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::warn!(target: "ringfs::fs", "listing failed (os error 2)");
        });
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].contains("os error 22") && seen[1].contains("listing failed"));
    }

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_options_become_flags() {
        let out = expand_mount_options(args(&[
            "ringfs", "ringcentral", "/mnt/calls", "-o", "defaults,days=30,credentials=/etc/ringfs.env,allow_other,cache_size=64M,_netdev,x-systemd.automount,rw",
        ]))
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "ringfs",
                "ringcentral",
                "/mnt/calls",
                "--days=30",
                "--credentials=/etc/ringfs.env",
                "--allow-other",
                "--cache-size=64M"
            ])
        );
        let out =
            expand_mount_options(args(&["ringfs", "-ouid=1000,umask=022", "demo", "/m"])).unwrap();
        assert_eq!(
            out,
            args(&["ringfs", "--uid=1000", "--umask=022", "demo", "/m"])
        );
        assert!(expand_mount_options(args(&["ringfs", "-o"])).is_err());
    }

    #[test]
    fn options_validate() {
        let parse = |a: &[&str]| {
            let a = expand_mount_options(args(a)).unwrap();
            Options::from_flags(Flags::try_parse_from(a).unwrap())
        };
        let o = parse(&["ringfs", "demo", "/m", "-o", "days=7,umask=022,tz=UTC"]).unwrap();
        assert_eq!(o.source, Source::Demo);
        assert_eq!(o.window.days, 7);
        let c = o.fs_config();
        assert_eq!((c.file_mode, c.dir_mode), (0o444, 0o555));
        let o = parse(&["ringfs", "demo", "/m"]).unwrap();
        let c = o.fs_config();
        assert_eq!(
            (c.file_mode, c.dir_mode),
            (0o400, 0o500),
            "private by default"
        );
        assert_eq!(o.cache_bytes, 256 << 20);
        assert!(parse(&["ringfs", "ftp://x", "/m"]).is_err());
        assert!(parse(&["ringfs", "demo", "/m", "--tz", "Mars/Olympus"]).is_err());
        assert!(parse(&["ringfs", "demo", "/m", "--scope", "galaxy"]).is_err());
        assert!(parse(&["ringfs", "demo", "/m", "--umask", "999"]).is_err());
        let o = parse(&["ringfs", "https://platform.ringcentral.com/", "/m"]).unwrap();
        assert_eq!(
            o.source,
            Source::Url("https://platform.ringcentral.com".into())
        );
    }

    #[test]
    fn websocket_tokens_never_reach_a_trace_log() {
        // tungstenite traces the request line with `access_token=` in it.
        let f = log_filter("trace");
        assert!(f.would_enable("ringfs::api", &tracing::Level::TRACE));
        assert!(f.would_enable("tungstenite::handshake", &tracing::Level::DEBUG));
        assert!(!f.would_enable("tungstenite::handshake::client", &tracing::Level::TRACE));
        assert!(!log_filter("info").would_enable("tungstenite", &tracing::Level::DEBUG));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn disk_cache_options() {
        let parse = |a: &[&str]| {
            let a = expand_mount_options(args(a)).unwrap();
            Options::from_flags(Flags::try_parse_from(a).unwrap()).unwrap()
        };
        let creds = Credentials {
            server_url: "https://platform.ringcentral.com".into(),
            client_id: "abc".into(),
            client_secret: "secret".into(),
            jwt: "jwt".into(),
        };
        let o = parse(&[
            "ringfs",
            "ringcentral",
            "/m",
            "-o",
            "cache_dir=/var/cache/calls,disk_cache_size=2G",
        ]);
        assert_eq!(
            o.disk_cache_dir(Some(&creds)),
            Some(PathBuf::from("/var/cache/calls"))
        );
        assert_eq!(o.disk_cache_bytes, 2 << 30);
        let o = parse(&["ringfs", "ringcentral", "/m"]);
        assert_eq!(o.disk_cache_bytes, 10 << 30);
        let dir = o.disk_cache_dir(Some(&creds)).expect("a default directory");
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("platform.ringcentral.com-"), "{name}");
        assert!(!name.contains("secret") && !name.contains("jwt"));
        assert_eq!(dir.parent().unwrap().file_name().unwrap(), "ringfs");
        assert_eq!(name, account_name(&creds), "stable");
        let other = |f: &dyn Fn(&mut Credentials)| {
            let mut c = creds.clone();
            f(&mut c);
            account_name(&c)
        };
        assert_ne!(name, other(&|c| c.client_id = "other".into()));
        // Two users of one app: their JWTs name different users, so different directories.
        let jwt_of = |sub: &str| {
            use base64::Engine as _;
            let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            format!(
                "{}.{}.sig",
                b(r#"{"alg":"RS256"}"#),
                b(&format!(r#"{{"sub":"{sub}"}}"#))
            )
        };
        let a1 = other(&|c| c.jwt = jwt_of("111"));
        assert_ne!(a1, other(&|c| c.jwt = jwt_of("222")));
        // A new JWT for the same user (rotated credentials): the same directory.
        assert_eq!(a1, other(&|c| c.jwt = format!("{}x", jwt_of("111"))));
        // The secret never shows: the secret and the JWT are not in the name.
        assert!(!a1.contains("111"));
        // Never written: --no-disk-cache (also as -o), and demo without a directory.
        let o = parse(&[
            "ringfs",
            "ringcentral",
            "/m",
            "-o",
            "no_disk_cache,cache_dir=/x",
        ]);
        assert_eq!(o.disk_cache_dir(Some(&creds)), None);
        let o = parse(&["ringfs", "demo", "/m"]);
        assert_eq!(o.disk_cache_dir(Some(&creds)), None);
        let o = parse(&["ringfs", "demo", "/m", "--cache-dir", "/tmp/c"]);
        assert_eq!(o.disk_cache_dir(None), Some(PathBuf::from("/tmp/c")));
        assert!(!o.no_passthrough, "passthrough by default");
        let o = parse(&["ringfs", "demo", "/m", "-o", "no_passthrough"]);
        assert!(o.no_passthrough);
    }

    #[test]
    fn status_flags_parse() {
        let f = StatusFlags::try_parse_from(["ringfs status", "--watch"]).unwrap();
        assert_eq!((f.mountpoint, f.watch, f.json), (None, Some(2.0), false));
        let f =
            StatusFlags::try_parse_from(["ringfs status", "/mnt/c", "--json", "--watch", "0.5"])
                .unwrap();
        assert_eq!(f.mountpoint.as_deref(), Some(Path::new("/mnt/c")));
        assert_eq!((f.watch, f.json), (Some(0.5), true));
        let f = StatusFlags::try_parse_from(["ringfs status"]).unwrap();
        assert_eq!(f.watch, None);
    }

    #[test]
    fn cache_subcommands_parse() {
        let parse = |a: &[&str]| CacheFlags::try_parse_from(a.iter().copied());
        let f = parse(&["ringfs cache", "info", "--cache-dir", "/c"]).unwrap();
        let CacheAction::Info(a) = f.action else {
            panic!("info")
        };
        assert_eq!(a.dir().unwrap(), PathBuf::from("/c"));
        let f = parse(&["ringfs cache", "clear", "demo"]).unwrap();
        let CacheAction::Clear(a) = f.action else {
            panic!("clear")
        };
        assert!(a.dir().is_err(), "demo has no default cache");
        assert!(parse(&["ringfs cache", "wipe"]).is_err());
    }

    #[test]
    fn bucket_sources_and_the_shared_option() {
        let o = parse(args(&["ringfs", "s3://team/calls/acme", "/m"])).unwrap();
        let Source::Bucket(u) = &o.source else {
            panic!("{:?}", o.source)
        };
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("team", "calls/acme")
        );
        assert_eq!(o.shared, None);
        let o = parse(args(&[
            "ringfs",
            "ringcentral",
            "/m",
            "-o",
            "shared=s3://team/acme,days=7",
        ]))
        .unwrap();
        assert_eq!(
            o.shared.map(|u| u.to_string()).as_deref(),
            Some("s3://team/acme")
        );
        assert!(parse(args(&["ringfs", "demo", "/m", "--shared", "s3://t/p"])).is_err());
        assert!(parse(args(&["ringfs", "s3://t/p", "/m", "--shared", "s3://t/p"])).is_err());
        assert!(parse(args(&["ringfs", "ringcentral", "/m", "--shared", "t/p"])).is_err());
        let f = ArchiveFlags::try_parse_from([
            "ringfs archive",
            "ringcentral",
            "s3://t/p",
            "--days",
            "7",
        ])
        .unwrap();
        assert_eq!(
            (f.source.as_str(), f.bucket.as_str(), f.days),
            ("ringcentral", "s3://t/p", 7)
        );
    }
}
