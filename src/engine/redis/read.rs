//! Reading: the batch reader with its prefetch, and what `load` lists.

use std::collections::VecDeque;

use bytes::Bytes;
use redis::Value;

use super::conn::{self, Pool, Server};
use super::script::Keys;
use crate::engine::database::{BatchMeta, BatchReader, Entry, Found, ShardMeta, BATCH_META_LEN};
use crate::{Error, Result};

/// A fetch brings about this many bytes of batches (by the size of the
/// batch asked for), so that a sequential read pays one round trip per
/// few MiB rather than one per batch.
const PREFETCH_BYTES: usize = 4 << 20;
const PREFETCH_MAX: usize = 256;
/// `load` asks for this many index members of a shard at once, and for
/// this many shards in one pipeline.
const PAGE: usize = 4096;
const SHARDS_PER_PIPELINE: usize = 64;

/// What reads need of the database.
pub struct Source<'a> {
    pub server: &'a Server,
    pub pool: &'a Pool,
    pub keys: &'a Keys,
}

pub struct Reader<'a> {
    pub source: Source<'a>,
    pub shard: u64,
    /// Batches fetched ahead, by ascending base offset.
    pub ahead: VecDeque<(i64, Bytes)>,
    pub round_trips: u64,
}

impl BatchReader for Reader<'_> {
    fn batch(&mut self, entry: &Entry) -> Result<Bytes> {
        let base = entry.base_offset;
        if let Some(bytes) = self.take(base) {
            return Ok(bytes);
        }
        let count = (PREFETCH_BYTES / (entry.len as usize).max(1)).clamp(1, PREFETCH_MAX);
        self.ahead = self.fetch(base, count)?.into();
        self.take(base).ok_or_else(|| {
            Error::corruption(format!(
                "batch at offset {base} of shard id {} is missing on Redis server {}",
                self.shard, self.source.server.address
            ))
        })
    }
}

impl Reader<'_> {
    /// The prefetched batch at `base`, dropping those before it (reads
    /// go forward).
    fn take(&mut self, base: i64) -> Option<Bytes> {
        while let Some((first, _)) = self.ahead.front() {
            if *first > base {
                return None;
            }
            let (first, bytes) = self.ahead.pop_front()?;
            if first == base {
                return Some(bytes);
            }
        }
        None
    }

    /// Up to `count` batches from `base` on, from the stream and from the
    /// rewritten set, in one round trip, merged by base offset.
    fn fetch(&mut self, base: i64, count: usize) -> Result<Vec<(i64, Bytes)>> {
        let keys = self.source.keys;
        let mut pipe = conn::pipeline();
        pipe.cmd("XRANGE")
            .arg(keys.log(self.shard))
            .arg(format!("{base}-1"))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        pipe.cmd("ZRANGEBYSCORE")
            .arg(keys.rewritten(self.shard))
            .arg(base)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(count);
        let source = &self.source;
        let replies = source.pool.with(source.server, "reading batches", |con| {
            conn::send(con, &pipe)
        })?;
        self.round_trips += 1;
        let [logged, rewritten]: [Value; 2] = replies
            .try_into()
            .map_err(|_| self.bad("two replies expected"))?;
        let mut out = self.stream_entries(logged)?;
        out.extend(self.scored_members(rewritten)?);
        out.sort_by_key(|(base, _)| *base);
        Ok(out)
    }

    fn stream_entries(&self, reply: Value) -> Result<Vec<(i64, Bytes)>> {
        let reply = self.ok(reply)?;
        let Value::Array(entries) = reply else {
            return Err(self.bad("XRANGE did not answer an array"));
        };
        entries
            .into_iter()
            .map(|entry| {
                let parsed = stream_entry(entry);
                parsed.ok_or_else(|| self.bad("a stream entry is not (<offset>-1, b, batch)"))
            })
            .collect()
    }

    fn scored_members(&self, reply: Value) -> Result<Vec<(i64, Bytes)>> {
        let Value::Array(items) = self.ok(reply)? else {
            return Err(self.bad("ZRANGEBYSCORE did not answer an array"));
        };
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(member), Some(score)) = (items.next(), items.next()) {
            match (member, score_of(&score)) {
                (Value::BulkString(bytes), Some(base)) => out.push((base, Bytes::from(bytes))),
                _ => return Err(self.bad("a rewritten batch is not (batch, offset)")),
            }
        }
        Ok(out)
    }

    fn ok(&self, reply: Value) -> Result<Value> {
        match reply {
            Value::ServerError(e) => Err(self.source.server.reply_error("reading batches", &e)),
            other => Ok(other),
        }
    }

    fn bad(&self, what: &str) -> Error {
        Error::corruption(format!(
            "batches of shard id {} on Redis server {}: {what}",
            self.shard, self.source.server.address
        ))
    }
}

