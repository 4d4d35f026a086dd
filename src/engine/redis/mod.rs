//! The Redis engine (`engine = "redis"`): shards kept on a Redis server
//! (`[redis]` url, pool_size, timeouts, key_prefix), through the shared
//! database layer (`engine::database`): this backend applies its atomic
//! writes, fetches batches and lists what it holds at open.
//!
//! Keys, all under `key_prefix` (several stores may share a server), are
//! listed in `script::Keys`: a schema version; a hash of shard catalogue
//! entries; per shard a stream holding one entry per batch (ID
//! `<base offset>-1`, field `b` = the batch bytes), a sorted set of the
//! batches a stream cannot take (rewritten in place by a delete, or
//! appended after a truncation below an ID the stream already had), a
//! sorted set of `BatchMeta` by base offset (so that opening reads no
//! batch) and a hash of group offsets. Each commit is one run of a Lua
//! script (`script::COMMIT`), atomic on the server; concurrent commits are
//! sent as one pipeline (`commit`). Reads fetch the batch asked for and
//! those after it with `XRANGE … COUNT` (`read`); retention and
//! `delete_records_before` trim the stream with `XTRIM MINID`.
//!
//! Durability. A commit returns once the server answered, that is once the
//! write is applied on the server; what a crash can take back depends on
//! the server's persistence, which the engine checks (`CONFIG GET`) when a
//! shard is created or opened:
//!
//! | mode | server must have | acknowledged when | lost by |
//! |---|---|---|---|
//! | `fsync` | `appendonly yes`, `appendfsync always` | the server wrote and fsynced the append-only file (one fsync per event-loop pass, shared by a pipeline's commits) | nothing acknowledged |
//! | `os` | `appendonly yes`, `appendfsync everysec` (or `always`) | the server wrote the append-only file (not synced) | a power loss or kernel crash of the server's machine: about the last second or two of writes (more if its disk stalls, when Redis postpones the write itself); a kill -9 of Redis loses nothing acknowledged unless such a postponed write was pending |
//! | `none` | anything | the write is in the server's memory | a restart of Redis without an append-only file: everything since its last RDB snapshot, or all of it |
//!
//! Shard creation and deletion, deletes and group commits use the shard's
//! mode. Nothing is replicated by the engine: with replicas, a failover may
//! lose what the primary acknowledged (the engine does not send `WAIT`).
//! A commit that fails on a broken connection or a timeout may or may not
//! have been applied; its batches are not acknowledged, and the shard
//! reloads its state from the server before its next use
//! (`database::DbShard`): a batch stored that way stays, and the next
//! append follows it. Pipelined commits (`append_nowait`) are sent as one
//! pipeline when the producer waits (`commit`); one that fails fails those
//! queued behind it, so no later batch of a shard is ever applied after
//! an earlier one that failed.

mod commit;
mod conn;
mod read;
mod script;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ::redis::{Connection, Value};

use self::commit::Committer;
use self::conn::{Pool, Server};
use self::read::{Reader, Source};
use self::script::Keys;
use super::database::{server, BatchReader, Change, Database, Found};
use crate::config::{Config, Durability, EngineKind, ServerConfig};
use crate::engine::registry::{Capabilities, TransferPath};
use crate::engine::Engine;
use crate::{Error, Result};

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    durability: &[Durability::None, Durability::Os, Durability::Fsync],
    default_durability: Durability::Fsync,
    durability_limit: "",
    persistent: true,
    native_key_index: false,
    // `append_nowait` queues the commit; the window is sent as one
    // pipeline when the producer waits for it (`commit`).
    pipelined: true,
    transfer: TransferPath::Memory,
};

/// The URL, when `[redis]` names none.
pub const URL_ENV: &str = "MQS_REDIS_URL";

/// The engine of the store in `dir`: its key prefix is the configured one,
/// else derived from the store's id (`database::server`).
pub(crate) fn engine(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    Ok(server::engine(
        dir,
        &config.redis,
        URL_ENV,
        ':',
        config.read_only,
        RedisDb::open,
    ))
}

