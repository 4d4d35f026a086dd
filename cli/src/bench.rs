//! `mqstore bench`: a quick measurement on the operator's own disk. The raw
//! disk first (O_DIRECT sequential writes, small write + fdatasync round
//! trips, O_DIRECT reads), then the journal engine with `fsync` on the same
//! directory (1 KiB records in batches of 64: one blocking producer, then
//! one producer keeping 64 batches in flight) and a read of everything back,
//! each set beside the raw figure it is bounded by. Everything it writes is
//! under a fresh directory inside DIR, removed at the end.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use mqstore::{Config, Record, Store};

use crate::{Args, CliResult, Failure};

const RECORD: usize = 1024;
const BATCH: usize = 64;
const WINDOW: usize = 64;
const BLOCK: usize = 1 << 20;

fn io_failure(what: &str, e: std::io::Error) -> Failure {
    Failure::Failed(format!("bench: {what}: {e}"))
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Aligned { ptr, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

/// Opens with O_DIRECT when the filesystem allows it (tmpfs does not).
fn open_direct(path: &Path, write: bool) -> std::io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).write(write).create(write);
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((options.open(path)?, false)),
        Err(e) => Err(e),
    }
}

struct Raw {
    write_gbps: f64,
    read_gbps: f64,
    sync_per_s: f64,
    direct: bool,
}

fn raw(dir: &Path, bytes: usize) -> CliResult<Raw> {
    let path = dir.join("raw.dat");
    let (file, direct) = open_direct(&path, true).map_err(|e| io_failure("opening raw.dat", e))?;
    let mut buf = Aligned::new(BLOCK);
    buf.bytes().fill(0x5a);
    let start = Instant::now();
    let mut at = 0;
    while at < bytes {
        file.write_all_at(buf.bytes(), at as u64)
            .map_err(|e| io_failure("writing raw.dat", e))?;
        at += BLOCK;
    }
    file.sync_data().map_err(|e| io_failure("fdatasync", e))?;
    let write_gbps = at as f64 / start.elapsed().as_secs_f64() / 1e9;

    let start = Instant::now();
    let mut at = 0;
    while at < bytes {
        file.read_exact_at(buf.bytes(), at as u64)
            .map_err(|e| io_failure("reading raw.dat", e))?;
        at += BLOCK;
    }
    let read_gbps = at as f64 / start.elapsed().as_secs_f64() / 1e9;

    // Round trips of one 64 KiB group + fdatasync: what a lone durable
    // producer pays per batch.
    let group = &buf.bytes()[..BATCH * RECORD];
    let rounds = 200;
    let start = Instant::now();
    for i in 0..rounds {
        file.write_all_at(group, (i * group.len()) as u64)
            .map_err(|e| io_failure("writing raw.dat", e))?;
        file.sync_data().map_err(|e| io_failure("fdatasync", e))?;
    }
    let sync_per_s = rounds as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Raw {
        write_gbps,
        read_gbps,
        sync_per_s,
        direct,
    })
}

struct Engine {
    blocking_msgs: f64,
    pipelined_msgs: f64,
    read_gbps: f64,
}

fn engine(dir: &Path, bytes: usize) -> CliResult<Engine> {
    let config = Config::from_toml_str(
        "[shard]\nengine = \"journal\"\ndurability = \"fsync\"\n[journal]\nsegment_bytes = 268435456\n",
    )?;
    let store = Store::open(dir.join("store"), config)?;
    store.create_shard("blocking", None)?;
    store.create_shard("pipelined", None)?;
    let value = vec![0x61u8; RECORD];
    let batch: Vec<Record<'_>> = (0..BATCH).map(|_| Record::new(&value)).collect();
    let batches = (bytes / (RECORD * BATCH)).max(WINDOW * 2);

    // The blocking producer needs an fdatasync per batch: a quarter of the
    // batches is plenty to measure it.
    let blocking = (batches / 4).max(16);
    let start = Instant::now();
    for _ in 0..blocking {
        store.append_batch("blocking", &batch)?;
    }
    let blocking_msgs = (blocking * BATCH) as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for _ in 0..batches {
        if in_flight.len() == WINDOW {
            let oldest = in_flight.pop_front().expect("window is full");
            store.wait_durable("pipelined", oldest)?;
        }
        in_flight.push_back(store.append_batch_nowait("pipelined", &batch)?);
    }
    while let Some(offset) = in_flight.pop_front() {
        store.wait_durable("pipelined", offset)?;
    }
    let pipelined_msgs = (batches * BATCH) as f64 / start.elapsed().as_secs_f64();

    // Reopened, so reads come from the files, not the writer's tail cache.
    store.close()?;
    let store = Store::open(dir.join("store"), Config::default())?;
    let start = Instant::now();
    let mut offset = 0;
    let mut read = 0usize;
    let next = store.shard_info("pipelined")?.next_offset;
    while offset < next {
        let result = store.read("pipelined", offset, 4096, 8 << 20)?;
        read += result
            .records
            .iter()
            .map(|r| r.value_bytes().len())
            .sum::<usize>();
        offset = result.next_offset;
    }
    let read_gbps = read as f64 / start.elapsed().as_secs_f64() / 1e9;
    store.close()?;
    Ok(Engine {
        blocking_msgs,
        pipelined_msgs,
        read_gbps,
    })
}

