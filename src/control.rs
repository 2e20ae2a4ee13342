//! The mount's control socket: a Unix socket per mount through which `ringfs watch` (and any
//! script) follows the recordings that become readable, and `ringfs status` asks for the mount's
//! status (rate groups, queue and estimate, downloads, caches: see [`crate::status`]).
//!
//! # Where it is
//! In the runtime directory: `$XDG_RUNTIME_DIR/ringfs/`, else `/run/user/UID/ringfs/` when
//! `/run/user/UID` exists, else `/tmp/ringfs-UID/`; created 0700, and refused when it is not
//! owned by the user or is open to group or others (another user could then put a socket of
//! theirs in its place). The socket's name is a hash of the canonical mount point
//! ([`socket_name`]), so a client finds it from the mount point alone; it is mode 0600 and
//! removed when the mount ends ([`Guard`]).
//!
//! # Protocol
//! Line-delimited JSON. A request is one line:
//! - `{"op":"status"}` → one line, the [`Status`] object; the connection stays open for more
//!   requests.
//! - `{"op":"watch"}` → `{"watching":true}` once subscribed (so a client knows nothing from
//!   then on is missed), then one line per recording that becomes readable,
//!   `{"path":"YYYY-MM-DD/<session>/<file>","record":{...}}` (the path relative to the mount
//!   root, the record as the call log returned it), and `{"missed":N}` when the client fell
//!   too far behind. The stream ends (EOF) when the mount ends.
//!
//! Anything else is answered `{"error":"..."}`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, watch};

use crate::fs::{Feed, Fs, LiveCounters, Readable};

/// What `{"op":"status"}` answers. A struct the mount fills ([`StatusSource`]); fields are
/// added here as the mount has more to say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// The canonical mount point.
    pub mountpoint: PathBuf,
    /// The event feed: `{"state":"off"|"live"|"down"}` or
    /// `{"state":"unavailable","reason":"..."}`.
    pub events: Feed,
    /// What the event feed led to.
    pub live: LiveCounters,
    /// Dates whose records are held in memory.
    pub dates_in_memory: usize,
    /// What the mount adds: rate groups, queue and estimate, downloads, caches, account,
    /// uptime (flattened into the same object; see [`crate::status`]).
    #[serde(flatten)]
    pub progress: Option<crate::status::Progress>,
}

impl Status {
    /// The status the core alone can tell.
    pub fn of(mountpoint: &Path, fs: &Fs) -> Status {
        Status {
            mountpoint: mountpoint.to_path_buf(),
            events: fs.feed(),
            live: fs.live_counters(),
            dates_in_memory: fs.dates_in_memory(),
            progress: None,
        }
    }

    /// The status of a mount with everything it adds.
    pub fn gather(mountpoint: &Path, sources: &crate::status::Sources) -> Status {
        Status {
            progress: Some(sources.progress()),
            ..Status::of(mountpoint, &sources.fs)
        }
    }
}

/// Fills the status at each request.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// Gives a new subscription to the readable recordings at each `watch`.
pub type Subscribe = Arc<dyn Fn() -> broadcast::Receiver<Readable> + Send + Sync>;

