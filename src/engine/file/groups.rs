//! A File shard's consumer-group offsets: `groups.log` in the shard's
//! directory, one record appended per commit (O(1), as durable as the
//! shard's appends), rewritten with the live offsets only once it is
//! mostly superseded records. The layout is in docs/FORMAT.md ("File
//! engine", `groups.log`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::config::Durability;
use crate::io::{fs, replace_file_durably, sync_dir};
use crate::{Error, Result};

pub const GROUPS_FILE: &str = "groups.log";
/// Record header: payload length (u32) and its CRC-32C (u32).
const RECORD_HEADER: usize = 8;
/// Offset value of a record that forgets the group.
const FORGOTTEN: i64 = i64::MIN;
/// The log is rewritten once it is this large and mostly dead records.
const REWRITE_AT_BYTES: u64 = 1 << 20;
/// An unreadable tail longer than this is not a torn record (group names
/// longer than 4 KiB make such a tail refuse to open instead).
const MAX_TORN_RECORD: usize = RECORD_HEADER + 8 + 4096;

/// The offsets, and the file they are appended to.
pub struct GroupLog {
    dir: PathBuf,
    live: BTreeMap<String, i64>,
    /// Open once the first record was written (or the file was found).
    file: Option<File>,
    len: u64,
    /// Bytes the live offsets take as records: what a rewrite leaves.
    live_bytes: u64,
}