pub(crate) struct RedisDb {
    server: Server,
    keys: Keys,
    /// Reads, the open's checks and `CONFIG GET`; commits have their own
    /// connection (`Committer`), so they never queue behind reads.
    pool: Pool,
    committer: Committer,
    script_sha: String,
    read_only: bool,
    closed: AtomicBool,
    read_round_trips: AtomicU64,
}

impl RedisDb {
    fn open(config: &ServerConfig, read_only: bool) -> Result<RedisDb> {
        let server = Server::new(config)?;
        let readers = (config.pool_size as usize).saturating_sub(1).max(1);
        let db = RedisDb {
            server,
            keys: Keys {
                prefix: config.key_prefix.clone(),
            },
            pool: Pool::new(readers),
            committer: Committer::new(),
            script_sha: ::redis::Script::new(script::COMMIT).get_hash().to_string(),
            read_only,
            closed: AtomicBool::new(false),
            read_round_trips: AtomicU64::new(0),
        };
        db.check_version()?;
        Ok(db)
    }

    /// Refuses keys of a newer format; marks a new store's prefix with
    /// this one.
    fn check_version(&self) -> Result<()> {
        let key = self.keys.version();
        let mut pipe = conn::pipeline();
        if !self.read_only {
            pipe.cmd("SET")
                .arg(&key)
                .arg(script::SCHEMA_VERSION)
                .arg("NX");
        }
        pipe.cmd("GET").arg(&key);
        let reply = self.request("checking the format version", &pipe)?.pop();
        let found = match reply {
            None | Some(Value::Nil) => return Ok(()),
            Some(Value::BulkString(text)) => String::from_utf8(text).ok(),
            Some(_) => None,
        };
        match found.as_deref().map(str::parse::<u32>) {
            Some(Ok(version)) if version <= script::SCHEMA_VERSION => Ok(()),
            Some(Ok(version)) => Err(Error::Unsupported(format!(
                "the keys '{}*' on Redis server {} are of format version {version}, newer \
                 than this build of mqstore reads ({}): open them with a newer mqstore, \
                 or use another redis.key_prefix",
                self.keys.prefix,
                self.server.address,
                script::SCHEMA_VERSION
            ))),
            _ => Err(Error::corruption(format!(
                "key '{key}' on Redis server {} does not hold a format version",
                self.server.address
            ))),
        }
    }

    fn live(&self) -> Result<()> {
        match self.closed.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    /// Sends `pipe` on a pooled connection; an error reply fails the call.
    fn request(&self, doing: &str, pipe: &::redis::Pipeline) -> Result<Vec<Value>> {
        read::request(&self.source(), doing, pipe)
    }

    fn source(&self) -> Source<'_> {
        Source {
            server: &self.server,
            pool: &self.pool,
            keys: &self.keys,
        }
    }

    /// The server's `appendonly` and `appendfsync`.
    fn persistence(&self, durability: Durability) -> Result<(String, String)> {
        let mut pipe = conn::pipeline();
        pipe.cmd("CONFIG").arg("GET").arg("appendonly");
        pipe.cmd("CONFIG").arg("GET").arg("appendfsync");
        let replies = self.request("reading its persistence settings", &pipe);
        let refused = |why: String| {
            Error::InvalidConfig(format!(
                "durability '{}' of the redis engine needs to read the settings appendonly \
                 and appendfsync of Redis server {}, which failed: {why}",
                durability.name(),
                self.server.address
            ))
        };
        let replies = replies.map_err(|e| match e {
            Error::Io { source, .. } => refused(source.to_string()),
            other => other,
        })?;
        let mut values = replies.into_iter().map(config_value);
        match (values.next().flatten(), values.next().flatten()) {
            (Some(aof), Some(fsync)) => Ok((aof, fsync)),
            _ => Err(refused("CONFIG GET answered no value".into())),
        }
    }
}

