//! The thin `fuser` adapter: the only module that names fuser.
//!
//! The core tells the kernel what changed (new sessions from live events or a re-list) through
//! [`crate::fs::Changes`], implemented here over fuser's `Notifier` on a thread of its own
//! ([`Mounted::changes`]).
//!
//! Every request is a future of the async core ([`crate::fs::Fs`]), polled once on the FUSE
//! thread that received it and handed to the tokio runtime only if it has to wait (`serve`):
//! what memory holds is answered at once, and a `read` waiting for the network never blocks an
//! `ls` in another window (fuser's reply objects may move between threads). Write operations
//! answer EROFS here, at once: the mount is read-only by design.
//!
//! Besides reads, it answers what ordinary programs ask (`getxattr`/`listxattr` from the core's
//! `user.ringcentral.*` attributes, `flush`, `access`, `statfs`, `lseek`, `ioctl`) so that
//! fuser's "[Not Implemented]" warnings never reach the log.
//!
//! # Mounting
//!
//! As root on Linux the adapter mounts with mount(2) itself, as type `fuse.ringfs` (fuser's own
//! mount(2) path says plain `fuse`, which `findmnt -t fuse.ringfs` and mount(8) helpers do not
//! recognise), and hands the descriptor to fuser; it then unmounts itself, once. Otherwise
//! fuser mounts through fusermount3, which sets the subtype.
//!
//! # Passthrough
//!
//! A recording the disk cache holds complete never changes, and its bytes are already in a
//! local file: sending each read through /dev/fuse to this process only to copy that file
//! costs two context switches and a copy per request. With FUSE passthrough (Linux 6.9+,
//! CAP_SYS_ADMIN) the kernel reads such a file itself. `init` asks for it (the
//! `FUSE_PASSTHROUGH` capability and a stack depth); when the kernel agrees, the core is told to
//! hand out checked backing files ([`Fs::offer_backing_files`]), and `open` registers one with
//! the kernel (`open_backing`, an ioctl on /dev/fuse) and answers `opened_passthrough`. Anything
//! else (no passthrough in the kernel, `--no-passthrough`, a partial recording, a refused
//! ioctl) is served by ordinary reads, as before.
//!
//! The kernel puts an inode in one I/O mode while any of its files is open: all handles cached
//! (ordinary reads) or all passthrough with the same backing file, and it fails an open that
//! mixes them with EIO. So the adapter keeps, per inode, how many handles are open in which mode:
//! a new open follows the mode of the handles already open (reusing the one `BackingId`), and
//! only an inode with no open handle picks its mode from what the core says. The backing id and
//! the store's lease on the file are dropped when the last passthrough handle is released.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, DirEntry, Fs, FsError, Kind, Opened, XATTR_PREFIX, xattr_name_list};

/// The fuser `Filesystem` over the core.
pub struct FuseAdapter {
    core: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// Directory listings taken at `opendir`, served page by page to `readdir`.
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>>,
    next_dir_fh: AtomicU64,
    /// Passthrough was asked for (see [`MountSettings::passthrough`]).
    want_passthrough: bool,
    opens: Arc<Mutex<Opens>>,
    reads: Arc<ReadOrder>,
    ops: Arc<OpCounts>,
    gate: Arc<RuntimeGate>,
}

/// Whether requests may still be polled on the FUSE threads ([`serve`]). A timer registered
/// from outside a runtime that has shut down its time driver panics, and the FUSE threads may
/// still be answering (a read an unmount interrupted) while the runtime goes: so the gate
/// closes as the runtime shuts down, from the drop of a task that waits forever on it (a
/// runtime drops its tasks before it shuts down its drivers). Once closed, requests go to the
/// runtime as they stand, which drops them (the kernel gets EIO), as it drops its own tasks.
#[derive(Debug, Default)]
struct RuntimeGate(std::sync::RwLock<bool>);

impl RuntimeGate {
    /// A gate that closes when `rt` shuts down.
    fn closing_with(rt: &tokio::runtime::Handle) -> Arc<RuntimeGate> {
        struct CloseOnDrop(Arc<RuntimeGate>);
        impl Drop for CloseOnDrop {
            fn drop(&mut self) {
                self.0.close();
            }
        }
        let gate = Arc::new(RuntimeGate::default());
        let closer = CloseOnDrop(gate.clone());
        rt.spawn(async move {
            let _closer = closer;
            std::future::pending::<()>().await
        });
        gate
    }

