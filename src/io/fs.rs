//! The filesystem layer of the store and both persistent engines: every
//! operation that changes a file or a directory goes through the functions
//! here (so a crash-consistency test can observe each, see `observe`), plus
//! the helpers built on them: creating a new file, replacing one durably,
//! durable directory creation and fsync, zero-copy `Bytes` views of a
//! mapped file. Reads and opens without create or truncate change nothing
//! and use `std::fs` directly.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use super::observe::{observer, FsObserver};
use crate::{Error, Result};

/// The observer and the inode of `file`, when an observer is installed.
fn watched(file: &File) -> Option<(Arc<dyn FsObserver>, u64)> {
    let observer = observer()?;
    let ino = file.metadata().ok()?.ino();
    Some((observer, ino))
}

/// Tells the observer, if one is installed, of a change by path.
fn report(change: impl FnOnce(&dyn FsObserver)) {
    if let Some(observer) = observer() {
        change(&*observer);
    }
}

fn report_created(path: &Path, file: &File) {
    if let Some((observer, ino)) = watched(file) {
        observer.created(path, ino);
    }
}

/// `pwrite(2)` of all of `buf` at `pos`.
pub fn write_at(file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
    file.write_all_at(buf, pos)?;
    report_write(file, buf, pos);
    Ok(())
}

/// Reports a write made outside `write_at` (io_uring), once it completed.
pub fn report_write(file: &File, buf: &[u8], pos: u64) {
    if let Some((observer, ino)) = watched(file) {
        observer.wrote(ino, pos, buf);
    }
}

/// `ftruncate(2)`.
pub fn set_len(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    if let Some((observer, ino)) = watched(file) {
        observer.resized(ino, len);
    }
    Ok(())
}

/// `fallocate(2)` with `mode` (`FALLOC_FL_*`) over `[start, start + len)`.
/// Reported as what a reader can see of it: a hole punched inside the
/// file reads as zeros, an allocation without `KEEP_SIZE` may grow it.
pub fn fallocate(file: &File, mode: libc::c_int, start: u64, len: u64) -> io::Result<()> {
    let watched = watched(file);
    let size_before = watched
        .as_ref()
        .map(|_| file.metadata().map_or(0, |m| m.len()));
    // SAFETY: fallocate(2) on a descriptor `file` owns; no memory is
    // passed, and the caller's mode says what may change.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            start as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if let (Some((observer, ino)), Some(size)) = (watched, size_before) {
        let end = start + len;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && start < size {
            observer.wrote(ino, start, &vec![0; (end.min(size) - start) as usize]);
        } else if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
            observer.resized(ino, end);
        }
    }
    Ok(())
}

/// A sync of `file` about to start: hand it to `SyncReport::done` once the
/// sync succeeded (io_uring syncs are started and completed elsewhere).
pub struct SyncReport(Option<(Arc<dyn FsObserver>, u64, u64)>);

impl SyncReport {
    pub fn start(file: &File) -> SyncReport {
        SyncReport(watched(file).map(|(observer, ino)| {
            let token = observer.sync_started(ino);
            (observer, ino, token)
        }))
    }

    pub fn done(self) {
        if let Some((observer, ino, token)) = self.0 {
            observer.synced(ino, token);
        }
    }
}

/// `fdatasync(2)`.
pub fn sync_data(file: &File) -> io::Result<()> {
    let report = SyncReport::start(file);
    file.sync_data()?;
    report.done();
    Ok(())
}

/// `fsync(2)`.
pub fn sync_all(file: &File) -> io::Result<()> {
    let report = SyncReport::start(file);
    file.sync_all()?;
    report.done();
    Ok(())
}

/// `File::create`: creates `path`, or truncates the file there.
pub fn create(path: &Path) -> io::Result<File> {
    let file = File::create(path)?;
    report_created(path, &file);
    Ok(file)
}

/// Opens `path` with `options` that create it or truncate it (like
/// `create`, with other access modes or flags): always reported as created.
pub fn create_with(options: &OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.open(path)?;
    report_created(path, &file);
    Ok(file)
}