fn record(group: &str, offset: i64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + group.len());
    payload.extend_from_slice(&offset.to_le_bytes());
    payload.extend_from_slice(group.as_bytes());
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The records of `data` applied in order, and where the whole ones end.
/// A last record cut short or damaged is a torn append (never
/// acknowledged: each record is one write). A damaged record with more
/// after it, or an unreadable tail longer than any torn record can be, is
/// corruption: nothing acknowledged is dropped silently.
/// The live offsets of a log and where its valid records end. Damage
/// followed by more records is corruption, unless `torn_anywhere` (the
/// log of an `os` or `none` shard, never fdatasynced, of which a power cut
/// keeps any subset of writes): then the log ends at the damage.
fn parse(data: &[u8], path: &Path, torn_anywhere: bool) -> Result<(BTreeMap<String, i64>, usize)> {
    let mut live = BTreeMap::new();
    let mut pos = 0;
    let damaged = |pos: usize| {
        Error::corruption(format!(
            "'{}': the record at byte {pos} is damaged and others follow it",
            path.display()
        ))
    };
    while pos < data.len() {
        let rest = &data[pos..];
        let Some(header) = rest.get(..RECORD_HEADER) else {
            break; // a torn header
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = rest.get(RECORD_HEADER..RECORD_HEADER + len) else {
            if rest.len() > MAX_TORN_RECORD && !torn_anywhere {
                return Err(damaged(pos));
            }
            break; // a torn payload
        };
        let group = (len >= 8 && crc32c::crc32c(payload) == crc)
            .then(|| std::str::from_utf8(&payload[8..]).ok())
            .flatten();
        let Some(group) = group else {
            if RECORD_HEADER + len == rest.len() || torn_anywhere {
                break; // the last record, torn
            }
            return Err(damaged(pos));
        };
        match i64::from_le_bytes(payload[..8].try_into().expect("8 bytes")) {
            FORGOTTEN => live.remove(group),
            offset => live.insert(group.to_string(), offset),
        };
        pos += RECORD_HEADER + len;
    }
    Ok((live, pos))
}

/// The existing log, to append to (at positions this code tracks).
fn open_for_writing(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening '{}'", path.display()), e))
}

/// Bytes a record takes for `group`.
fn record_len(group: &str) -> u64 {
    (RECORD_HEADER + 8 + group.len()) as u64
}

impl GroupLog {
    /// A shard's log: empty for a new shard.
    pub fn empty(dir: &Path) -> GroupLog {
        GroupLog {
            dir: dir.to_path_buf(),
            live: BTreeMap::new(),
            file: None,
            len: 0,
            live_bytes: 0,
        }
    }

    /// The log a shard left in `dir`; a torn last record is cut (but for
    /// `read_only`, which changes nothing), and so is any damage when
    /// `torn_anywhere` (see `parse`).
    pub fn open(dir: &Path, read_only: bool, torn_anywhere: bool) -> Result<GroupLog> {
        let path = dir.join(GROUPS_FILE);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GroupLog::empty(dir)),
            Err(e) => return Err(Error::io(format!("reading '{}'", path.display()), e)),
        };
        let (live, end) = parse(&data, &path, torn_anywhere)?;
        let live_bytes = live.keys().map(|g| record_len(g)).sum();
        let mut log = GroupLog {
            dir: dir.to_path_buf(),
            live,
            file: None,
            len: end as u64,
            live_bytes,
        };
        if read_only {
            return Ok(log);
        }
        let file = open_for_writing(&path)?;
        if end < data.len() {
            fs::set_len(&file, end as u64)
                .and_then(|()| fs::sync_data(&file))
                .map_err(|e| {
                    Error::io(format!("cutting the torn tail of '{}'", path.display()), e)
                })?;
        }
        log.file = Some(file);
        Ok(log)
    }

    /// Every group's committed offset.
    pub fn offsets(&self) -> Vec<(String, i64)> {
        self.live.iter().map(|(g, o)| (g.clone(), *o)).collect()
    }

    /// Records `group`'s offset (`None`: forgotten), as durable as
    /// `durability` makes an append: written (`none`, `os`) or fdatasynced
    /// (`fsync`; the first record also syncs the directory that gained the
    /// file).
    pub fn save(&mut self, group: &str, offset: Option<i64>, durability: Durability) -> Result<()> {
        let bytes = record(group, offset.unwrap_or(FORGOTTEN));
        let path = self.dir.join(GROUPS_FILE);
        let io = |what: &str, e| Error::io(format!("{what} '{}'", path.display()), e);
        let created = self.file.is_none();
        if created {
            let file = fs::create(&path).map_err(|e| io("creating", e))?;
            self.file = Some(file);
            self.len = 0;
        }
        let file = self.file.as_ref().expect("opened above");
        fs::write_at(file, &bytes, self.len).map_err(|e| io("writing", e))?;
        if durability == Durability::Fsync {
            fs::sync_data(file).map_err(|e| io("syncing", e))?;
            if created {
                sync_dir(&self.dir)?;
            }
        }
        self.len += bytes.len() as u64;
        let before = match offset {
            Some(offset) => self.live.insert(group.to_string(), offset),
            None => self.live.remove(group),
        };
        match (before.is_some(), offset.is_some()) {
            (false, true) => self.live_bytes += record_len(group),
            (true, false) => self.live_bytes -= record_len(group),
            _ => {}
        }
        self.rewrite_if_mostly_dead()
    }

    /// Rewrites the log with one record per live group once superseded
    /// records make up most of a large file.
    fn rewrite_if_mostly_dead(&mut self) -> Result<()> {
        if self.len < REWRITE_AT_BYTES || self.len < 4 * self.live_bytes {
            return Ok(());
        }
        let live: Vec<u8> = self
            .live
            .iter()
            .flat_map(|(group, offset)| record(group, *offset))
            .collect();
        replace_file_durably(&self.dir, GROUPS_FILE, &live)?;
        self.file = Some(open_for_writing(&self.dir.join(GROUPS_FILE))?);
        self.len = live.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_reopen_and_a_torn_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = GroupLog::empty(dir.path());
        log.save("g", Some(5), Durability::Fsync).unwrap();
        log.save("h", Some(6), Durability::Os).unwrap();
        log.save("g", Some(7), Durability::Os).unwrap();
        log.save("h", None, Durability::Os).unwrap();
        let path = dir.path().join(GROUPS_FILE);
        let whole = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            GroupLog::open(dir.path(), true, false).unwrap().offsets(),
            [("g".to_string(), 7)]
        );
        // The last record (h forgotten) torn: h is back, as before it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 3).unwrap();
        let reopened = GroupLog::open(dir.path(), false, false).unwrap();
        assert_eq!(
            reopened.offsets(),
            [("g".to_string(), 7), ("h".to_string(), 6)]
        );
        assert!(
            std::fs::metadata(&path).unwrap().len() < whole - 3,
            "torn bytes cut"
        );
    }

    #[test]
    fn a_damaged_record_with_others_after_it_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = GroupLog::empty(dir.path());
        log.save("g", Some(5), Durability::Os).unwrap();
        log.save("h", Some(6), Durability::Os).unwrap();
        let path = dir.path().join(GROUPS_FILE);
        let mut data = std::fs::read(&path).unwrap();
        data[RECORD_HEADER + 2] ^= 0x40; // inside g's offset
        std::fs::write(&path, &data).unwrap();
        let err = GroupLog::open(dir.path(), false, false)
            .err()
            .expect("refused");
        assert_eq!(err.status(), crate::Status::Corruption);
        assert!(err.to_string().contains("byte 0"), "{err}");
        // The log of an `os` or `none` shard, which a power cut may keep
        // any subset of: it ends at the damage.
        let log = GroupLog::open(dir.path(), false, true).unwrap();
        assert!(log.offsets().is_empty(), "{:?}", log.offsets());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "cut at the damage"
        );
    }

    #[test]
    fn a_log_of_mostly_old_commits_is_rewritten_small() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = GroupLog::empty(dir.path());
        for offset in 0..100_000 {
            log.save(&format!("g{}", offset % 10), Some(offset), Durability::Os)
                .unwrap();
        }
        let size = std::fs::metadata(dir.path().join(GROUPS_FILE))
            .unwrap()
            .len();
        assert!(size <= REWRITE_AT_BYTES, "{size} bytes");
        let reopened = GroupLog::open(dir.path(), false, false).unwrap();
        assert_eq!(reopened.offsets().len(), 10);
        assert!(reopened.offsets().contains(&("g9".to_string(), 99_999)));
    }
}