    /// Closes the gate; returns once no request is being polled on a FUSE thread.
    fn close(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// How many requests of each kind the kernel sent this adapter (a debug counter: tests and the
/// benchmark check what an `ls -l` or a `cat` costs in FUSE round trips).
#[derive(Debug, Default)]
pub struct OpCounts {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub readdir: AtomicU64,
    pub readdirplus: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub getxattr: AtomicU64,
    /// Bytes asked for by all `read`s.
    pub read_bytes: AtomicU64,
}

impl OpCounts {
    fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl FuseAdapter {
    pub fn new(core: Arc<Fs>, rt: tokio::runtime::Handle) -> FuseAdapter {
        FuseAdapter {
            core,
            gate: RuntimeGate::closing_with(&rt),
            rt,
            dirs: Arc::default(),
            next_dir_fh: AtomicU64::new(1),
            want_passthrough: false,
            opens: Arc::default(),
            reads: Arc::default(),
            ops: Arc::default(),
        }
    }

    /// The listing `opendir` took for `fh`.
    fn listing(&self, fh: FileHandle) -> Option<Arc<Vec<DirEntry>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
    }

    /// Answers a request through [`serve`] on this adapter's runtime.
    fn serve<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        serve(&self.rt, &self.gate, fut);
    }

    /// The request counters of this adapter (shared: they keep counting once it is mounted).
    pub fn ops(&self) -> Arc<OpCounts> {
        self.ops.clone()
    }

    /// The protocol's levers for a read-only tree served from an async core (Linux).
    ///
    /// - READDIRPLUS: `opendir` already knows every entry's attributes, so a listing answers
    ///   names and attributes in one round trip instead of a LOOKUP per entry (`ls -l`, `find`
    ///   with `-type`/`-size`, file managers). `_AUTO` lets the kernel use plain READDIR when it
    ///   sees no one stat the entries.
    /// - PARALLEL_DIROPS: lookups and readdirs of one directory run at once (the core is async
    ///   and takes no directory lock), instead of the kernel serializing them on the inode.
    /// - more background requests: the async readahead of several readers stays in flight
    ///   instead of queueing in the kernel.
    /// - AUTO_INVAL_DATA: a `read(2)` of a file whose attributes have expired asks for them
    ///   first. A recording's size is an estimate (attribute TTL zero) until its first open
    ///   learns the exact one, and without this the kernel keeps the estimate through the reads
    ///   of a program that does not `stat` first (`dd`): its read-ahead then asks past the end,
    ///   and the end it learns from the short answers depends on their order (see
    ///   [`ReadOrder`], which still covers `mmap` and `sendfile`, whose reads do not ask). One
    ///   GETATTR per such open; an exact size's attributes then stay valid.
    ///
    /// Requests of up to 1 MiB (`max_pages`) are negotiated by fuser already (`FUSE_MAX_PAGES`,
    /// from its 16 MiB `max_write`), but the kernel's 128 KiB readahead keeps buffered reads at
    /// 128 KiB. Raising it to 1 MiB through sysfs (`/sys/class/bdi/0:N/read_ahead_kb`) made cold
    /// sequential reads slower in an A/B (a reader then waits for a whole MiB per request, with
    /// fewer requests in flight), and so did direct I/O for cold opens (every read(2) a
    /// synchronous round trip, no readahead): neither is done.
    #[cfg(target_os = "linux")]
    fn negotiate_levers(&self, config: &mut fuser::KernelConfig) {
        use fuser::InitFlags as F;
        let offered = config.capabilities();
        let wanted = F::FUSE_DO_READDIRPLUS
            | F::FUSE_READDIRPLUS_AUTO
            | F::FUSE_PARALLEL_DIROPS
            | F::FUSE_AUTO_INVAL_DATA
            | F::FUSE_ASYNC_READ;
        let _ = config.add_capabilities(wanted & offered);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
        tracing::debug!(granted = ?(wanted & offered), "FUSE capabilities");
    }

    /// Asks the kernel to agree to passthrough and tells the core whether to hand out backing
    /// files; says once which way reads go.
    #[cfg(target_os = "linux")]
    fn negotiate_passthrough(&self, config: &mut fuser::KernelConfig) {
        if !self.want_passthrough {
            tracing::info!("kernel passthrough off: every read goes through ringfs");
            return;
        }
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH) {
            tracing::info!(
                ?missing,
                "the kernel offers no FUSE passthrough (Linux 6.9+): every read goes through ringfs"
            );
            return;
        }
        // Depth 2, the kernel's most: the cache directory may itself be on a stacked filesystem
        // (overlayfs is the root of most containers); the price is that this mount cannot be a
        // layer of an overlayfs, which a read-only recordings tree has no use for.
        if let Err(most) = config.set_max_stack_depth(2) {
            let _ = config.set_max_stack_depth(most);
        }
        self.core.offer_backing_files(true);
        tracing::info!(
            "kernel passthrough on: recordings complete in the disk cache are read by the kernel \
             from their cached files; others go through ringfs"
        );
    }
}

/// Open file handles per inode, and the I/O mode they put it in (see the module docs).
#[derive(Default)]
struct Opens {
    inodes: HashMap<u64, InodeOpens>,
    /// Handles answered with passthrough (the others are cached ones).
    passthrough: std::collections::HashSet<u64>,
    /// The kernel refused a backing file: no more are asked for (logged once).
    refused: bool,
}