/// `[id, [b, batch]]` → (base offset, batch).
fn stream_entry(entry: Value) -> Option<(i64, Bytes)> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let [id, fields]: [Value; 2] = parts.try_into().ok()?;
    let Value::BulkString(id) = id else {
        return None;
    };
    let (base, seq) = std::str::from_utf8(&id).ok()?.split_once('-')?;
    if seq != "1" {
        return None;
    }
    let base: i64 = base.parse().ok()?;
    let Value::Array(fields) = fields else {
        return None;
    };
    let [name, value]: [Value; 2] = fields.try_into().ok()?;
    match (name, value) {
        (Value::BulkString(name), Value::BulkString(value)) if name == b"b" => {
            Some((base, Bytes::from(value)))
        }
        _ => None,
    }
}

/// A score (a base offset) as the server prints it.
fn score_of(score: &Value) -> Option<i64> {
    let value: f64 = match score {
        Value::BulkString(text) => std::str::from_utf8(text).ok()?.parse().ok()?,
        Value::Double(value) => *value,
        _ => return None,
    };
    (value.fract() == 0.0 && (0.0..=9.1e15).contains(&value)).then_some(value as i64)
}

/// Lists what the store holds under its prefix, in `Found`'s order.
pub fn load(source: &Source<'_>, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
    let mut shards = list_shards(source)?;
    shards.sort_by_key(|(id, _)| *id);
    let ids: Vec<u64> = shards.iter().map(|(id, _)| *id).collect();
    for (id, meta) in shards {
        found(Found::Shard(id, meta))?;
    }
    for chunk in ids.chunks(SHARDS_PER_PIPELINE) {
        load_batches(source, chunk, found)?;
    }
    for chunk in ids.chunks(SHARDS_PER_PIPELINE) {
        load_groups(source, chunk, found)?;
    }
    Ok(())
}

/// What `load` lists of shard `shard` alone (nothing when it is gone).
pub fn load_shard(
    source: &Source<'_>,
    shard: u64,
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let mut pipe = conn::pipeline();
    pipe.cmd("HGET").arg(source.keys.shards()).arg(shard);
    match request(source, "reading a shard's catalogue entry", &pipe)?.pop() {
        Some(Value::BulkString(value)) => {
            found(Found::Shard(shard, ShardMeta::decode(shard, &value)?))?;
            load_batches(source, &[shard], found)
        }
        Some(Value::Nil) | None => Ok(()),
        Some(_) => Err(corrupt(
            source,
            format!("shard {shard}'s entry is not a string"),
        )),
    }
}

fn corrupt(source: &Source<'_>, what: String) -> Error {
    Error::corruption(format!(
        "keys '{}*' on Redis server {}: {what}",
        source.keys.prefix, source.server.address
    ))
}

/// Sends `pipe` on a pooled connection; every reply must be a success.
pub fn request(source: &Source<'_>, doing: &str, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
    let replies = source
        .pool
        .with(source.server, doing, |con| conn::send(con, pipe))?;
    replies
        .into_iter()
        .map(|reply| match reply {
            Value::ServerError(e) => Err(source.server.reply_error(doing, &e)),
            other => Ok(other),
        })
        .collect()
}

