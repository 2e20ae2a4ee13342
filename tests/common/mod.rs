//! Helpers shared by the integration tests: an in-process emulator, the real client, the core,
//! and a real FUSE mount that is always unmounted, even when a test fails.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ringfs::api::{Client, ClientConfig, Credentials};
use ringfs::catalog::Window;
use ringfs::emulator::{Config, Emulator, RateLimits};
use ringfs::fs::{Fs, FsConfig};
use ringfs::media::{Media, MediaConfig};

/// An emulator config for tests: small, fast, no rate limits unless a test sets them.
pub fn quick_config(calls: usize, days: u32) -> Config {
    Config {
        calls,
        days,
        rate: RateLimits::unlimited(),
        record_delay: Duration::from_millis(200),
        recording_delay: Duration::from_millis(300),
        ..Config::default()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

pub fn client_for(emu: &Emulator, cfg: &Config) -> Client {
    let creds = Credentials {
        server_url: emu.api_url(),
        client_id: cfg.client_id.clone(),
        client_secret: cfg.client_secret.clone(),
        jwt: cfg.jwt.clone(),
    };
    let mut c = ClientConfig::new(creds);
    c.media_base = Some(emu.media_url());
    Client::new(c).unwrap()
}

/// Everything below the kernel: emulator, client, media, core.
pub struct Stack {
    pub rt: tokio::runtime::Runtime,
    pub emu: Emulator,
    pub client: Client,
    pub fs: Arc<Fs>,
}

pub fn stack(cfg: Config, fs_config: impl FnOnce(&mut FsConfig)) -> Stack {
    let rt = runtime();
    let emu = rt.block_on(Emulator::start(cfg.clone())).unwrap();
    let client = client_for(&emu, &cfg);
    rt.block_on(client.login()).unwrap();
    let media = Media::new(
        Arc::new(ringfs::source::ApiMedia::new(client.clone())),
        MediaConfig {
            cache_bytes: 512 << 20,
            read_timeout: Duration::from_secs(20),
            ..MediaConfig::default()
        },
    );
    let mut fc = FsConfig::new(Window::last_days(cfg.days, jiff::tz::TimeZone::UTC));
    fc.recent_ttl = Duration::from_secs(1);
    fs_config(&mut fc);
    let fs = Arc::new(Fs::new(Arc::new(client.clone()), media, fc));
    Stack {
        rt,
        emu,
        client,
        fs,
    }
}

/// A real mount of a [`Stack`] in a temporary directory; unmounted on drop.
pub struct Mounted {
    pub stack: Stack,
    pub dir: tempfile::TempDir,
    /// The FUSE requests the kernel sent this mount, by kind.
    pub ops: Arc<ringfs::fuse::OpCounts>,
    bg: Option<ringfs::fuse::Background>,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn emu(&self) -> &Emulator {
        &self.stack.emu
    }
    /// The kernel invalidations of this mount, for [`Fs::set_changes`].
    pub fn changes(&self) -> Arc<dyn ringfs::fs::Changes> {
        self.bg.as_ref().expect("mounted").changes()
    }
}

/// Whether this process can mount FUSE file systems: root, and `/dev/fuse` present. Tests that
/// mount return early when it cannot, so `cargo test` elsewhere (a container, an unprivileged
/// user) runs everything else; the reason is printed once per test binary.
pub fn can_mount() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let fuse = Path::new("/dev/fuse").exists();
        if !(root && fuse) {
            // Past the test harness's capture (which takes only `print!`/`eprint!`), so the
            // reason shows in a normal run.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: needs root and /dev/fuse (the tests that mount return early)"
            );
        }
        root && fuse
    })
}

pub fn mount(stack: Stack) -> Mounted {
    let dir = tempfile::Builder::new()
        .prefix("ringfs-test-")
        .tempdir()
        .unwrap();
    let adapter = ringfs::fuse::FuseAdapter::new(stack.fs.clone(), stack.rt.handle().clone());
    let ops = adapter.ops();
    let settings = ringfs::fuse::MountSettings {
        fsname: "ringfs-test".into(),
        ..Default::default()
    };
    let m = ringfs::fuse::mount(adapter, dir.path(), &settings)
        .expect("mount (tests need root and /dev/fuse)");
    let bg = m.spawn().unwrap();
    Mounted {
        stack,
        dir,
        ops,
        bg: Some(bg),
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.bg.take());
        force_unmount(self.dir.path());
    }
}

/// Whether anything is mounted at `path` (per /proc/mounts).
pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&p))
}

/// Unmounts `path` if anything is still mounted there (lazy, so a busy mount goes too).
pub fn force_unmount(path: &Path) {
    if is_mounted(path) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(path)
            .status();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file under `dir`, relative, sorted.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The names in `dir`, in `read_dir` order, or the error of listing it.
pub fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().into_string().unwrap()))
        .collect()
}

pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The recording id at the end of a recording file name (`... <id>.mp3`).
pub fn recording_id_of(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    let stem = name.rsplit_once('.').unwrap().0;
    stem.rsplit(' ').next().unwrap().to_string()
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Child(pub Option<std::process::Child>);

impl Child {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.0.as_mut().unwrap().try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A mount point that is unmounted (lazily) when dropped, whoever mounted it.
pub struct MountPoint(pub tempfile::TempDir);

impl MountPoint {
    /// A new empty directory under the temporary directory, its name starting with `prefix`.
    pub fn temp(prefix: &str) -> MountPoint {
        MountPoint(tempfile::Builder::new().prefix(prefix).tempdir().unwrap())
    }
}

/// Runs `cmd` and returns its standard output; fails the test, with its standard error, when
/// it does not succeed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        force_unmount(self.0.path());
    }
}

/// What a command run in a clean environment keeps of the test's: the PATH, and libfaketime's
/// settings when the suite runs under `faketime` (to check it at another time of day; a child
/// that dropped them would live at the real time beside an emulator at the fake one).
pub fn kept_env() -> Vec<(String, std::ffi::OsString)> {
    [
        "PATH",
        "LD_PRELOAD",
        "FAKETIME",
        "FAKETIME_DONT_FAKE_MONOTONIC",
    ]
    .into_iter()
    .filter_map(|k| Some((k.to_string(), std::env::var_os(k)?)))
    .collect()
}

/// The real `ringfs` binary mounting `emu`'s account (its API URL as the source) on `mnt`, as a
/// user runs it: credentials in a clean environment, the dates of `cfg.days` in UTC, tokens in
/// `state`, logs at trace level in `log`. No disk cache unless the caller adds `--cache-dir`
/// (the environment has no HOME).
pub fn ringfs_binary(
    emu: &Emulator,
    cfg: &Config,
    mnt: &Path,
    state: &Path,
    log: &Path,
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringfs"));
    c.arg(emu.api_url())
        .arg(mnt)
        .args(["--days", &cfg.days.to_string(), "--tz", "UTC"])
        .arg("--state-file")
        .arg(state)
        .arg("--log-file")
        .arg(log)
        .env_clear()
        .envs(kept_env())
        .env("RC_CLIENT_ID", &cfg.client_id)
        .env("RC_CLIENT_SECRET", &cfg.client_secret)
        .env("RC_JWT", &cfg.jwt)
        .env("RINGFS_LOG", "trace")
        // The default cache directory, beside the state file: a test never writes to the
        // machine's own ~/.cache.
        .env("XDG_CACHE_HOME", state.with_file_name("xdg-cache"))
        .stdin(Stdio::null());
    c
}

/// splitmix64: small, fast, good enough to draw test cases.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}
