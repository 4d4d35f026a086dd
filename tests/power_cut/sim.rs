//! A simulated disk under the store's filesystem layer: it records every
//! change the layer reports (`mqstore::io::FsObserver`) and builds the
//! states a power cut at any point of the recording could leave.
//!
//! The model, per file: a change reported before the start of a sync of
//! that file that succeeded before the cut is durable; any other change may
//! or may not have reached the disk, independently of the others (the
//! device and the page cache reorder), and a write may be torn at 512-byte
//! sector granularity. Per directory: an entry change (create, rename,
//! remove, mkdir) reported before the start of a directory sync is durable;
//! the others are lost in one of two ways, drawn per cut: a random prefix of
//! them survives (a filesystem journaling metadata in order, as ext4 and XFS
//! do) or a random subset (no ordering at all). fsync of a file says
//! nothing about its directory entry. This is the CrashMonkey / ALICE model,
//! applied to the store's own operations rather than to block I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mqstore::io::FsObserver;

use crate::common::Rng;

/// The sector: the unit a torn write keeps or loses.
const SECTOR: usize = 512;

type FileId = usize;

enum Data {
    Bytes(Vec<u8>),
    Zeros(usize),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Bytes(b) => b.len(),
            Data::Zeros(n) => *n,
        }
    }
}

enum Event {
    /// A new, empty file.
    Create {
        path: PathBuf,
        file: FileId,
    },
    Write {
        file: FileId,
        pos: u64,
        data: Data,
    },
    Resize {
        file: FileId,
        len: u64,
    },
    /// The file's changes before event `covers` are durable.
    Sync {
        file: FileId,
        covers: usize,
    },
    Mkdir {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// The entry changes in `dir` before event `covers` are durable.
    DirSync {
        dir: PathBuf,
        covers: usize,
    },
}

#[derive(Default)]
struct Trace {
    events: Vec<Event>,
    inodes: HashMap<u64, FileId>,
    /// The current namespace (files only), to tell a truncation of an
    /// existing file from a new file that reuses a freed inode number.
    live: HashMap<PathBuf, FileId>,
    files: usize,
}

/// Records the filesystem changes under `root`.
pub struct Recorder {
    root: PathBuf,
    trace: Mutex<Trace>,
}

impl Recorder {
    pub fn new(root: &Path) -> Recorder {
        Recorder {
            root: root.to_path_buf(),
            trace: Mutex::new(Trace::default()),
        }
    }

    /// The number of events so far: a cut at or after it keeps everything
    /// acknowledged before this call.
    pub fn now(&self) -> usize {
        self.trace.lock().unwrap().events.len()
    }

    /// How many renames recorded so far `wanted(from, to)` picks.
    pub fn renames(&self, wanted: impl Fn(&Path, &Path) -> bool) -> usize {
        let trace = self.trace.lock().unwrap();
        trace
            .events
            .iter()
            .filter(|e| matches!(e, Event::Rename { from, to } if wanted(from, to)))
            .count()
    }

    /// One line per event of the first `cut`, for a failure report.
    pub fn dump(&self, cut: usize) -> String {
        let trace = self.trace.lock().unwrap();
        let events = &trace.events[..cut.min(trace.events.len())];
        let lines: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, e)| describe(i, e))
            .collect();
        lines.join("\n")
    }

    fn relative(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    fn push(&self, event: Event) {
        self.trace.lock().unwrap().events.push(event);
    }

    fn file_event(&self, ino: u64, event: impl FnOnce(FileId) -> Event) {
        let mut trace = self.trace.lock().unwrap();
        if let Some(&file) = trace.inodes.get(&ino) {
            let event = event(file);
            trace.events.push(event);
        }
    }
}

impl FsObserver for Recorder {
    fn created(&self, path: &Path, ino: u64) {
        let Some(path) = self.relative(path) else {
            return;
        };
        let mut trace = self.trace.lock().unwrap();
        if let Some(&file) = trace.live.get(&path) {
            if trace.inodes.get(&ino) == Some(&file) {
                trace.events.push(Event::Resize { file, len: 0 });
                return;
            }
        }
        let file = trace.files;
        trace.files += 1;
        trace.inodes.insert(ino, file);
        trace.live.insert(path.clone(), file);
        trace.events.push(Event::Create { path, file });
    }

    fn wrote(&self, ino: u64, pos: u64, data: &[u8]) {
        let data = if data.iter().all(|&b| b == 0) {
            Data::Zeros(data.len())
        } else {
            Data::Bytes(data.to_vec())
        };
        self.file_event(ino, |file| Event::Write { file, pos, data });
    }

    fn resized(&self, ino: u64, len: u64) {
        self.file_event(ino, |file| Event::Resize { file, len });
    }

    fn sync_started(&self, _ino: u64) -> u64 {
        self.now() as u64
    }