#[derive(Default)]
struct InodeOpens {
    /// Handles served by ordinary reads.
    cached: u32,
    /// The backing file of the passthrough handles, while any is open.
    backing: Option<Backing>,
}

struct Backing {
    id: fuser::BackingId,
    /// Holds the store's lease: the file is not evicted while the kernel reads it.
    _file: crate::store::CompleteFile,
    handles: u32,
}

impl Opens {
    /// Answers an open the core accepted, in the inode's current I/O mode. `flags` are those of
    /// a cached open; a passthrough open sends none (the kernel fails one with
    /// `FOPEN_KEEP_CACHE`, which means nothing there: the backing file has its own page cache).
    fn answer(&mut self, ino: u64, o: Opened, flags: FopenFlags, reply: ReplyOpen, core: &Fs) {
        let fh = FileHandle(o.fh);
        let through = FopenFlags::empty();
        let refused = self.refused;
        let entry = self.inodes.entry(ino).or_default();
        if let Some(b) = entry.backing.as_mut() {
            b.handles += 1;
            self.passthrough.insert(o.fh);
            reply.opened_passthrough(fh, through, &b.id);
            return;
        }
        if let (0, Some(file), false) = (entry.cached, o.backing, refused) {
            match reply.open_backing(&file.file) {
                Ok(id) => {
                    reply.opened_passthrough(fh, through, &id);
                    entry.backing = Some(Backing {
                        id,
                        _file: file,
                        handles: 1,
                    });
                    self.passthrough.insert(o.fh);
                    return;
                }
                Err(e) => {
                    // EPERM without CAP_SYS_ADMIN, ELOOP for a cache on a too deeply stacked
                    // filesystem: it would fail the same way for every file.
                    self.refused = true;
                    core.offer_backing_files(false);
                    tracing::info!(
                        "the kernel refused a passthrough file ({e}): every read goes through ringfs"
                    );
                }
            }
        }
        entry.cached += 1;
        reply.opened(fh, flags);
    }

    /// Forgets a released handle; the backing id goes with the inode's last passthrough handle.
    fn release(&mut self, ino: u64, fh: u64) -> Option<Backing> {
        let entry = self.inodes.get_mut(&ino)?;
        let mut gone = None;
        if self.passthrough.remove(&fh) {
            if let Some(b) = entry.backing.as_mut() {
                b.handles -= 1;
                if b.handles == 0 {
                    gone = entry.backing.take();
                }
            }
        } else {
            entry.cached = entry.cached.saturating_sub(1);
        }
        if entry.cached == 0 && entry.backing.is_none() {
            self.inodes.remove(&ino);
        }
        gone
    }
}

/// The reads of each inode the kernel is waiting on, by offset, so that a short answer (the
/// end of the file) goes only after every read before it is answered.
///
/// The kernel sets a file's size from the first short answer to a page-cache read (the end is
/// where the bytes stopped) and ignores a short answer to any read it sent before that size
/// was set. Read-ahead asks for pages past the end when the size it holds is too large (an
/// estimate, before the file's first `stat`): those are answered at once, empty, while the read
/// holding the last bytes may still wait for the network. Answered in that order, the kernel
/// would take the empty answer's offset for the end, ignore the true one, and serve the pages
/// between as zeros. So a short answer waits here for the reads before it; a full one never
/// waits. Reads of a file are bounded (`--read-timeout`), and so is this wait.
#[derive(Default)]
struct ReadOrder {
    in_flight: Mutex<HashMap<u64, BTreeMap<u64, u32>>>,
    answered: tokio::sync::Notify,
}

/// One read the kernel waits on; dropped once it is answered.
struct ReadTicket {
    order: Arc<ReadOrder>,
    ino: u64,
    offset: u64,
}

impl ReadOrder {
    fn begin(self: &Arc<Self>, ino: u64, offset: u64) -> ReadTicket {
        let mut m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(ino).or_default().entry(offset).or_default() += 1;
        ReadTicket {
            order: self.clone(),
            ino,
            offset,
        }
    }

    fn any_before(&self, ino: u64, offset: u64) -> bool {
        let m = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&ino)
            .is_some_and(|reads| reads.range(..offset).next().is_some())
    }
}

impl ReadTicket {
    /// Resolves once no read of this inode at a lower offset waits for its answer.
    async fn after_the_reads_before(&self) {
        loop {
            let answered = self.order.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if !self.order.any_before(self.ino, self.offset) {
                return;
            }
            answered.await;
        }
    }
}

impl Drop for ReadTicket {
    fn drop(&mut self) {
        {
            let mut m = self
                .order
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(reads) = m.get_mut(&self.ino) {
                if let Some(n) = reads.get_mut(&self.offset) {
                    *n -= 1;
                    if *n == 0 {
                        reads.remove(&self.offset);
                    }
                }
                if reads.is_empty() {
                    m.remove(&self.ino);
                }
            }
        }
        self.order.answered.notify_waiters();
    }
}

