//! A seam for crash-consistency testing: every operation of the filesystem
//! layer (`io::fs`) that changes a file or a directory is reported, in the
//! order it took effect, to an observer installed for the whole process.
//!
//! The power-cut tests install one that records the operations and what
//! each fsync made durable, then builds the states a power cut could leave
//! (the durable part plus any subset of the rest, torn at sector
//! granularity) and reopens the store from each. With no observer, the
//! cost is one relaxed atomic load per operation.
//!
//! Order: a change is reported after its system call returned, from the
//! thread that made it, before that thread can tell anyone it happened. A
//! sync is reported twice: when it starts (it covers exactly the changes
//! reported before) and when it succeeded.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// Receives the filesystem layer's operations. Files are named by inode
/// number (writes go through descriptors); directory entries by path.
pub trait FsObserver: Send + Sync {
    /// A file was created empty at `path`, or an existing one truncated to
    /// nothing (`File::create`): `ino` names it from now on.
    fn created(&self, path: &Path, ino: u64);
    /// `data` was written at `pos` (a write past the end extends the file).
    fn wrote(&self, ino: u64, pos: u64, data: &[u8]);
    /// The file's size was set to `len` (ftruncate).
    fn resized(&self, ino: u64, len: u64);
    /// An fsync or fdatasync of the file starts; the token goes to `synced`.
    fn sync_started(&self, ino: u64) -> u64;
    /// The sync started with `token` succeeded: the file's contents and size
    /// as of its start are durable.
    fn synced(&self, ino: u64, token: u64);
    /// A directory was created at `path`.
    fn dir_created(&self, path: &Path);
    /// `from` was renamed to `to` (replacing `to` if it existed).
    fn renamed(&self, from: &Path, to: &Path);
    /// The entry `path` was removed (a file, or a directory with everything
    /// under it).
    fn removed(&self, path: &Path);
    /// An fsync of directory `dir` starts; the token goes to `dir_synced`.
    fn dir_sync_started(&self, dir: &Path) -> u64;
    /// The directory sync started with `token` succeeded: the entries of
    /// `dir` as of its start are durable.
    fn dir_synced(&self, dir: &Path, token: u64);
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static OBSERVER: RwLock<Option<Arc<dyn FsObserver>>> = RwLock::new(None);

/// Installs `observer` for every store of the process, or removes it
/// (`None`). Operations under way while it changes may go unreported.
pub fn set_fs_observer(observer: Option<Arc<dyn FsObserver>>) {
    let mut slot = OBSERVER.write();
    ACTIVE.store(observer.is_some(), Ordering::Release);
    *slot = observer;
}

/// The installed observer, if any.
pub(crate) fn observer() -> Option<Arc<dyn FsObserver>> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    OBSERVER.read().clone()
}
