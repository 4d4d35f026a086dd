//! Group commit: concurrent `commit` calls share one transaction. The first
//! caller to find no transaction in progress leads: it takes every waiting
//! change list, applies them all in one transaction (consecutive batch rows
//! in multi-row statements) and commits once, then hands each caller its
//! outcome. Callers arriving meanwhile wait and the next round takes them
//! together, so the more writers, the more lists per round trip and per
//! commit.

use std::collections::{HashMap, HashSet};

use mysql::prelude::Queryable;
use mysql::Value;
use parking_lot::{Condvar, Mutex};

use super::schema::{Tables, MAX_GROUP_NAME};
use crate::engine::database::Change;
use crate::{Error, Result};

/// Batch rows per `REPLACE` statement at most (7 parameters each).
const MAX_ROWS: usize = 512;
/// Bytes of batches per statement at most (the server's packet limit may
/// lower it), so a large round does not hold one huge packet in memory.
const MAX_STATEMENT_BYTES: usize = 32 << 20;
/// What a statement carries beyond its batches' bytes, bounded generously
/// (per row: 6 numbers and the parameter headers; the statement's text).
pub(super) const PACKET_SLACK: usize = 64 << 10;

#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<QueueState>,
    done: Condvar,
}

#[derive(Default)]
struct QueueState {
    waiting: Vec<(u64, Vec<Change>)>,
    outcomes: HashMap<u64, Result<()>>,
    leading: bool,
    next_id: u64,
}

/// Gives the followers of a round their outcomes, also when the leader
/// panics (then as `Internal`), so none waits forever.
struct Round<'a> {
    queue: &'a Queue,
    ids: Vec<u64>,
    outcomes: Option<Vec<Result<()>>>,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        let outcomes = self.outcomes.take();
        let mut state = self.queue.state.lock();
        state.leading = false;
        match outcomes {
            Some(outcomes) => state.outcomes.extend(self.ids.drain(..).zip(outcomes)),
            None => {
                let failed = || Err(Error::Internal("the MySQL commit leader panicked".into()));
                state
                    .outcomes
                    .extend(self.ids.drain(..).map(|id| (id, failed())));
            }
        }
        self.queue.done.notify_all();
    }
}

impl Queue {
    /// Commits `changes` in a round of `apply` (which gets every list of
    /// the round and returns one outcome per list).
    pub fn commit(
        &self,
        changes: Vec<Change>,
        apply: impl Fn(&[Vec<Change>]) -> Vec<Result<()>>,
    ) -> Result<()> {
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.push((id, changes));
        loop {
            if let Some(outcome) = state.outcomes.remove(&id) {
                return outcome;
            }
            if state.leading {
                self.done.wait(&mut state);
                continue;
            }
            state.leading = true;
            let (ids, lists): (Vec<u64>, Vec<Vec<Change>>) =
                std::mem::take(&mut state.waiting).into_iter().unzip();
            drop(state);
            let mut round = Round {
                queue: self,
                ids,
                outcomes: None,
            };
            round.outcomes = Some(apply(&lists));
            drop(round);
            state = self.state.lock();
        }
    }
}

/// Whether `changes` are batch rows only, with distinct keys, that one
/// `REPLACE` statement carries: such a round needs no transaction (one
/// statement is atomic on its own), so it costs one round trip, not three.
pub(super) fn one_statement<'a>(
    changes: impl Iterator<Item = &'a Change>,
    max_packet: usize,
) -> bool {
    let limit = max_packet
        .saturating_sub(PACKET_SLACK)
        .min(MAX_STATEMENT_BYTES);
    let (mut rows, mut size) = (0usize, 0usize);
    let mut keys = HashSet::new();
    for change in changes {
        let Change::PutBatch {
            shard,
            base_offset,
            bytes,
            ..
        } = change
        else {
            return false;
        };
        rows += 1;
        size += bytes.len();
        if !keys.insert((*shard, *base_offset)) {
            return false;
        }
    }
    rows > 0 && rows <= MAX_ROWS && size <= limit
}