/// Answers `getxattr`/`listxattr` as the kernel expects: the size alone when it asks with size
/// 0 (a probe before it allocates), the bytes when they fit, ERANGE when they do not.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len <= size => reply.data(value),
        _ => reply.error(Errno::ERANGE),
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.to_errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: match a.kind {
            Kind::Dir => 2,
            Kind::File => 1,
        },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: 128 * 1024,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        self.negotiate_levers(config);
        #[cfg(target_os = "linux")]
        self.negotiate_passthrough(config);
        #[cfg(not(target_os = "linux"))]
        let _ = config;
        Ok(())
    }

    fn destroy(&mut self) {
        let o = &self.ops;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            lookup = n(&o.lookup),
            getattr = n(&o.getattr),
            readdir = n(&o.readdir),
            readdirplus = n(&o.readdirplus),
            open = n(&o.open),
            read = n(&o.read),
            getxattr = n(&o.getxattr),
            read_bytes = n(&o.read_bytes),
            "FUSE requests served"
        );
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        OpCounts::count(&self.ops.lookup);
        let core = self.core.clone();
        let name = name.to_owned();
        self.serve(async move {
            match core.lookup(parent.0, &name).await {
                Ok(a) => {
                    reply.entry_with_ttls(&a.attr_ttl, &a.entry_ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        OpCounts::count(&self.ops.getattr);
        let core = self.core.clone();
        self.serve(async move {
            match core.getattr(ino.0).await {
                Ok(a) => reply.attr(&a.attr_ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        let dirs = self.dirs.clone();
        let fh = self.next_dir_fh.fetch_add(1, Ordering::Relaxed);
        self.serve(async move {
            match core.opendir(ino.0).await {
                Ok(mut entries) => {
                    // READDIRPLUS links each entry's attributes to its inode, size included,
                    // and the kernel truncates the page cache of an open file to that size
                    // whatever the TTL: a placeholder size would cut a file being read. A file
                    // the listing cannot describe from memory (a by-recording id only the disk
                    // holds) is looked up here, as the kernel would have.
                    for e in entries
                        .iter_mut()
                        .filter(|e| e.attr.is_none() && e.kind == Kind::File)
                    {
                        e.attr = core.lookup(ino.0, OsStr::new(&e.name)).await.ok();
                    }
                    dirs.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(fh, Arc::new(entries));
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        OpCounts::count(&self.ops.readdir);
        let Some(entries) = self.listing(fh) else {
            reply.error(Errno::EBADF);
            return;
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = entries; the kernel passes back the last one it took.
        let dots = [(ino.0, Kind::Dir, "."), (ino.0, Kind::Dir, "..")];
        let all = dots
            .iter()
            .map(|(i, k, n)| (*i, *k, *n))
            .chain(entries.iter().map(|e| (e.ino, e.kind, e.name.as_str())));
        for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// Names with their attributes (see `negotiate_levers`), from the listing `opendir` took.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        OpCounts::count(&self.ops.readdirplus);
        let Some(entries) = self.listing(fh) else {
            reply.error(Errno::EBADF);
            return;
        };
        // Offsets as in `readdir`. The kernel links no inode for `.` and `..`, and an entry only
        // a lookup can describe goes out with a zero TTL (the kernel looks it up before it uses
        // these attributes): such attributes only have to be well formed.
        let zero = std::time::Duration::ZERO;
        let dot = (
            ino.0,
            ".",
            file_attr(&self.core.placeholder(ino.0, Kind::Dir)),
            zero,
        );
        let dotdot = (ino.0, "..", dot.2, zero);
        let all = [dot, dotdot]
            .into_iter()
            .chain(entries.iter().map(|e| match &e.attr {
                Some(a) => (
                    e.ino,
                    e.name.as_str(),
                    file_attr(a),
                    a.attr_ttl.min(a.entry_ttl),
                ),
                // Directories only (files are looked up at `opendir`), or a file whose lookup
                // failed: a directory's size means nothing, and the zero TTL has the kernel
                // look it up before use.
                None => (
                    e.ino,
                    e.name.as_str(),
                    file_attr(&self.core.placeholder(e.ino, e.kind)),
                    zero,
                ),
            }));
        for (i, (ino, name, attr, ttl)) in all.enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(ino),
                (i + 1) as u64,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        OpCounts::count(&self.ops.open);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let core = self.core.clone();
        let opens = self.opens.clone();
        self.serve(async move {
            match core.open(ino.0, write).await {
                Ok(o) => {
                    let mut f = FopenFlags::empty();
                    if o.keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    if o.direct_io {
                        f |= FopenFlags::FOPEN_DIRECT_IO;
                    }
                    // Decided and answered under the lock, so two opens of one inode cannot
                    // pick different modes.
                    opens
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answer(ino.0, o, f, reply, &core);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        OpCounts::count(&self.ops.read);
        self.ops
            .read_bytes
            .fetch_add(u64::from(size), Ordering::Relaxed);
        let core = self.core.clone();
        // Taken here, on the FUSE thread, so that reads count from when the kernel sent them.
        let ticket = self.reads.begin(ino.0, offset);
        self.serve(async move {
            match core.read(ino.0, fh.0, offset, size).await {
                Ok(data) => {
                    if data.len() < size as usize {
                        ticket.after_the_reads_before().await;
                    }
                    reply.data(&data)
                }
                Err(e) => reply.error(errno(&e)),
            }
            // Only now, with the answer in the kernel, may a short one after it go.
            drop(ticket);
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let backing = self
            .opens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(ino.0, fh.0);
        // Unregistered from the kernel (an ioctl) outside the lock.
        drop(backing);
        self.core.release(fh.0);
        reply.ok();
    }

    // What readers ask besides reading, answered here so that fuser's defaults (ENOSYS and a
    // "[Not Implemented]" warning per call) never fill the log of an ordinary `cp` or `ls`.

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        OpCounts::count(&self.ops.getxattr);
        tracing::trace!(ino = ino.0, ?name, "getxattr");
        // POSIX ACLs are not supported: EOPNOTSUPP, the kernel's own answer on a filesystem
        // without them. `ls -l` asks every file for both ACLs, round trips the kernel does not
        // cache, and only this answer makes it (like cp and rsync) stop asking after the first
        // file.
        let Some(name) = name.to_str() else {
            reply.error(Errno::ENODATA);
            return;
        };
        if name.starts_with("system.posix_acl_") {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        // security.*, trusted.*, other system.* and user.* names: none here, at once.
        if !name.starts_with(XATTR_PREFIX) {
            reply.error(Errno::ENODATA);
            return;
        }
        let core = self.core.clone();
        let name = name.to_owned();
        self.serve(async move {
            match core.xattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let core = self.core.clone();
        self.serve(async move {
            match core.xattrs(ino.0).await {
                Ok(attrs) => reply_xattr(reply, size, &xattr_name_list(&attrs)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so nothing is pending at close.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Who may enter the mount at all is the kernel's check (allow_other / allow_root);
        // beyond it everything may be read and nothing written.
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
            return;
        }
        let core = self.core.clone();
        self.serve(async move {
            match core.getattr(ino.0).await {
                Ok(_) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        // No capacity to report (nothing can be written); the name limit is the catalog's.
        reply.statfs(
            0,
            0,
            0,
            0,
            0,
            128 * 1024,
            crate::catalog::NAME_MAX as u32,
            128 * 1024,
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // Only SEEK_DATA/SEEK_HOLE reach here (`cp` asks for holes). ENOSYS makes the kernel
        // answer them itself from then on (the whole file is data), which is true here.
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No ioctl is ours (`lsattr`, terminals probing a file): "not a typewriter".
        reply.error(Errno::ENOTTY);
    }

    // Everything that would change the tree: read-only file system.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}

/// Background requests (readahead) the kernel keeps in flight at once (its default is 12).
const MAX_BACKGROUND: u16 = 64;

/// Runs a request's future: polled once here, on the calling (FUSE) thread, and handed to the
/// runtime only if it has to wait (a listing, a response, bytes still on their way).
///
/// Most requests need no waiting: a lookup or getattr of a listed entry, an opendir of a listed
/// date, a read of bytes the stream has already brought, an open of a recording of known size.
/// Answering those here saves the hop to a runtime thread and back, each a wake-up of another
/// thread (tens of microseconds on a small VM, more than the work itself). The runtime's
/// context is entered for the poll, so timers, spawns and I/O register as they would on a
/// worker. A future left pending is spawned as it stands; its next poll (on a worker, with a
/// real waker) checks the state it waits on before sleeping, as every future's does, so a
/// wake-up between the two polls is not lost. Once `gate` is closed, every future goes to the
/// runtime unpolled.
fn serve<F>(rt: &tokio::runtime::Handle, gate: &RuntimeGate, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut fut = Box::pin(fut);
    // Held over the poll, so that `close` waits for it.
    let closed = gate.0.read().unwrap_or_else(|e| e.into_inner());
    if *closed {
        rt.spawn(fut);
        return;
    }
    let _runtime = rt.enter();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // A request that panics must not take the FUSE thread with it (fuser does not catch it:
    // with every event loop gone the mount hangs). On a runtime thread tokio catches a task's
    // panic; here the same: the future is dropped, and with it its reply, which answers EIO.
    let poll = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fut.as_mut().poll(&mut cx).is_pending()
    }));
    match poll {
        Ok(true) => drop(rt.spawn(fut)),
        Ok(false) => {}
        Err(_) => tracing::error!("a FUSE request panicked; it was answered EIO"),
    }
}

/// Threads reading /dev/fuse (each with its own cloned fd, so the kernel hands requests to
/// them in parallel). A handler does only what needs no waiting (see `serve`), at most the
/// in-memory work of one request (an `opendir` of a date of a thousand sessions builds its
/// listing here, about a millisecond), and hands the rest to the runtime.
const EVENT_LOOPS: usize = 2;

/// How a mount is set up.
#[derive(Debug, Clone, Default)]
pub struct MountSettings {
    /// Shown as the source in /proc/mounts (`ringfs:demo`, `ringfs:<API host>`, ...).
    pub fsname: String,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    /// Ask the kernel to read recordings complete in the disk cache from their files
    /// (passthrough; Linux 6.9+, CAP_SYS_ADMIN). Off: every read goes through ringfs.
    pub passthrough: bool,
}

/// A mounted filesystem, served by [`Mounted::run`] on the calling thread.
pub struct Mounted {
    session: fuser::Session<FuseAdapter>,
    /// Set when ringfs made the mount itself (see [`mount`]): fuser then has nothing to
    /// unmount, and the unmount is ours.
    own: Option<Arc<OwnMount>>,
}

/// A mount made with mount(2) by ringfs, unmounted once. (Linux only makes one: see
/// [`mount`].)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct OwnMount {
    path: std::ffi::CString,
    done: std::sync::atomic::AtomicBool,
    /// A duplicate of the session's /dev/fuse descriptor: it reports POLLERR once the kernel
    /// ended the connection (the filesystem was unmounted), as fuser checks for its mounts.
    dev: std::os::fd::OwnedFd,
}

impl OwnMount {
    fn still_mounted(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.dev.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        !(n == 1 && p.revents & libc::POLLERR != 0)
    }

    /// `lazy`: detach now, let go once the last file is closed (MNT_DETACH).
    fn unmount(&self, lazy: bool) -> std::io::Result<()> {
        if self.done.swap(true, Ordering::SeqCst) || !self.still_mounted() {
            // Unmounted already (`umount`): unmounting again could detach a filesystem
            // mounted at the same place since.
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        // SAFETY: umount2 on a NUL-terminated path.
        let rc =
            unsafe { libc::umount2(self.path.as_ptr(), if lazy { libc::MNT_DETACH } else { 0 }) };
        #[cfg(not(target_os = "linux"))]
        // SAFETY: unmount on a NUL-terminated path.
        let rc =
            unsafe { libc::unmount(self.path.as_ptr(), if lazy { libc::MNT_FORCE } else { 0 }) };
        match rc {
            0 => Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                // EINVAL: no longer a mount point (`umount` was run): the goal is reached.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    Ok(())
                } else {
                    self.done.store(false, Ordering::SeqCst);
                    Err(e)
                }
            }
        }
    }
}

/// Unmounts a [`Mounted`] from another thread (signal handling).
pub struct Unmounter(UnmounterKind);

enum UnmounterKind {
    Fuser(fuser::SessionUnmounter),
    Own(Arc<OwnMount>),
}

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            UnmounterKind::Fuser(u) => u.unmount(),
            // Busy (a shell's working directory inside it): detach it now and let go once
            // the last user leaves, as fusermount3 -z does for fuser's own mounts, rather than
            // keep serving after a SIGTERM.
            UnmounterKind::Own(m) => m.unmount(false).or_else(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    m.unmount(true)
                } else {
                    Err(e)
                }
            }),
        }
    }
}

impl Mounted {
    pub fn unmount_callable(&mut self) -> Unmounter {
        Unmounter(match &self.own {
            Some(m) => UnmounterKind::Own(m.clone()),
            None => UnmounterKind::Fuser(self.session.unmount_callable()),
        })
    }

    /// Serves requests until the filesystem is unmounted (by us or by `umount`). A session
    /// that ends for another reason leaves no mount behind.
    pub fn run(self) -> std::io::Result<()> {
        let result = self.session.run();
        if let Some(m) = &self.own
            && let Err(e) = m.unmount(true)
        {
            tracing::warn!("unmounting after the session ended: {e}");
        }
        result
    }

    /// Serves on a background thread; dropping the handle unmounts (used by tests).
    pub fn spawn(self) -> std::io::Result<Background> {
        let own = self.own;
        self.session
            .spawn()
            .map(|bg| Background { bg: Some(bg), own })
    }
}

/// A mount served on a background thread; unmounted when dropped.
pub struct Background {
    bg: Option<fuser::BackgroundSession>,
    own: Option<Arc<OwnMount>>,
}

impl Mounted {
    /// Where the core sends kernel invalidations for this mount ([`Fs::set_changes`]).
    pub fn changes(&self) -> Arc<dyn crate::fs::Changes> {
        KernelChanges::start(self.session.notifier())
    }
}

impl Background {
    /// As [`Mounted::changes`].
    pub fn changes(&self) -> Arc<dyn crate::fs::Changes> {
        let bg = self
            .bg
            .as_ref()
            .expect("a Background holds its session until dropped");
        KernelChanges::start(bg.notifier())
    }
}

enum Change {
    Dir(u64),
    Entry(u64, std::ffi::OsString),
}

/// The core's [`crate::fs::Changes`] over the kernel's notifications. A notification may block
/// until the kernel releases the directory it names, and the core may ask for one while an
/// operation on that directory waits for its answer: so they are queued and sent by a thread of
/// their own, never from a request. The thread ends when the core drops its handle; after the
/// unmount, sends fail and are ignored.
struct KernelChanges(Mutex<std::sync::mpsc::Sender<Change>>);

impl KernelChanges {
    fn start(notifier: fuser::Notifier) -> Arc<dyn crate::fs::Changes> {
        let (tx, rx) = std::sync::mpsc::channel::<Change>();
        let spawned = std::thread::Builder::new()
            .name("ringfs-inval".into())
            .spawn(move || {
                for change in rx {
                    // ENOENT: the kernel holds nothing of it, so there is nothing to drop.
                    let sent = match &change {
                        Change::Dir(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                        Change::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                    };
                    if let Err(e) = sent {
                        tracing::trace!("kernel invalidation: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("no kernel invalidations: {e}");
        }
        Arc::new(KernelChanges(Mutex::new(tx)))
    }

    fn send(&self, change: Change) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(change);
    }
}

impl crate::fs::Changes for KernelChanges {
    fn dir_changed(&self, ino: u64) {
        self.send(Change::Dir(ino));
    }
    fn entry_added(&self, parent: u64, name: &OsStr) {
        self.send(Change::Entry(parent, name.to_owned()));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let Some(bg) = self.bg.take() else { return };
        match &self.own {
            // Detached, as fuser does for its own mounts: a test that fails with a file still
            // open must not hang here. The serving thread ends once the kernel lets go.
            Some(m) => {
                let _ = m.unmount(true);
                drop(bg);
            }
            None => drop(bg),
        }
    }
}

/// The mount(2) options and flags of a read-only ringfs mount (Linux), as fusermount3 would
/// pass them.
#[cfg(target_os = "linux")]
fn mount_data(fd: i32, root_mode: u32, s: &MountSettings) -> String {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!("fd={fd},rootmode={root_mode:o},user_id={uid},group_id={gid}");
    if s.default_permissions {
        data.push_str(",default_permissions");
    }
    // allow_root is allow_other in the kernel; fuser then refuses users other than the owner
    // and root itself (its SessionACL).
    if s.allow_other || s.allow_root {
        data.push_str(",allow_other");
    }
    data
}

/// A mount made by [`mount_direct`]: the session's descriptor, and the mount to unmount.
#[cfg(target_os = "linux")]
struct DirectMount {
    fd: std::os::fd::OwnedFd,
    own: OwnMount,
}

/// Mounts with mount(2) as type `fuse.ringfs` (what /proc/mounts and `findmnt -t fuse.ringfs`
/// show; fuser's own mount(2) path always says plain `fuse`). `None` when not allowed (not
/// root): fuser then mounts through fusermount3, which sets the subtype itself.
#[cfg(target_os = "linux")]
fn mount_direct(
    mountpoint: &std::path::Path,
    s: &MountSettings,
) -> std::io::Result<Option<DirectMount>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let path = mountpoint.canonicalize()?;
    let root_mode = std::fs::metadata(&path)?.mode() & libc::S_IFMT;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = std::os::fd::OwnedFd::from(dev);
    let dup = fd.try_clone()?;
    use std::os::fd::AsRawFd;
    let data = mount_data(fd.as_raw_fd(), root_mode, s);
    let cstr = |v: &[u8]| CString::new(v).map_err(std::io::Error::other);
    let (source, target) = (
        cstr(s.fsname.as_bytes())?,
        cstr(path.as_os_str().as_bytes())?,
    );
    let (fstype, data) = (cstr(b"fuse.ringfs")?, cstr(data.as_bytes())?);
    let flags =
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;
    // SAFETY: mount(2) with NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        return Ok(Some(DirectMount {
            fd,
            own: OwnMount {
                path: target,
                done: std::sync::atomic::AtomicBool::new(false),
                dev: dup,
            },
        }));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM) => Ok(None),
        _ => Err(e),
    }
}

/// Mounts read-only at `mountpoint`: as root with mount(2) as `fuse.ringfs` (Linux), otherwise
/// through fuser (fusermount3).
pub fn mount(
    mut adapter: FuseAdapter,
    mountpoint: &std::path::Path,
    s: &MountSettings,
) -> anyhow::Result<Mounted> {
    adapter.want_passthrough = s.passthrough;
    use fuser::MountOption as M;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        M::RO,
        M::NoSuid,
        M::NoDev,
        M::NoExec,
        M::NoAtime,
        M::FSName(s.fsname.clone()),
        M::Subtype("ringfs".into()),
    ];
    if s.default_permissions {
        config.mount_options.push(M::DefaultPermissions);
    }
    config.acl = if s.allow_other {
        fuser::SessionACL::All
    } else if s.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    #[cfg(target_os = "linux")]
    {
        config.n_threads = Some(EVENT_LOOPS);
        config.clone_fd = true;
    }
    let failed = |e: std::io::Error| {
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => " (something is already mounted there)",
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " (not allowed: check /etc/fuse.conf and the mount point's owner)"
            }
            _ => "",
        };
        anyhow::anyhow!("mounting on {}: {e}{hint}", mountpoint.display())
    };
    #[cfg(target_os = "linux")]
    if let Some(DirectMount { fd, own }) = mount_direct(mountpoint, s).map_err(failed)? {
        let own = Arc::new(own);
        let acl = config.acl;
        return match fuser::Session::from_fd(adapter, fd, acl, config) {
            Ok(session) => Ok(Mounted {
                session,
                own: Some(own),
            }),
            Err(e) => {
                let _ = own.unmount(true);
                Err(failed(e))
            }
        };
    }
    fuser::Session::new(adapter, mountpoint, &config)
        .map(|session| Mounted { session, own: None })
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::{ReadOrder, RuntimeGate, serve};
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_request_that_needs_no_waiting_is_answered_on_the_calling_thread() {
        let rt = runtime();
        let (tx, rx) = mpsc::channel();
        let caller = std::thread::current().id();
        serve(rt.handle(), &RuntimeGate::default(), async move {
            tx.send(std::thread::current().id()).unwrap();
        });
        // Already answered when `serve` returns, and here.
        assert_eq!(rx.try_recv().unwrap(), caller);
    }

    #[test]
    fn a_request_that_waits_goes_on_in_the_runtime_and_misses_no_wake_up() {
        let rt = runtime();
        for _ in 0..200 {
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<u32>();
            let (tx, rx) = mpsc::channel();
            let caller = std::thread::current().id();
            serve(rt.handle(), &RuntimeGate::default(), async move {
                // Timers and spawns need the runtime's context, entered for the first poll.
                tokio::time::sleep(Duration::from_millis(0)).await;
                let v = tokio::spawn(async move { go_rx.await.unwrap() })
                    .await
                    .unwrap();
                tx.send((v, std::thread::current().id())).unwrap();
            });
            // Sent right after the first poll: the value must still get through.
            go_tx.send(7).unwrap();
            let (v, on) = rx.recv_timeout(Duration::from_secs(5)).expect("answered");
            assert_eq!(v, 7);
            assert_ne!(on, caller, "finished on a runtime thread");
        }
    }

    #[test]
    fn once_the_runtime_has_shut_down_no_request_is_polled_here_and_none_panics() {
        let rt = runtime();
        let handle = rt.handle().clone();
        let gate = RuntimeGate::closing_with(&handle);
        let (tx, rx) = mpsc::channel::<()>();
        rt.shutdown_timeout(Duration::from_secs(5));
        assert!(*gate.0.read().unwrap(), "closed by the shutdown");
        // A request that registers a timer: polled here on a runtime whose time driver is shut
        // down it would panic; the gate hands it over (and the runtime drops it) instead.
        serve(&handle, &gate, async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_request_that_panics_leaves_the_fuse_thread_serving() {
        let rt = runtime();
        let gate = RuntimeGate::default();
        struct Reply(mpsc::Sender<&'static str>);
        impl Drop for Reply {
            fn drop(&mut self) {
                let _ = self.0.send("dropped");
            }
        }
        let (tx, rx) = mpsc::channel();
        let reply = Reply(tx.clone());
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        serve(rt.handle(), &gate, async move {
            let _reply = reply;
            panic!("a bug in a request");
        });
        std::panic::set_hook(quiet);
        // Its reply was dropped (EIO to the kernel), and this thread goes on serving.
        assert_eq!(rx.try_recv().unwrap(), "dropped");
        serve(rt.handle(), &gate, async move {
            tx.send("next").unwrap();
        });
        assert_eq!(rx.try_recv().unwrap(), "next");
    }

    #[tokio::test]
    async fn a_short_answer_waits_for_the_reads_before_it_and_for_nothing_else() {
        let order = Arc::new(ReadOrder::default());
        let soon = std::time::Duration::from_millis(50);
        let last_bytes = order.begin(1, 128 << 10);
        let past_the_end = order.begin(1, 256 << 10);
        let later = order.begin(1, 384 << 10);
        let other_file = order.begin(2, 0);
        // Reads after it, and another file's, do not hold it back; the one before does.
        assert!(
            tokio::time::timeout(soon, last_bytes.after_the_reads_before())
                .await
                .is_ok()
        );
        let waiting = tokio::spawn(async move {
            past_the_end.after_the_reads_before().await;
            past_the_end
        });
        tokio::time::sleep(soon).await;
        assert!(
            !waiting.is_finished(),
            "a read before it is still unanswered"
        );
        drop(later);
        drop(other_file);
        tokio::time::sleep(soon).await;
        assert!(!waiting.is_finished());
        drop(last_bytes);
        let past_the_end = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("free once the read before it is answered")
            .unwrap();
        drop(past_the_end);
        assert!(
            order.in_flight.lock().unwrap().is_empty(),
            "nothing left behind"
        );
    }
}