    fn synced(&self, ino: u64, token: u64) {
        self.file_event(ino, |file| Event::Sync {
            file,
            covers: token as usize,
        });
    }

    fn dir_created(&self, path: &Path) {
        // The store's own directory is where the crash state is built.
        if let Some(path) = self.relative(path).filter(|p| !p.as_os_str().is_empty()) {
            self.push(Event::Mkdir { path });
        }
    }

    fn renamed(&self, from: &Path, to: &Path) {
        let (Some(from), Some(to)) = (self.relative(from), self.relative(to)) else {
            return;
        };
        let mut trace = self.trace.lock().unwrap();
        rename_entries(&mut trace.live, &from, &to);
        trace.events.push(Event::Rename { from, to });
    }

    fn removed(&self, path: &Path) {
        let Some(path) = self.relative(path) else {
            return;
        };
        let mut trace = self.trace.lock().unwrap();
        trace.live.retain(|p, _| !p.starts_with(&path));
        trace.events.push(Event::Remove { path });
    }

    fn dir_sync_started(&self, _dir: &Path) -> u64 {
        self.now() as u64
    }

    fn dir_synced(&self, dir: &Path, token: u64) {
        if let Some(dir) = self.relative(dir) {
            self.push(Event::DirSync {
                dir,
                covers: token as usize,
            });
        }
    }
}

/// Moves `from` and everything under it to `to`, replacing what was there.
fn rename_entries<V: Clone>(map: &mut HashMap<PathBuf, V>, from: &Path, to: &Path) {
    map.retain(|p, _| !p.starts_with(to));
    let moved: Vec<(PathBuf, V)> = map
        .iter()
        .filter(|(p, _)| p.starts_with(from))
        .map(|(p, v)| {
            let rest = p.strip_prefix(from).unwrap();
            let moved = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            (moved, v.clone())
        })
        .collect();
    map.retain(|p, _| !p.starts_with(from));
    map.extend(moved);
}

#[derive(Clone, Copy, PartialEq)]
enum Node {
    Dir,
    File(FileId),
}

/// What one cut kept, for the failure report.
pub struct CutState {
    /// The entry changes lost, as the trace shows them.
    pub lost_entries: Vec<String>,
    pub lost_or_torn_writes: usize,
    pub ordered_metadata: bool,
}

