//! Reading: batches fetched ahead in ranges (one round trip for many
//! batches, growing while a call keeps reading), and the listing at open.

use std::collections::VecDeque;

use bytes::Bytes;
use mysql::prelude::{FromValue, Queryable};
use mysql::{Row, Value};

use super::MysqlDb;
use crate::engine::database::{BatchMeta, BatchReader, Entry, Found, ShardMeta};
use crate::{Error, Result};

/// The first fetch of a call: a read often wants a batch or two.
const FIRST_ROWS: usize = 8;
const FIRST_BYTES: usize = 1 << 20;
/// Each further fetch doubles, up to these.
const MAX_ROWS: usize = 256;
const MAX_BYTES: usize = 16 << 20;

/// A call's reader of one shard's batches.
pub(super) struct Prefetch<'a> {
    db: &'a MysqlDb,
    shard: u64,
    lease: Option<super::conn::Lease>,
    ahead: VecDeque<(i64, Bytes)>,
    rows: usize,
    bytes: usize,
}

impl<'a> Prefetch<'a> {
    pub fn new(db: &'a MysqlDb, shard: u64) -> Self {
        Prefetch {
            db,
            shard,
            lease: None,
            ahead: VecDeque::new(),
            rows: FIRST_ROWS,
            bytes: FIRST_BYTES,
        }
    }

    /// The batch at `base` if fetched: batches before it are skipped.
    fn take(&mut self, base: i64) -> Option<Bytes> {
        while self.ahead.front().is_some_and(|(b, _)| *b < base) {
            self.ahead.pop_front();
        }
        match self.ahead.front() {
            Some((b, _)) if *b == base => self.ahead.pop_front().map(|(_, bytes)| bytes),
            _ => None,
        }
    }

    /// Fetches the batches from `base` on: at most `rows` of them, and no
    /// more than `bytes` of them but the first. The byte bound comes from
    /// the `len` column of the covering index, so the batches beyond it
    /// are not read.
    fn fetch(&mut self, base: i64) -> Result<()> {
        let sql = format!(
            "SELECT STRAIGHT_JOIN b.base_offset, b.bytes FROM (\
               SELECT base_offset FROM (\
                 SELECT base_offset, len, SUM(len) OVER (ORDER BY base_offset) AS upto FROM (\
                   SELECT base_offset, len FROM {t} FORCE INDEX (meta) \
                   WHERE shard_id = ? AND base_offset >= ? ORDER BY base_offset LIMIT ?\
                 ) first_rows\
               ) sized WHERE upto - len < ?\
             ) k JOIN {t} b ON b.shard_id = ? AND b.base_offset = k.base_offset \
             ORDER BY b.base_offset",
            t = self.db.tables.batches
        );
        let params = vec![
            Value::UInt(self.shard),
            Value::Int(base),
            Value::UInt(self.rows as u64),
            Value::UInt(self.bytes as u64),
            Value::UInt(self.shard),
        ];
        let rows = self
            .db
            .with_retry("reading batches", &mut self.lease, |conn| {
                conn.exec::<(i64, Vec<u8>), _, _>(&sql, params.clone())
            })?;
        self.db
            .count_fetch(rows.len(), rows.iter().map(|(_, b)| b.len()).sum());
        self.ahead.clear();
        self.ahead
            .extend(rows.into_iter().map(|(b, bytes)| (b, Bytes::from(bytes))));
        self.rows = (self.rows * 2).min(MAX_ROWS);
        self.bytes = (self.bytes * 2).min(MAX_BYTES);
        Ok(())
    }
}

impl BatchReader for Prefetch<'_> {
    fn batch(&mut self, entry: &Entry) -> Result<Bytes> {
        let bytes = match self.take(entry.base_offset) {
            Some(bytes) => bytes,
            None => {
                self.fetch(entry.base_offset)?;
                self.take(entry.base_offset).ok_or_else(|| {
                    Error::corruption(format!(
                        "MySQL table {}: no batch of shard id {} at base offset {}",
                        self.db.tables.batches, self.shard, entry.base_offset
                    ))
                })?
            }
        };
        if bytes.len() != entry.len as usize {
            return Err(Error::corruption(format!(
                "MySQL table {}: the batch of shard id {} at base offset {} has {} bytes, {} \
                 recorded",
                self.db.tables.batches,
                self.shard,
                entry.base_offset,
                bytes.len(),
                entry.len
            )));
        }
        Ok(bytes)
    }
}