pub fn run(raw_args: &[String]) -> CliResult<()> {
    let args = Args::parse(raw_args, &["json"], &["mb"])?;
    args.exactly(&["DIR"])?;
    let mb = args.number("mb")?.unwrap_or(256);
    if !(4..=65536).contains(&mb) {
        return Err(Failure::Usage("--mb must be 4 to 65536".into()));
    }
    let bytes = mb as usize * BLOCK;
    let parent = Path::new(&args.positional[0]);
    if !parent.is_dir() {
        return Err(Failure::Failed(format!(
            "bench: '{}' is not a directory",
            parent.display()
        )));
    }
    let dir = parent.join(format!("mqstore-bench-{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| io_failure("creating the scratch directory", e))?;
    let result = raw(&dir, bytes).and_then(|r| engine(&dir, bytes).map(|e| (r, e)));
    let _ = std::fs::remove_dir_all(&dir);
    let (raw, engine) = result?;

    let payload_gbps = engine.pipelined_msgs * RECORD as f64 / 1e9;
    let ceiling_msgs = raw.sync_per_s * BATCH as f64;
    if args.flag("json") {
        let out = serde_json::json!({
            "dir": parent.display().to_string(),
            "mb": mb,
            "raw": {
                "o_direct": raw.direct,
                "write_gbps": raw.write_gbps,
                "read_gbps": raw.read_gbps,
                "write_64k_fdatasync_per_s": raw.sync_per_s,
            },
            "journal": {
                "append_1k_batch64_fsync_msgs_per_s": engine.blocking_msgs,
                "append_1k_batch64_fsync_pipelined_msgs_per_s": engine.pipelined_msgs,
                "read_1k_gbps": engine.read_gbps,
            },
        });
        println!("{out:#}");
        return Ok(());
    }
    println!(
        "mqstore bench on {} ({mb} MiB, {})",
        parent.display(),
        if raw.direct {
            "O_DIRECT"
        } else {
            "page cache: the filesystem refuses O_DIRECT"
        }
    );
    println!("raw disk:");
    println!(
        "  sequential write, 1 MiB blocks      {:8.2} GB/s",
        raw.write_gbps
    );
    println!(
        "  sequential read, 1 MiB blocks       {:8.2} GB/s",
        raw.read_gbps
    );
    println!(
        "  64 KiB write + fdatasync            {:8.0} /s",
        raw.sync_per_s
    );
    println!("journal, fsync, 1 KiB records in batches of {BATCH}:");
    println!(
        "  one blocking producer               {:8.0} msgs/s ({:.0} % of {:.0}: one raw 64 KiB write + fdatasync per batch)",
        engine.blocking_msgs,
        engine.blocking_msgs * 100.0 / ceiling_msgs,
        ceiling_msgs
    );
    println!(
        "  one producer, {WINDOW} batches in flight  {:8.0} msgs/s ({:.2} GB/s of payload, {:.0} % of the raw write)",
        engine.pipelined_msgs,
        payload_gbps,
        payload_gbps * 100.0 / raw.write_gbps
    );
    println!(
        "  read back from the files            {:8.2} GB/s ({:.0} % of the raw read)",
        engine.read_gbps,
        engine.read_gbps * 100.0 / raw.read_gbps
    );
    Ok(())
}
