//! Filesystem helpers both persistent engines need: creating a new file,
//! directory fsync and zero-copy `Bytes` views of a mapped file.

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

/// fsyncs a directory, so that a file created, renamed or removed in it
/// survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsyncing directory '{}'", dir.display()), e))
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
