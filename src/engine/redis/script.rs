//! The key layout and the commit script.
//!
//! A commit is one call of a Lua script: Redis runs a script alone (no
//! other command interleaves) and, once it wrote, to its end, so the
//! script is the unit of atomicity. A `MULTI`/`EXEC` block would not do:
//! it cannot choose between the stream and the `rw` set (below) by the
//! outcome of the `XADD`.

use redis::Cmd;

use super::super::database::{Change, BATCH_META_LEN};
use crate::{Error, Result};

/// The format of the keys under the prefix; a server holding a newer one
/// is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Offsets become stream IDs (unsigned) and sorted-set scores (doubles,
/// exact up to 2^53).
pub const MAX_OFFSET: i64 = 1 << 53;

/// The keys of one store (`prefix`) on the server.
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    /// `<prefix>version`: `SCHEMA_VERSION` in decimal.
    pub fn version(&self) -> String {
        format!("{}version", self.prefix)
    }

    /// `<prefix>shards`: a hash, shard id → `ShardMeta::encode`.
    pub fn shards(&self) -> String {
        format!("{}shards", self.prefix)
    }

    /// `<prefix>s:<id>:log`: a stream, entry `<base offset>-1`, field `b`
    /// → the batch.
    pub fn log(&self, shard: u64) -> String {
        format!("{}s:{shard}:log", self.prefix)
    }

    /// `<prefix>s:<id>:rw`: a sorted set, score base offset, member the
    /// batch: the batches a stream cannot take, because their ID is not
    /// above every ID the stream ever had (a batch a delete rewrote in
    /// place, a batch appended after a truncation).
    pub fn rewritten(&self, shard: u64) -> String {
        format!("{}s:{shard}:rw", self.prefix)
    }

    /// `<prefix>s:<id>:idx`: a sorted set, score base offset, member the
    /// base offset (8 bytes, big-endian) ‖ `BatchMeta::encode`.
    pub fn index(&self, shard: u64) -> String {
        format!("{}s:{shard}:idx", self.prefix)
    }

    /// `<prefix>s:<id>:groups`: a hash, group → offset in decimal.
    pub fn groups(&self, shard: u64) -> String {
        format!("{}s:{shard}:groups", self.prefix)
    }
}

/// ARGV[1] is the key prefix, then operations: an opcode and its
/// arguments (decimal numbers as strings: a double would round offsets).
/// `B shard base bytes meta`: put a batch; `D shard front end n base…`:
/// delete batches (`n` bases follow, none when `front`); `S shard meta`;
/// `G shard group offset` (empty: forget); `R shard`.
///
/// Everything that can fail is an error the script catches (the `XADD`
/// of an ID the stream is past) or a misuse of our own keys, so a script
/// never stops half way on a healthy server.
pub const COMMIT: &str = r#"
local p = ARGV[1]
local function key(shard, what) return p .. 's:' .. shard .. ':' .. what end
local function drop(shard, lo, hi)
  redis.call('ZREMRANGEBYSCORE', key(shard, 'rw'), lo, hi)
  redis.call('ZREMRANGEBYSCORE', key(shard, 'idx'), lo, hi)
end
local function xdel(log, ids)
  for j = 1, #ids, 512 do
    redis.call('XDEL', log, unpack(ids, j, math.min(j + 511, #ids)))
  end
end
local i = 2
while i <= #ARGV do
  local op, shard = ARGV[i], ARGV[i + 1]
  if op == 'B' then
    local base, bytes = ARGV[i + 2], ARGV[i + 3]
    local log, id = key(shard, 'log'), base .. '-1'
    -- An ID above every one the stream ever had (an append) is new
    -- everywhere: rw and idx only hold batches at or below that top.
    local added = redis.pcall('XADD', log, id, 'b', bytes)
    if type(added) == 'table' and added.err then
      drop(shard, base, base)
      redis.call('XDEL', log, id)
      redis.call('ZADD', key(shard, 'rw'), base, bytes)
    end
    redis.call('ZADD', key(shard, 'idx'), base, ARGV[i + 4])
    i = i + 5
  elseif op == 'D' then
    local front, stop, n = ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    if front == '1' then
      redis.call('XTRIM', key(shard, 'log'), 'MINID', stop .. '-0')
      drop(shard, '-inf', '(' .. stop)
    elseif n > 0 then
      local ids = {}
      for j = 1, n do ids[j] = ARGV[i + 4 + j] .. '-1' end
      xdel(key(shard, 'log'), ids)
      drop(shard, ARGV[i + 5], '(' .. stop)
    end
    i = i + 5 + n
  elseif op == 'S' then
    redis.call('HSET', p .. 'shards', shard, ARGV[i + 2])
    i = i + 3
  elseif op == 'G' then
    if ARGV[i + 3] == '' then
      redis.call('HDEL', key(shard, 'groups'), ARGV[i + 2])
    else
      redis.call('HSET', key(shard, 'groups'), ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 4
  elseif op == 'R' then
    redis.call('DEL', key(shard, 'log'), key(shard, 'rw'), key(shard, 'idx'),
      key(shard, 'groups'))
    redis.call('HDEL', p .. 'shards', shard)
    i = i + 2
  else
    return redis.error_reply('mqstore commit: unknown operation ' .. tostring(op))
  end
end
return i
"#;

/// Refuses an offset Redis cannot hold exactly.
pub fn check_offset(shard: u64, offset: i64) -> Result<i64> {
    if (0..=MAX_OFFSET).contains(&offset) {
        return Ok(offset);
    }
    Err(Error::InvalidArgument(format!(
        "offset {offset} of shard id {shard}: the redis engine stores offsets from 0 to 2^53"
    )))
}

/// The index member of a batch: its base offset, then its metadata.
pub fn index_member(base: i64, meta: &super::super::database::BatchMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + BATCH_META_LEN);
    out.extend_from_slice(&base.to_be_bytes());
    out.extend_from_slice(&meta.encode());
    out
}

/// The `EVALSHA` of the commit script applying `changes`.
pub fn commit_cmd(sha: &str, prefix: &str, changes: &[Change]) -> Result<Cmd> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(0).arg(prefix);
    for change in changes {
        encode(&mut cmd, change)?;
    }
    Ok(cmd)
}

fn encode(cmd: &mut Cmd, change: &Change) -> Result<()> {
    match change {
        Change::PutBatch {
            shard,
            base_offset,
            bytes,
            meta,
            ..
        } => {
            let base = check_offset(*shard, *base_offset)?;
            check_offset(*shard, meta.last_offset)?;
            cmd.arg("B").arg(shard).arg(base).arg(&bytes[..]);
            cmd.arg(index_member(base, meta));
        }
        Change::DeleteBatches {
            shard,
            bases,
            end,
            front,
        } => {
            let end = check_offset(*shard, *end)?;
            let listed: &[i64] = if *front { &[] } else { bases };
            cmd.arg("D").arg(shard).arg(if *front { "1" } else { "0" });
            cmd.arg(end).arg(listed.len());
            for base in listed {
                cmd.arg(check_offset(*shard, *base)?);
            }
        }
        Change::PutShard { shard, meta } => {
            cmd.arg("S").arg(shard).arg(meta.encode());
        }
        Change::SaveGroup {
            shard,
            group,
            offset,
        } => {
            let offset = offset.map_or(String::new(), |o| o.to_string());
            cmd.arg("G").arg(shard).arg(group.as_bytes()).arg(offset);
        }
        Change::RemoveShard { shard } => {
            cmd.arg("R").arg(shard);
        }
    }
    Ok(())
}