/// Opens `path` with `options` that may create it (not truncate it: use
/// `create` or `create_with`); a file that did not exist is reported as created.
pub fn open_creating(options: &OpenOptions, path: &Path) -> io::Result<File> {
    let existed = observer().is_some() && path.exists();
    let file = options.open(path)?;
    if !existed {
        report_created(path, &file);
    }
    Ok(file)
}

/// `rename(2)`.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    report(|o| o.renamed(from, to));
    Ok(())
}

/// `unlink(2)`.
pub fn remove_file(path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    report(|o| o.removed(path));
    Ok(())
}

/// Removes a directory and everything under it.
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(path)?;
    report(|o| o.removed(path));
    Ok(())
}

/// `mkdir(2)`.
pub fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::create_dir(path)?;
    report(|o| o.dir_created(path));
    Ok(())
}

/// Creates `path` for reading and writing, failing if it exists (a new
/// segment never replaces one); errors read "creating `what` '`path`'".
pub fn create_new(path: &Path, what: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating {what}'{}'", path.display()), e))?;
    report_created(path, &file);
    Ok(file)
}

/// Replaces `dir/name` with `bytes` atomically: a temporary file written
/// and fsynced, renamed over the old one, the directory fsynced. A crash
/// leaves either the old or the new file, never a mix.
pub fn replace_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    replace_file(dir, name, bytes, true)
}

/// `replace_file_durably`, but the directory is fsynced only when
/// `durable_rename`: without it a power cut may keep the old file. The
/// temporary file is fsynced either way, since a rename that reaches the
/// disk before its data (any later directory fsync can carry it there)
/// would leave an empty file where the old one would merely be stale.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8], durable_rename: bool) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |what: &str, e| Error::io(format!("{what} '{}'", tmp.display()), e);
    let file = create(&tmp).map_err(|e| io("creating", e))?;
    write_at(&file, bytes, 0).map_err(|e| io("writing", e))?;
    sync_all(&file).map_err(|e| io("fsyncing", e))?;
    drop(file);
    rename(&tmp, &dir.join(name)).map_err(|e| io("renaming", e))?;
    if durable_rename {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes `dir/name` if it exists and makes the removal durable.
pub fn remove_file_durably(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing '{}'", path.display()), e)),
    }
}

/// fsyncs a directory, so that a file created, renamed or removed in it
/// survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let observer = observer();
    let token = observer.as_ref().map(|o| o.dir_sync_started(dir));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsyncing directory '{}'", dir.display()), e))?;
    if let (Some(observer), Some(token)) = (observer, token) {
        observer.dir_synced(dir, token);
    }
    #[cfg(test)]
    SYNCED_DIRS.with(|synced| synced.borrow_mut().push(dir.to_path_buf()));
    Ok(())
}

/// Creates `dir` and whichever of its ancestors are missing, like
/// `fs::create_dir_all`, and makes each new directory durable: a directory
/// entry survives a power loss only once its parent is fsynced, so each
/// parent is, from the top down (a new directory is never made durable
/// under a parent that could still vanish). Existing directories cost one
/// `stat`.
pub fn create_dir_all_durable(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|d| !d.as_os_str().is_empty())
        .take_while(|d| !d.is_dir())
        .collect();
    for new in missing.into_iter().rev() {
        match create_dir(new) {
            Ok(()) => {}
            // Created meanwhile by someone else, who may not sync it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && new.is_dir() => {}
            Err(e) => {
                return Err(Error::io(
                    format!("creating directory '{}'", new.display()),
                    e,
                ))
            }
        }
        let parent = match new.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// Directories this thread fsynced, in order: what a power loss cannot
    /// take back cannot be observed otherwise.
    static SYNCED_DIRS: std::cell::RefCell<Vec<std::path::PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Takes the list of directories this thread fsynced since the last call.
#[cfg(test)]
pub fn take_synced_dirs() -> Vec<std::path::PathBuf> {
    SYNCED_DIRS.with(|synced| synced.take())
}

/// A range of a mapping, owned by `Bytes`: holding it keeps the map alive.
struct MapSlice {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// Bytes `[start, start + len)` of `map`, without copying.
pub fn map_slice(map: &Arc<Mmap>, start: u64, len: u64) -> Bytes {
    Bytes::from_owner(MapSlice {
        map: map.clone(),
        start: start as usize,
        len: len as usize,
    })
}