/// Refuses, before anything is sent, a list the server would reject for
/// its size.
pub(super) fn precheck(changes: &[Change], max_packet: usize, address: &str) -> Result<()> {
    for change in changes {
        match change {
            Change::PutBatch { bytes, .. } if bytes.len() + PACKET_SLACK > max_packet => {
                return Err(Error::InvalidConfig(format!(
                    "MySQL server {address}: a batch of {} bytes does not fit its \
                     max_allowed_packet ({max_packet} bytes): raise max_allowed_packet to at \
                     least {}",
                    bytes.len(),
                    bytes.len() + PACKET_SLACK
                )));
            }
            Change::SaveGroup { group, .. } if group.len() > MAX_GROUP_NAME => {
                return Err(Error::InvalidArgument(format!(
                    "consumer group name of {} bytes: the mysql engine keeps names of up to \
                     {MAX_GROUP_NAME} bytes",
                    group.len()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What one transaction sent, for stats.
#[derive(Default)]
pub(super) struct Sent {
    pub statements: u64,
    pub batches: u64,
    pub bytes: u64,
}

/// Writes change lists inside an open transaction. Batch rows wait in
/// `pending` and go out together; a change touching a waiting row's shard
/// batches (a delete, a shard removal) sends them first, every other change
/// commutes with them, so the result is that of applying the lists in
/// order.
pub(super) struct Writer<'a, C: Queryable> {
    conn: &'a mut C,
    tables: &'a Tables,
    statement_bytes: usize,
    pending: Vec<&'a Change>,
    pending_bytes: usize,
    pending_keys: HashSet<(u64, i64)>,
    pending_shards: HashSet<u64>,
    pub sent: Sent,
}

impl<'a, C: Queryable> Writer<'a, C> {
    pub fn new(conn: &'a mut C, tables: &'a Tables, max_packet: usize) -> Self {
        Writer {
            conn,
            tables,
            statement_bytes: max_packet
                .saturating_sub(PACKET_SLACK)
                .min(MAX_STATEMENT_BYTES),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_keys: HashSet::new(),
            pending_shards: HashSet::new(),
            sent: Sent::default(),
        }
    }

    pub fn apply(&mut self, change: &'a Change) -> mysql::Result<()> {
        match change {
            Change::PutBatch {
                shard,
                base_offset,
                bytes,
                ..
            } => {
                let full = self.pending.len() >= MAX_ROWS
                    || self.pending_bytes + bytes.len() > self.statement_bytes;
                if full || self.pending_keys.contains(&(*shard, *base_offset)) {
                    self.flush()?;
                }
                self.pending.push(change);
                self.pending_bytes += bytes.len();
                self.pending_keys.insert((*shard, *base_offset));
                self.pending_shards.insert(*shard);
                Ok(())
            }
            Change::DeleteBatches { shard, .. } | Change::RemoveShard { shard } => {
                if self.pending_shards.contains(shard) {
                    self.flush()?;
                }
                self.other(change)
            }
            Change::PutShard { .. } | Change::SaveGroup { .. } => self.other(change),
        }
    }

    /// Sends the waiting batch rows as one `REPLACE` (a rewrite replaces
    /// the batch at its base offset).
    pub fn flush(&mut self) -> mysql::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = self.pending.len();
        let mut sql = format!(
            "REPLACE INTO {} (shard_id, base_offset, last_offset, max_timestamp, records, len, \
             bytes) VALUES ",
            self.tables.batches
        );
        let mut params = Vec::with_capacity(rows * 7);
        for (i, change) in self.pending.drain(..).enumerate() {
            if let Change::PutBatch {
                shard,
                base_offset,
                bytes,
                meta,
                ..
            } = change
            {
                sql.push_str(if i == 0 {
                    "(?,?,?,?,?,?,?)"
                } else {
                    ",(?,?,?,?,?,?,?)"
                });
                params.extend([
                    Value::UInt(*shard),
                    Value::Int(*base_offset),
                    Value::Int(meta.last_offset),
                    Value::Int(meta.max_timestamp),
                    Value::UInt(meta.records.into()),
                    Value::UInt(bytes.len() as u64),
                    Value::Bytes(bytes.to_vec()),
                ]);
            }
        }
        self.sent.batches += rows as u64;
        self.sent.bytes += self.pending_bytes as u64;
        self.pending_bytes = 0;
        self.pending_keys.clear();
        self.pending_shards.clear();
        self.exec(&sql, params)
    }

    fn exec(&mut self, sql: &str, params: Vec<Value>) -> mysql::Result<()> {
        self.sent.statements += 1;
        self.conn.exec_drop(sql, params)
    }

    fn other(&mut self, change: &Change) -> mysql::Result<()> {
        let t = self.tables;
        match change {
            Change::DeleteBatches {
                shard,
                bases,
                end,
                front,
            } => {
                // The bases are consecutive: no other batch lies in
                // [first, end), so one range covers them.
                let first = match (front, bases.first()) {
                    (true, _) => i64::MIN,
                    (false, Some(first)) => *first,
                    (false, None) => return Ok(()),
                };
                let sql = format!(
                    "DELETE FROM {} WHERE shard_id = ? AND base_offset >= ? AND base_offset < ?",
                    t.batches
                );
                self.exec(
                    &sql,
                    vec![Value::UInt(*shard), Value::Int(first), Value::Int(*end)],
                )
            }
            Change::PutShard { shard, meta } => {
                let sql = format!(
                    "REPLACE INTO {} (shard_id, name, options, low_watermark, next_offset) \
                     VALUES (?,?,?,?,?)",
                    t.shards
                );
                self.exec(
                    &sql,
                    vec![
                        Value::UInt(*shard),
                        Value::Bytes(meta.name.as_bytes().to_vec()),
                        Value::Bytes(meta.options.as_bytes().to_vec()),
                        Value::Int(meta.low_watermark),
                        Value::Int(meta.next_offset),
                    ],
                )
            }
            Change::SaveGroup {
                shard,
                group,
                offset: Some(offset),
            } => {
                let sql = format!(
                    "REPLACE INTO {} (shard_id, group_name, committed_offset) VALUES (?,?,?)",
                    t.groups
                );
                let group = Value::Bytes(group.as_bytes().to_vec());
                self.exec(&sql, vec![Value::UInt(*shard), group, Value::Int(*offset)])
            }
            Change::SaveGroup {
                shard,
                group,
                offset: None,
            } => {
                let sql = format!(
                    "DELETE FROM {} WHERE shard_id = ? AND group_name = ?",
                    t.groups
                );
                let group = Value::Bytes(group.as_bytes().to_vec());
                self.exec(&sql, vec![Value::UInt(*shard), group])
            }
            Change::RemoveShard { shard } => {
                for table in [&t.batches, &t.groups, &t.shards] {
                    let sql = format!("DELETE FROM {table} WHERE shard_id = ?");
                    self.exec(&sql, vec![Value::UInt(*shard)])?;
                }
                Ok(())
            }
            Change::PutBatch { .. } => Ok(()),
        }
    }
}
