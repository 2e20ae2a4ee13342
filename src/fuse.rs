//! The thin `fuser` adapter: the only module that names fuser.
//!
//! Every request is handed to the async core ([`crate::fs::Fs`]) on the tokio runtime and
//! answered from there (fuser's reply objects may move between threads), so a `read` waiting for
//! the network never blocks an `ls` in another window. Write operations answer EROFS here, at
//! once: the mount is read-only by design.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, DirEntry, Fs, FsError, Kind};

/// The fuser `Filesystem` over the core.
pub struct FuseAdapter {
    core: Arc<Fs>,
    rt: tokio::runtime::Handle,
    /// Directory listings taken at `opendir`, served page by page to `readdir`.
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>>,
    next_dir_fh: AtomicU64,
}

impl FuseAdapter {
    pub fn new(core: Arc<Fs>, rt: tokio::runtime::Handle) -> FuseAdapter {
        FuseAdapter {
            core,
            rt,
            dirs: Arc::default(),
            next_dir_fh: AtomicU64::new(1),
        }
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
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let core = self.core.clone();
        let name = name.to_owned();
        self.rt.spawn(async move {
            match core.lookup(parent.0, &name).await {
                Ok(a) => {
                    reply.entry_with_ttls(&a.attr_ttl, &a.entry_ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let core = self.core.clone();
        self.rt.spawn(async move {
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
        self.rt.spawn(async move {
            match core.opendir(ino.0).await {
                Ok(entries) => {
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
        let entries = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(entries) = entries else {
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
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let core = self.core.clone();
        self.rt.spawn(async move {
            match core.open(ino.0, write).await {
                Ok(o) => {
                    let mut f = FopenFlags::empty();
                    if o.keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    if o.direct_io {
                        f |= FopenFlags::FOPEN_DIRECT_IO;
                    }
                    reply.opened(FileHandle(o.fh), f);
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
        let core = self.core.clone();
        self.rt.spawn(async move {
            match core.read(ino.0, fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
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

/// How a mount is set up.
#[derive(Debug, Clone, Default)]
pub struct MountSettings {
    /// Shown as the source in /proc/mounts (`demo`, `ringcentral`, the URL).
    pub fsname: String,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
}

/// A mounted filesystem, served by [`Mounted::run`] on the calling thread.
pub struct Mounted(fuser::Session<FuseAdapter>);

/// Unmounts a [`Mounted`] from another thread (signal handling).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    pub fn unmount_callable(&mut self) -> Unmounter {
        Unmounter(self.0.unmount_callable())
    }

    /// Serves requests until the filesystem is unmounted (by us or by `umount`).
    pub fn run(self) -> std::io::Result<()> {
        self.0.run()
    }

    /// Serves on a background thread; dropping the handle unmounts (used by tests).
    pub fn spawn(self) -> std::io::Result<Background> {
        self.0.spawn().map(Background)
    }
}

/// A mount served on a background thread; unmounted when dropped.
pub struct Background(#[allow(dead_code)] fuser::BackgroundSession);

/// Mounts read-only at `mountpoint`. As root this is mount(2); otherwise fusermount3.
pub fn mount(
    adapter: FuseAdapter,
    mountpoint: &std::path::Path,
    s: &MountSettings,
) -> anyhow::Result<Mounted> {
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
    fuser::Session::new(adapter, mountpoint, &config)
        .map(Mounted)
        .map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EBUSY) => " (something is already mounted there)",
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (not allowed: check /etc/fuse.conf and the mount point's owner)"
                }
                _ => "",
            };
            anyhow::anyhow!("mounting on {}: {e}{hint}", mountpoint.display())
        })
}