fn list_shards(source: &Source<'_>) -> Result<Vec<(u64, ShardMeta)>> {
    let mut out = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let mut pipe = conn::pipeline();
        pipe.cmd("HSCAN")
            .arg(source.keys.shards())
            .arg(&cursor[..])
            .arg("COUNT")
            .arg(1000);
        let reply = request(source, "listing shards", &pipe)?.pop();
        let Some(Value::Array(parts)) = reply else {
            return Err(corrupt(source, "HSCAN did not answer an array".into()));
        };
        let Ok([Value::BulkString(next), Value::Array(pairs)]) = <[Value; 2]>::try_from(parts)
        else {
            return Err(corrupt(
                source,
                "HSCAN did not answer (cursor, pairs)".into(),
            ));
        };
        for (field, value) in pairs_of(pairs) {
            let id = std::str::from_utf8(&field)
                .ok()
                .and_then(|s| s.parse().ok());
            let id = id.ok_or_else(|| corrupt(source, "a shard id is not a number".into()))?;
            out.push((id, ShardMeta::decode(id, &value)?));
        }
        if next == b"0" {
            return Ok(out);
        }
        cursor = next;
    }
}

/// `[field, value, field, value, …]` of binary strings.
fn pairs_of(items: Vec<Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(Value::BulkString(a)), Some(Value::BulkString(b))) =
        (items.next(), items.next())
    {
        out.push((a, b));
    }
    out
}

fn index_page(source: &Source<'_>, pipe: &mut redis::Pipeline, shard: u64, start: usize) {
    pipe.cmd("ZRANGE")
        .arg(source.keys.index(shard))
        .arg(start)
        .arg(start + PAGE - 1);
}

fn load_batches(
    source: &Source<'_>,
    shards: &[u64],
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let mut pipe = conn::pipeline();
    for &shard in shards {
        index_page(source, &mut pipe, shard, 0);
    }
    let pages = request(source, "listing batches", &pipe)?;
    for (&shard, mut page) in shards.iter().zip(pages) {
        let mut start = 0;
        loop {
            let n = emit_batches(source, shard, page, found)?;
            if n < PAGE {
                break;
            }
            start += PAGE;
            let mut pipe = conn::pipeline();
            index_page(source, &mut pipe, shard, start);
            page = request(source, "listing batches", &pipe)?
                .pop()
                .unwrap_or(Value::Nil);
        }
    }
    Ok(())
}

fn emit_batches(
    source: &Source<'_>,
    shard: u64,
    page: Value,
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<usize> {
    let Value::Array(members) = page else {
        return Err(corrupt(
            source,
            format!("the index of shard id {shard} is not a list"),
        ));
    };
    let n = members.len();
    for member in members {
        let (base, meta) = match &member {
            Value::BulkString(bytes) => index_entry(bytes),
            _ => None,
        }
        .ok_or_else(|| corrupt(source, format!("an index member of shard id {shard}")))?;
        found(Found::Batch(shard, base, meta))?;
    }
    Ok(n)
}

fn index_entry(bytes: &[u8]) -> Option<(i64, BatchMeta)> {
    if bytes.len() != 8 + BATCH_META_LEN {
        return None;
    }
    let base = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    Some((base, BatchMeta::decode(&bytes[8..])?))
}

fn load_groups(
    source: &Source<'_>,
    shards: &[u64],
    found: &mut dyn FnMut(Found) -> Result<()>,
) -> Result<()> {
    let mut pipe = conn::pipeline();
    for &shard in shards {
        pipe.cmd("HGETALL").arg(source.keys.groups(shard));
    }
    let replies = request(source, "listing group offsets", &pipe)?;
    for (&shard, reply) in shards.iter().zip(replies) {
        let pairs = match reply {
            Value::Array(items) => pairs_of(items),
            Value::Map(items) => items
                .into_iter()
                .filter_map(|pair| match pair {
                    (Value::BulkString(a), Value::BulkString(b)) => Some((a, b)),
                    _ => None,
                })
                .collect(),
            _ => {
                return Err(corrupt(
                    source,
                    format!("group offsets of shard id {shard}"),
                ))
            }
        };
        for (group, offset) in pairs {
            let bad = || corrupt(source, format!("a group offset of shard id {shard}"));
            let group = String::from_utf8(group).map_err(|_| bad())?;
            let offset = std::str::from_utf8(&offset)
                .ok()
                .and_then(|s| s.parse().ok());
            found(Found::Group(shard, group, offset.ok_or_else(bad)?))?;
        }
    }
    Ok(())
}