/// The runtime directory for control sockets (see the module docs), created if `create`.
/// `xdg` is `$XDG_RUNTIME_DIR`.
pub fn runtime_dir_with(xdg: Option<PathBuf>, create: bool) -> io::Result<PathBuf> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = match xdg.filter(|p| p.is_absolute()) {
        Some(base) => base.join("ringfs"),
        None => {
            let run = PathBuf::from(format!("/run/user/{uid}"));
            if run.is_dir() {
                run.join("ringfs")
            } else {
                PathBuf::from(format!("/tmp/ringfs-{uid}"))
            }
        }
    };
    if create {
        match std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| (e.kind(), e))
        {
            Ok(()) => {}
            Err((io::ErrorKind::AlreadyExists, _)) => {}
            Err((_, e)) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of this user's closed to others (owner {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// [`runtime_dir_with`] `$XDG_RUNTIME_DIR`.
pub fn runtime_dir(create: bool) -> io::Result<PathBuf> {
    runtime_dir_with(
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        create,
    )
}

/// The socket's file name for a canonical mount point: a hash of its bytes (FNV-1a, stable
/// across builds), short enough for `sun_path` whatever the mount point.
pub fn socket_name(canonical_mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical_mountpoint.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mnt-{h:016x}.sock")
}

/// Where the control socket of the mount at `mountpoint` is (the directory created if
/// `create`). Canonicalizing stats the mount point: a server must call this before mounting
/// (a stat of its own mount point would wait for it).
pub fn socket_path(mountpoint: &Path, create: bool) -> io::Result<PathBuf> {
    let canonical = std::fs::canonicalize(mountpoint)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", mountpoint.display())))?;
    Ok(runtime_dir(create)?.join(socket_name(&canonical)))
}

/// The running server; dropping it ends every connection and removes the socket.
pub struct Guard {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Guard {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control socket of the mount of `fs` at `path` (see the module docs). Call
/// within the tokio runtime.
pub fn serve(path: &Path, fs: Arc<Fs>, status: StatusSource) -> io::Result<Guard> {
    serve_feed(path, Arc::new(move || fs.readable()), status)
}

/// [`serve`] over any source of readable announcements.
pub fn serve_feed(path: &Path, subscribe: Subscribe, status: StatusSource) -> io::Result<Guard> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another mount answers there", path.display()),
            ));
        }
        // Left by a mount that died.
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(
                        stream,
                        subscribe.clone(),
                        status.clone(),
                        stopped.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Guard {
        path: path.to_path_buf(),
        stop,
        task,
    })
}

#[derive(serde::Deserialize)]
struct Request {
    op: String,
}

async fn send_line(w: &mut OwnedWriteHalf, v: &impl serde::Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn connection(
    stream: UnixStream,
    subscribe: Subscribe,
    status: StatusSource,
    mut stop: watch::Receiver<bool>,
) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l,
            _ = stop.changed() => return,
        };
        let Ok(Some(line)) = line else { return };
        let op = serde_json::from_str::<Request>(&line).map(|r| r.op);
        let sent = match op.as_deref() {
            Ok("status") => send_line(&mut w, &status()).await,
            Ok("watch") => {
                watch_loop(&mut w, &mut lines, subscribe(), &mut stop).await;
                return;
            }
            Ok(other) => {
                send_line(
                    &mut w,
                    &serde_json::json!({"error": format!("unknown op {other:?}")}),
                )
                .await
            }
            Err(e) => send_line(&mut w, &serde_json::json!({"error": e.to_string()})).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Streams announcements until the mount ends or the client goes away (noticed at once, not at
/// the next write: an idle client that left must not keep a subscription).
async fn watch_loop(
    w: &mut OwnedWriteHalf,
    from_client: &mut Lines<BufReader<OwnedReadHalf>>,
    mut rx: broadcast::Receiver<Readable>,
    stop: &mut watch::Receiver<bool>,
) {
    if send_line(w, &serde_json::json!({"watching": true}))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = stop.changed() => return,
            l = from_client.next_line() => match l {
                Ok(Some(_)) => continue, // nothing more is asked of a watch
                _ => return,
            },
        };
        let sent = match next {
            Ok(r) => send_line(w, &r).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                send_line(w, &serde_json::json!({"missed": n})).await
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if sent.is_err() {
            return; // the client went away
        }
    }
}

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchLine {
    Readable(Readable),
    /// The client fell behind and this many announcements were dropped.
    Missed(u64),
}

/// A client's watch stream ([`watch()`]).
pub struct Watch {
    lines: Lines<BufReader<OwnedReadHalf>>,
    _w: OwnedWriteHalf,
}

impl Watch {
    /// The next line; `None` when the mount ended.
    pub async fn next(&mut self) -> io::Result<Option<WatchLine>> {
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_str(&line).map_err(io::Error::other)?;
            if let Some(n) = v.get("missed").and_then(serde_json::Value::as_u64) {
                return Ok(Some(WatchLine::Missed(n)));
            }
            if v.get("path").is_some() {
                let r = serde_json::from_value(v).map_err(io::Error::other)?;
                return Ok(Some(WatchLine::Readable(r)));
            }
            // Anything else (a field a newer server adds) is skipped.
        }
    }
}