impl Recorder {
    /// Writes into `target` what a power cut after the first `cut` events
    /// could leave, drawing the unsynced changes kept from `rng`.
    pub fn crash_state(&self, cut: usize, rng: &mut Rng, target: &Path) -> CutState {
        let trace = self.trace.lock().unwrap();
        let events = &trace.events[..cut.min(trace.events.len())];
        let ordered = rng.below(2) == 0;
        let (names, lost) = namespace(events, ordered, rng);
        let mut lost_entries: Vec<String> = lost.iter().map(|&i| describe(i, &events[i])).collect();
        lost_entries.sort();
        let synced = synced_bounds(events);
        let mut lost_or_torn_writes = 0;
        let mut dirs: Vec<&PathBuf> = names
            .iter()
            .filter(|(_, n)| **n == Node::Dir)
            .map(|(p, _)| p)
            .collect();
        dirs.sort();
        for dir in dirs {
            std::fs::create_dir_all(target.join(dir)).unwrap();
        }
        for (path, node) in &names {
            if let Node::File(file) = node {
                let bound = synced.get(file).copied().unwrap_or(0);
                let (bytes, lost) = contents(events, *file, bound, rng);
                lost_or_torn_writes += lost;
                let path = target.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
        }
        CutState {
            lost_entries,
            lost_or_torn_writes,
            ordered_metadata: ordered,
        }
    }
}

fn describe(i: usize, event: &Event) -> String {
    let line = match event {
        Event::Create { path, file } => format!("create {} #{file}", path.display()),
        Event::Write { file, pos, data } => format!("write #{file} @{pos} +{}", data.len()),
        Event::Resize { file, len } => format!("resize #{file} {len}"),
        Event::Sync { file, covers } => format!("sync #{file} <{covers}"),
        Event::Mkdir { path } => format!("mkdir {}", path.display()),
        Event::Rename { from, to } => format!("rename {} {}", from.display(), to.display()),
        Event::Remove { path } => format!("remove {}", path.display()),
        Event::DirSync { dir, covers } => format!("dirsync {} <{covers}", dir.display()),
    };
    format!("{i} {line}")
}

/// For each synced file (`Sync`) or directory (`DirSync`), as `sync`
/// names them, the event index below which its changes are durable.
fn durable_bounds<K: Eq + std::hash::Hash>(
    events: &[Event],
    sync: impl Fn(&Event) -> Option<(K, usize)>,
) -> HashMap<K, usize> {
    let mut bounds: HashMap<K, usize> = HashMap::new();
    for (key, covers) in events.iter().filter_map(sync) {
        let bound = bounds.entry(key).or_default();
        *bound = (*bound).max(covers);
    }
    bounds
}

/// For each file, the event index below which its changes are durable.
fn synced_bounds(events: &[Event]) -> HashMap<FileId, usize> {
    durable_bounds(events, |event| match event {
        Event::Sync { file, covers } => Some((*file, *covers)),
        _ => None,
    })
}

/// The directory whose sync makes an entry change durable.
fn entry_dir(event: &Event) -> Option<PathBuf> {
    let path = match event {
        Event::Create { path, .. } | Event::Mkdir { path } | Event::Remove { path } => path,
        Event::Rename { to, .. } => to,
        _ => return None,
    };
    Some(path.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The entries that survive: durable changes, plus the unsynced ones the
/// draw keeps (a prefix per directory when `ordered`, else any subset).
/// Returns them and the indexes of the entry changes lost.
fn namespace(
    events: &[Event],
    ordered: bool,
    rng: &mut Rng,
) -> (HashMap<PathBuf, Node>, std::collections::HashSet<usize>) {
    let dir_bounds = durable_bounds(events, |event| match event {
        Event::DirSync { dir, covers } => Some((dir.clone(), *covers)),
        _ => None,
    });
    let mut pending: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        if let Some(dir) = entry_dir(event) {
            if i >= dir_bounds.get(&dir).copied().unwrap_or(0) {
                pending.entry(dir).or_default().push(i);
            }
        }
    }
    let mut lost: std::collections::HashSet<usize> = std::collections::HashSet::new();
    for changes in pending.values() {
        if ordered {
            let kept = rng.below(changes.len() as u64 + 1) as usize;
            lost.extend(&changes[kept..]);
        } else {
            lost.extend(changes.iter().filter(|_| rng.below(2) == 0));
        }
    }
    let mut names: HashMap<PathBuf, Node> = HashMap::new();
    names.insert(PathBuf::new(), Node::Dir);
    for (i, event) in events.iter().enumerate() {
        if lost.contains(&i) {
            continue;
        }
        apply_entry_change(&mut names, event);
    }
    names.remove(&PathBuf::new());
    (names, lost)
}

fn parent_exists(names: &HashMap<PathBuf, Node>, path: &Path) -> bool {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    names.get(&parent) == Some(&Node::Dir)
}

fn apply_entry_change(names: &mut HashMap<PathBuf, Node>, event: &Event) {
    match event {
        Event::Create { path, file } if parent_exists(names, path) => {
            names.insert(path.clone(), Node::File(*file));
        }
        Event::Mkdir { path } if parent_exists(names, path) => {
            names.entry(path.clone()).or_insert(Node::Dir);
        }
        Event::Rename { from, to } if names.contains_key(from) && parent_exists(names, to) => {
            rename_entries(names, from, to);
        }
        Event::Remove { path } => names.retain(|p, _| !p.starts_with(path)),
        _ => {}
    }
}

/// The bytes of `file` after the cut: its changes before `bound` all kept,
/// the later ones each kept whole, lost, or torn by sector. Returns them
/// and how many changes were lost or torn.
fn contents(events: &[Event], file: FileId, bound: usize, rng: &mut Rng) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut lost = 0;
    for (i, event) in events.iter().enumerate() {
        let durable = i < bound;
        match event {
            Event::Write { file: f, pos, data } if *f == file => {
                let keep = if durable {
                    Keep::All
                } else {
                    match rng.below(5) {
                        0 | 1 => Keep::All,
                        2 | 3 => Keep::Nothing,
                        _ => Keep::Sectors,
                    }
                };
                if !matches!(keep, Keep::All) {
                    lost += 1;
                }
                apply_write(&mut bytes, *pos as usize, data, keep, rng);
            }
            Event::Resize { file: f, len } if *f == file => {
                if durable || rng.below(2) == 0 {
                    bytes.resize(*len as usize, 0);
                } else {
                    lost += 1;
                }
            }
            _ => {}
        }
    }
    (bytes, lost)
}

enum Keep {
    All,
    Nothing,
    Sectors,
}

fn apply_write(bytes: &mut Vec<u8>, pos: usize, data: &Data, keep: Keep, rng: &mut Rng) {
    if matches!(keep, Keep::Nothing) {
        return;
    }
    let end = pos + data.len();
    let mut at = pos;
    while at < end {
        // Sectors are aligned to the file, not to the write.
        let sector_end = ((at / SECTOR + 1) * SECTOR).min(end);
        let kept = matches!(keep, Keep::All) || rng.below(2) == 0;
        if kept {
            if bytes.len() < sector_end {
                bytes.resize(sector_end, 0);
            }
            match data {
                Data::Bytes(b) => {
                    bytes[at..sector_end].copy_from_slice(&b[at - pos..sector_end - pos])
                }
                Data::Zeros(_) => bytes[at..sector_end].fill(0),
            }
        }
        at = sector_end;
    }
}
