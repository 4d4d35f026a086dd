//! `mqstore verify`: the store opens (its recovery validates what it
//! replays), then every stored batch of every shard is read back and
//! checked: the batch parses, its CRC-32C holds, its records decode within
//! its offset range, batches follow each other without overlap below the
//! high watermark, the shard's offset index finds each batch's first live
//! record with the same bytes, and the records add up to the shard's count.
//! Exit code 1 when anything fails, for CI and cron jobs.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use mqstore::format::{self, BatchHeader};
use mqstore::Store;

use crate::dump::for_each_batch;
use crate::{config, open_store, Args, CliResult, Failure};

/// Progress on stderr: redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    last: Option<Instant>,
}

impl Progress {
    fn advance(&mut self, shard: &str, bytes: u64) {
        self.done += bytes;
        if !self.enabled || self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let percent = if self.total == 0 {
            100.0
        } else {
            (self.done as f64 * 100.0 / self.total as f64).min(100.0)
        };
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        eprint!(
            "\rverify: {percent:5.1}% ({:.1} of {:.1} MiB) shard {shard:<24}",
            mib(self.done),
            mib(self.total)
        );
        let _ = std::io::stderr().flush();
    }

    /// Draws the final state (whatever the redraw interval) and ends the line.
    fn finish(&mut self) {
        if self.enabled {
            self.last = None;
            self.advance("(all)", 0);
            eprintln!();
        }
    }
}

#[derive(Default)]
struct Totals {
    shards: u64,
    batches: u64,
    records: u64,
    bytes: u64,
}

/// Checks one shard; every problem found is pushed to `problems`.
fn verify_shard(
    store: &Store,
    shard: &str,
    totals: &mut Totals,
    progress: &mut Progress,
    problems: &mut Vec<String>,
) -> CliResult<()> {
    let info = store.shard_info(shard)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut previous_next: Option<i64> = None;
    let mut live_records = 0u64;
    // Records of a damaged batch cannot be counted; nor can the total.
    let mut damaged = false;
    let mut problem = |what: String| problems.push(format!("shard '{shard}': {what}"));
    for_each_batch(store, shard, info.first_offset, |batch| {
        totals.batches += 1;
        totals.bytes += batch.len() as u64;
        progress.advance(shard, batch.len() as u64);
        let header = match BatchHeader::parse(&batch) {
            Ok(h) => h,
            Err(e) => {
                problem(format!("a batch header does not parse: {e}"));
                damaged = true;
                return Ok(true);
            }
        };
        let at = header.base_offset;
        if let Err(e) = format::verify_crc(&batch) {
            problem(format!("batch at offset {at}: {e}"));
            damaged = true;
            previous_next = Some(header.next_offset());
            return Ok(true);
        }
        if let Some(prev) = previous_next {
            if at < prev {
                problem(format!(
                    "batch at offset {at} overlaps the previous batch, which ends before {prev}"
                ));
            }
        }
        previous_next = Some(header.next_offset());
        if header.last_offset() >= info.next_offset {
            problem(format!(
                "batch at offset {at} ends at {}, at or past the high watermark {}",
                header.last_offset(),
                info.next_offset
            ));
        }
        let records = match format::decode_batch(&batch, false) {
            Ok(r) => r,
            Err(e) => {
                problem(format!(
                    "batch at offset {at}: its records do not decode: {e}"
                ));
                damaged = true;
                return Ok(true);
            }
        };
        if let Some(r) = records
            .iter()
            .find(|r| r.offset < at || r.offset > header.last_offset())
        {
            problem(format!(
                "batch at offset {at}: record offset {} lies outside {at}..={}",
                r.offset,
                header.last_offset()
            ));
        }
        let live: Vec<_> = records
            .iter()
            .filter(|r| r.offset >= info.first_offset)
            .collect();
        live_records += live.len() as u64;
        totals.records += live.len() as u64;
        // The index: a read at the batch's first live record must find
        // that record, with these bytes (an expired one is skipped by reads).
        if let Some(first) = live.iter().find(|r| !r.is_expired(now)) {
            match store.read(shard, first.offset, 1, 1) {
                Ok(read) => match read.records.first() {
                    Some(found) if found.offset == first.offset && found.value == first.value => {}
                    Some(found) => problem(format!(
                        "the offset index maps offset {} to a record at offset {} with other bytes",
                        first.offset, found.offset
                    )),
                    None => problem(format!(
                        "the offset index finds nothing at offset {}, stored in the batch at {at}",
                        first.offset
                    )),
                },
                Err(e) => problem(format!("reading offset {}: {e}", first.offset)),
            }
        }
        Ok(true)
    })?;
    if !damaged && live_records != info.records {
        problem(format!(
            "the shard counts {} records, its batches hold {live_records}",
            info.records
        ));
    }
    totals.shards += 1;
    Ok(())
}

pub fn run(raw: &[String]) -> CliResult<()> {
    let args = Args::parse(raw, &["progress", "quiet", "wait"], &["config"])?;
    args.exactly(&["DIR"])?;
    let store = match open_store(
        std::path::Path::new(&args.positional[0]),
        config(&args, |_| ())?,
        args.flag("wait"),
    ) {
        Ok(store) => store,
        Err(Failure::Failed(reason)) => {
            return Err(Failure::Failed(format!(
                "verify: FAILED: the store does not open: {reason}"
            )))
        }
        Err(other) => return Err(other),
    };
    let shards = store.list_shards()?;
    let mut total = 0;
    for shard in &shards {
        total += store.shard_info(shard)?.bytes;
    }
    let mut progress = Progress {
        enabled: !args.flag("quiet") && (args.flag("progress") || std::io::stderr().is_terminal()),
        total,
        done: 0,
        last: None,
    };
    let mut totals = Totals::default();
    let mut problems = Vec::new();
    for shard in &shards {
        if let Err(Failure::Failed(reason)) =
            verify_shard(&store, shard, &mut totals, &mut progress, &mut problems)
        {
            problems.push(format!("shard '{shard}': {reason}"));
        }
    }
    progress.finish();
    store.close()?;
    let summary = format!(
        "{} shard(s), {} batches, {} records, {:.1} MiB",
        totals.shards,
        totals.batches,
        totals.records,
        totals.bytes as f64 / (1 << 20) as f64
    );
    if problems.is_empty() {
        if !args.flag("quiet") {
            println!("verify: OK: {summary} checked");
        }
        return Ok(());
    }
    for p in &problems {
        println!("verify: {p}");
    }
    Err(Failure::Failed(format!(
        "verify: FAILED: {} problem(s) in {summary}",
        problems.len()
    )))
}