/// Follows the readable recordings of the mount at `mountpoint`.
pub async fn watch(mountpoint: &Path) -> io::Result<Watch> {
    watch_at(&socket_path(mountpoint, false)?).await
}

/// [`watch()`] on the socket at `socket`; returns once the server subscribed.
pub async fn watch_at(socket: &Path) -> io::Result<Watch> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
    let (r, mut w) = stream.into_split();
    w.write_all(b"{\"op\":\"watch\"}\n").await?;
    let mut lines = BufReader::new(r).lines();
    match lines.next_line().await? {
        Some(l) if l.contains("\"watching\"") => Ok(Watch { lines, _w: w }),
        Some(l) => Err(io::Error::other(format!("control socket answered {l}"))),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the control socket closed",
        )),
    }
}

/// Asks the mount at `socket` for its status.
pub async fn status_at(socket: &Path) -> io::Result<serde_json::Value> {
    // A wedged mount must not wedge `ringfs status`, which is when it is wanted most.
    tokio::time::timeout(std::time::Duration::from_secs(5), ask_status(socket))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the mount does not answer"))?
}

async fn ask_status(socket: &Path) -> io::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(b"{\"op\":\"status\"}\n").await?;
    let line = BufReader::new(r)
        .lines()
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no status"))?;
    serde_json::from_str(&line).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(mnt: PathBuf) -> StatusSource {
        Arc::new(move || Status {
            mountpoint: mnt.clone(),
            events: Feed::Unavailable("no CallControl".into()),
            live: LiveCounters {
                events: 3,
                ..Default::default()
            },
            dates_in_memory: 1,
            progress: None,
        })
    }

    #[test]
    fn the_runtime_directory_is_created_closed_and_an_open_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = runtime_dir_with(Some(tmp.path().to_path_buf()), true).unwrap();
        assert_eq!(dir, tmp.path().join("ringfs"));
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = runtime_dir_with(Some(tmp.path().to_path_buf()), true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let other = tmp.path().join("other");
        std::fs::DirBuilder::new()
            .mode(0o770)
            .create(&other)
            .unwrap();
        assert!(runtime_dir_with(Some(other), false).is_err());
    }

    #[test]
    fn socket_names_depend_on_the_mount_point_only() {
        let a = socket_name(Path::new("/mnt/calls"));
        assert_eq!(a, socket_name(Path::new("/mnt/calls")));
        assert_ne!(a, socket_name(Path::new("/mnt/calls2")));
        assert!(a.len() < 40);
    }

    #[tokio::test]
    async fn the_socket_is_0600_answers_status_streams_watch_lines_and_goes_at_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let (tx, _) = broadcast::channel::<Readable>(16);
        let sub = {
            let tx = tx.clone();
            Arc::new(move || tx.subscribe()) as Subscribe
        };
        let guard = serve_feed(&path, sub, status_of("/mnt/x".into())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let st = status_at(&path).await.unwrap();
        assert_eq!(st["mountpoint"], "/mnt/x");
        assert_eq!(st["events"]["state"], "unavailable");
        assert_eq!(st["events"]["reason"], "no CallControl");
        assert_eq!(st["live"]["events"], 3);

        let mut w = watch_at(&path).await.unwrap();
        let r = Readable {
            path: "2026-12-01/10-00-00 in +1555 42/r.mp3".into(),
            record: serde_json::json!({"id": "L42", "sessionId": "42"}),
        };
        tx.send(r.clone()).unwrap();
        assert_eq!(w.next().await.unwrap(), Some(WatchLine::Readable(r)));

        // A second server on the same socket is refused while the first answers.
        let again = serve_feed(
            &path,
            Arc::new(move || tx.subscribe()),
            status_of("/mnt/x".into()),
        );
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );

        drop(guard);
        assert_eq!(
            w.next().await.unwrap(),
            None,
            "the stream ends with the mount"
        );
        assert!(!path.exists());
    }
}
