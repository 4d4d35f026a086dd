//! Filesystem helpers the store and both persistent engines need: creating
//! a new file, durable directory creation and fsync, zero-copy `Bytes`
//! views of a mapped file.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use crate::{Error, Result};

/// Creates `path` for reading and writing, failing if it exists (a new
/// segment never replaces one); errors read "creating `what` '`path`'".
pub fn create_new(path: &Path, what: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating {what}'{}'", path.display()), e))
}

/// Replaces `dir/name` with `bytes` atomically: a temporary file written
/// and fsynced, renamed over the old one, the directory fsynced. A crash
/// leaves either the old or the new file, never a mix.
pub fn replace_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |what: &str, e| Error::io(format!("{what} '{}'", tmp.display()), e);
    let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(bytes).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("fsyncing", e))?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| io("renaming", e))?;
    sync_dir(dir)
}

/// Removes `dir/name` if it exists and makes the removal durable.
pub fn remove_file_durably(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing '{}'", path.display()), e)),
    }
}

/// fsyncs a directory, so that a file created, renamed or removed in it
/// survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsyncing directory '{}'", dir.display()), e))?;
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
        match std::fs::create_dir(new) {
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