/// A column of a row the engine wrote, or `Corruption` naming it.
fn column<T: FromValue>(row: &mut Row, i: usize, table: &str, name: &str) -> Result<T> {
    match row.take_opt::<T, _>(i) {
        Some(Ok(value)) => Ok(value),
        _ => Err(Error::corruption(format!(
            "MySQL table {table}: column {name} holds an unexpected value"
        ))),
    }
}

fn text(bytes: Vec<u8>, table: &str, name: &str) -> Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| Error::corruption(format!("MySQL table {table}: {name} is not UTF-8")))
}

/// Turns a row of the named table into what `load` lists.
type ParseRow = fn(&mut Row, &str) -> Result<Found>;

/// Lists everything the tables hold, in `Found`'s order, each table
/// streamed.
pub(super) fn load(db: &MysqlDb, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
    load_where(db, None, found)
}

/// What `load` lists of shard `shard` alone.
pub(super) fn load_shard(
    db: &MysqlDb,
    shard: u64,
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    load_where(db, Some(shard), found)
}

/// Every shard's rows, or (`Some`) one shard's.
fn load_where(
    db: &MysqlDb,
    shard: Option<u64>,
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let t = &db.tables;
    let mut lease = db.lease()?;
    let only = shard.map_or(String::new(), |id| format!("WHERE shard_id = {id}"));
    let queries: [(String, ParseRow); 3] = [
        (
            format!(
                "SELECT shard_id, name, options, low_watermark, next_offset FROM {} {only} \
                 ORDER BY shard_id",
                t.shards
            ),
            shard_row,
        ),
        (
            format!(
                "SELECT shard_id, base_offset, last_offset, max_timestamp, records, len \
                 FROM {} FORCE INDEX (meta) {only} ORDER BY shard_id, base_offset",
                t.batches
            ),
            batch_row,
        ),
        (
            format!(
                "SELECT shard_id, group_name, committed_offset FROM {} {only} \
                 ORDER BY shard_id, group_name",
                t.groups
            ),
            group_row,
        ),
    ];
    let tables = [&t.shards, &t.batches, &t.groups];
    for ((sql, parse), table) in queries.iter().zip(tables) {
        let mut outcome = Ok(());
        let listed = lease.run(|conn| {
            for row in conn.query_iter(sql)? {
                let mut row = row?;
                outcome = parse(&mut row, table).and_then(&mut *found);
                if outcome.is_err() {
                    break;
                }
            }
            Ok(())
        });
        listed.map_err(|e| db.server.error(&format!("listing table {table}"), e))?;
        outcome?;
    }
    Ok(())
}

fn shard_row(row: &mut Row, table: &str) -> Result<Found> {
    let id = column::<u64>(row, 0, table, "shard_id")?;
    let name = text(column(row, 1, table, "name")?, table, "name")?;
    let options = text(column(row, 2, table, "options")?, table, "options")?;
    Ok(Found::Shard(
        id,
        ShardMeta {
            name,
            options,
            low_watermark: column(row, 3, table, "low_watermark")?,
            next_offset: column(row, 4, table, "next_offset")?,
        },
    ))
}

fn batch_row(row: &mut Row, table: &str) -> Result<Found> {
    Ok(Found::Batch(
        column(row, 0, table, "shard_id")?,
        column(row, 1, table, "base_offset")?,
        BatchMeta {
            last_offset: column(row, 2, table, "last_offset")?,
            max_timestamp: column(row, 3, table, "max_timestamp")?,
            records: column(row, 4, table, "records")?,
            len: column(row, 5, table, "len")?,
        },
    ))
}

fn group_row(row: &mut Row, table: &str) -> Result<Found> {
    let id = column::<u64>(row, 0, table, "shard_id")?;
    let group = text(column(row, 1, table, "group_name")?, table, "group_name")?;
    Ok(Found::Group(
        id,
        group,
        column(row, 2, table, "committed_offset")?,
    ))
}
