//! A three-node Garage cluster on loopback for the shared-bucket tests: temporary directories,
//! a generated `rpc_secret`, distinct RPC, S3 and admin ports per node, replication factor 3, a
//! layout of one zone, a key and a bucket it may read and write. Every node is killed when the
//! cluster is dropped, even when the test fails (and, should the test process die, by
//! `PR_SET_PDEATHSIG`).
//!
//! [`Garage::start`] returns `None`, printing why, when no `garage` binary is installed (`PATH`
//! or `~/.cargo/bin`), so that the tests skip instead of failing on machines without it.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringfs::shared::{Bucket, BucketUrl, Endpoint};

/// The `garage` binary, if one is installed.
pub fn garage_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("garage"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let f = PathBuf::from(home).join(".cargo/bin/garage");
        f.is_file().then_some(f)
    })
}

struct Node {
    config: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    child: Option<Child>,
}

pub struct Garage {
    bin: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// A port free now (bound and released; the kernel does not hand it out again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn secret_hex() -> String {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Garage {
    /// Starts the cluster and waits until the bucket takes writes; `None` without `garage`.
    pub fn start() -> Option<Garage> {
        let Some(bin) = garage_binary() else {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: `garage` is not installed (cargo install --locked garage \
                 --no-default-features --features bundled-libs,sqlite,lmdb)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("ringfs-garage-")
            .tempdir()
            .unwrap();
        let secret = secret_hex();
        let mut g = Garage {
            bin,
            dir,
            nodes: Vec::new(),
            bucket: "ringfs-test".into(),
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..3 {
            let base = g.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(base.join("meta")).unwrap();
            std::fs::create_dir_all(base.join("data")).unwrap();
            let (s3, rpc, admin) = (free_port(), free_port(), free_port());
            let config = base.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{m}\"\ndata_dir = \"{d}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    m = base.join("meta").display(),
                    d = base.join("data").display(),
                ),
            )
            .unwrap();
            g.nodes.push(Node {
                config,
                s3_port: s3,
                rpc_port: rpc,
                child: None,
            });
            g.start_node(i);
        }
        let ids: Vec<String> = (0..3)
            .map(|i| {
                g.eventually(|g| {
                    let out = g.cli(i, &["node", "id", "-q"]).ok()?;
                    let id = out.trim().to_string();
                    id.contains('@').then_some(id)
                })
                .expect("garage node id")
            })
            .collect();
        for id in &ids[1..] {
            g.eventually(|g| g.cli(0, &["node", "connect", id]).ok())
                .expect("garage node connect");
        }
        g.eventually(|g| {
            let s = g.cli(0, &["status"]).ok()?;
            (ids.iter().all(|id| s.contains(&id[..16]))).then_some(())
        })
        .expect("garage status shows three nodes");
        for id in &ids {
            let short = &id[..16];
            g.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short])
                .expect("layout assign");
        }
        g.cli(0, &["layout", "apply", "--version", "1"])
            .expect("layout apply");
        let key = g
            .eventually(|g| g.cli(0, &["key", "create", "ringfs-test-key"]).ok())
            .expect("key create");
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        let bucket = g.bucket.clone();
        g.eventually(|g| g.cli(0, &["bucket", "create", &bucket]).ok())
            .expect("bucket create");
        g.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                &bucket,
                "--key",
                "ringfs-test-key",
            ],
        )
        .expect("bucket allow");
        // Ready when a write through S3 succeeds (the layout reached every node).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let probe = g.bucket_at("probe");
        g.eventually(|_| rt.block_on(probe.claim("probe")).ok())
            .expect("the bucket takes writes");
        Some(g)
    }

    fn start_node(&mut self, i: usize) {
        let log = std::fs::File::create(self.nodes[i].config.with_file_name("log")).unwrap();
        let mut c = Command::new(&self.bin);
        c.arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl in the child before exec; it touches no memory of the parent.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.nodes[i].child = Some(c.spawn().expect("starting garage"));
    }

    /// Stops node `i` (SIGKILL), as a machine that went away.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again (same directories and ports).
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        self.start_node(i);
    }

    /// `garage -c <node i> args...`; its stdout when it succeeded.
    fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn eventually<T>(&self, mut f: impl FnMut(&Garage) -> Option<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Some(v);
            }
            if start.elapsed() > Duration::from_secs(30) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The S3 endpoint of node 0 (the one the tests talk to; the others can be stopped).
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: Some(self.s3_url(0)),
            region: Some("garage".into()),
            access_key_id: Some(self.key_id.clone()),
            secret_access_key: Some(self.secret.clone()),
        }
    }

    pub fn s3_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    pub fn url(&self, prefix: &str) -> BucketUrl {
        BucketUrl::parse(&format!("s3://{}/{prefix}", self.bucket)).unwrap()
    }

    /// A new client of the bucket at `prefix` (nothing known held yet).
    pub fn bucket_at(&self, prefix: &str) -> Bucket {
        Bucket::connect(&self.url(prefix), &self.endpoint()).unwrap()
    }

    /// The environment a `ringfs` process reaches the bucket with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ENDPOINT_URL", self.s3_url(0)),
            ("AWS_REGION", "garage".into()),
        ]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}
