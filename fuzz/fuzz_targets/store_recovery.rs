//! A store's files damaged anywhere: the journal segment, the index
//! checkpoint, the file engine's segment, offset index, time index and
//! metadata, the producer snapshot. The input picks a file, a position and
//! either bytes to write there or a cut. Reopening must answer with the
//! store or a clear error, and an opened store must read every shard to
//! its end: never a panic.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mqstore::{Record, Store};

const CONFIG: &str = "[journal]\nsegment_bytes = 65536\ncheckpoint_bytes = 16384\n\
                      [shard]\nengine = \"journal\"\ndurability = \"os\"\nsegment_bytes = 65536\n";

/// A closed store with a journal shard and a file shard, written once.
fn template() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_toml(dir.path(), Some(CONFIG)).unwrap();
        store.create_shard("j", None).unwrap();
        store.create_shard("f", Some("engine = \"file\"")).unwrap();
        for i in 0..40u32 {
            let value = vec![i as u8; 300 + i as usize * 7];
            let key = format!("k{}", i % 5);
            let records: Vec<Record<'_>> = (0..4)
                .map(|_| Record::new(&value).with_key(key.as_bytes()))
                .collect();
            store.append_batch("j", &records).unwrap();
            store.append_batch("f", &records).unwrap();
        }
        store.delete_records_before("j", 30).unwrap();
        store.delete_by_keys("f", &[b"k1"]).unwrap();
        store.close().unwrap();
        let mut files = Vec::new();
        collect(dir.path(), &mut files);
        files.sort();
        (dir, files)
    })
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if !path.ends_with("LOCK") {
            out.push(path);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn damage(file: &Path, data: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    if bytes.is_empty() {
        return;
    }
    let at = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize % bytes.len();
    if data[0] & 0x80 != 0 {
        bytes.truncate(at);
    } else {
        let patch = &data[5..];
        let end = (at + patch.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&patch[..end - at]);
    }
    std::fs::write(file, bytes).unwrap();
}

fn read_everything(store: &Store) {
    for name in store.list_shards().unwrap_or_default() {
        let Ok(info) = store.shard_info(&name) else {
            continue;
        };
        let mut offset = info.first_offset;
        while offset < info.next_offset {
            match store.read(&name, offset, 1000, 1 << 20) {
                Ok(result) if result.next_offset > offset => offset = result.next_offset,
                _ => break,
            }
        }
        if let Ok(plan) = store.plan_transfer(&name, info.first_offset, usize::MAX) {
            let _ = plan.to_vec();
        }
        let _ = store.read_by_keys(&name, &[b"k2"], 100);
        let _ = store.offset_for_timestamp(&name, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (template, files) = template();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(template.path(), dir.path());
    let relative = files[(data[0] & 0x7f) as usize % files.len()]
        .strip_prefix(template.path())
        .unwrap();
    damage(&dir.path().join(relative), data);
    if let Ok(store) = Store::open_with_toml(dir.path(), Some(CONFIG)) {
        read_everything(&store);
        let _ = store.close();
    }
});