/// The value of a `CONFIG GET name` reply.
fn config_value(reply: Value) -> Option<String> {
    let value = match reply {
        Value::Array(mut items) if items.len() == 2 => items.pop()?,
        Value::Map(mut items) if items.len() == 1 => items.pop()?.1,
        _ => return None,
    };
    match value {
        Value::BulkString(text) => String::from_utf8(text).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Loads the commit script; its SHA-1.
fn load_script(con: &mut Connection) -> ::redis::RedisResult<String> {
    ::redis::Script::new(script::COMMIT).load(con)
}

impl Database for RedisDb {
    const KIND: EngineKind = EngineKind::Redis;

    fn check_durability(&self, durability: Durability) -> Result<()> {
        let wanted = match durability {
            Durability::None => return Ok(()),
            Durability::Os => "everysec (or always)",
            Durability::Fsync => "always",
        };
        self.live()?;
        let (aof, fsync) = self.persistence(durability)?;
        let fits = aof == "yes"
            && match durability {
                Durability::Fsync => fsync == "always",
                _ => fsync == "always" || fsync == "everysec",
            };
        if fits {
            return Ok(());
        }
        Err(Error::InvalidConfig(format!(
            "durability '{}' of the redis engine needs Redis server {} to run with \
             appendonly yes and appendfsync {wanted}; it has appendonly {aof}, appendfsync \
             {fsync}: change them (redis.conf or CONFIG SET) or choose another durability",
            durability.name(),
            self.server.address
        )))
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    /// A pipelined commit is queued and sent with the next pipeline
    /// (`commit`): its ticket is answered by `wait_synced`.
    fn commit(
        &self,
        changes: Vec<Change>,
        _durability: Durability,
        pipelined: bool,
    ) -> Result<u64> {
        self.live()?;
        if self.read_only {
            return Err(Error::Unsupported(
                "the store is open read-only: nothing is written to Redis".into(),
            ));
        }
        let cmd = script::commit_cmd(&self.script_sha, &self.keys.prefix, &changes)?;
        let mut shards: Vec<u64> = changes.iter().map(Change::shard).collect();
        shards.dedup();
        let ticket = self
            .committer
            .commit(&self.server, &load_script, cmd, &shards, pipelined)?;
        Ok(if pipelined { ticket } else { 0 })
    }

    fn wait_synced(&self, ticket: u64) -> Result<()> {
        self.committer.wait(&self.server, &load_script, ticket)
    }

    /// Every commit queued so far answered (each is durable as its mode
    /// asks once answered).
    fn sync(&self) -> Result<()> {
        self.live()?;
        self.committer.flush(&self.server, &load_script, None)
    }

    fn with_reader<R>(
        &self,
        shard: u64,
        _from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R> {
        self.live()?;
        // The shard's pipelined writes are indexed already: send them first.
        self.committer
            .flush(&self.server, &load_script, Some(shard))?;
        let mut reader = Reader {
            source: self.source(),
            shard,
            ahead: VecDeque::new(),
            round_trips: 0,
        };
        let out = f(&mut reader);
        self.read_round_trips
            .fetch_add(reader.round_trips, Ordering::Relaxed);
        Ok(out)
    }

    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        self.live()?;
        // What was queued is sent first (its outcome is what load finds).
        let _ = self.committer.flush(&self.server, &load_script, None);
        read::load(&self.source(), found)
    }

    /// After a failed commit: what the server holds of the shard, from
    /// which the shard rebuilds its state; then the shard may commit again.
    fn load_shard(&self, shard: u64, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        self.live()?;
        let _ = self.committer.flush(&self.server, &load_script, None);
        read::load_shard(&self.source(), shard, found)?;
        self.committer.forget_failure(shard);
        Ok(())
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let commits = self.committer.commits.load(Ordering::Relaxed);
        let trips = self.committer.round_trips.load(Ordering::Relaxed);
        Ok(serde_json::json!({
            "server": self.server.address,
            "key_prefix": self.keys.prefix,
            "commits": commits,
            "commit_round_trips": trips,
            "commits_per_round_trip": commits as f64 / trips.max(1) as f64,
            "read_round_trips": self.read_round_trips.load(Ordering::Relaxed),
            "connects": self.server.connects.load(Ordering::Relaxed),
        }))
    }

    /// Every answered write is already where its mode puts it: closing
    /// sends what is queued and lets go of the connections.
    fn close(&self) -> Result<()> {
        // Pipelined writes still queued are sent: a clean close keeps them.
        let flushed = self.committer.flush(&self.server, &load_script, None);
        self.closed.store(true, Ordering::Release);
        self.pool.clear();
        self.committer.disconnect();
        flushed
    }
}
