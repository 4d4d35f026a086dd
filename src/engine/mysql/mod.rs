//! The MySQL engine (`engine = "mysql"`): shards stored in a MySQL (≥ 8)
//! or MariaDB (≥ 10.6) database, the one `[mysql] url` names (created if
//! missing), in four InnoDB tables named `key_prefix` + role, so several
//! stores can share a database:
//!
//! - `batches`: one row per Kafka v2 batch, primary key `(shard_id,
//!   base_offset)`, the batch bytes exactly as every engine stores them in
//!   a LONGBLOB, and the `BatchMeta` columns (also in a covering index, so
//!   opening reads no page of batch bytes);
//! - `shards`: the catalogue (`ShardMeta`), changed in the same transaction
//!   as the batches whenever a watermark moves;
//! - `groups`: consumer-group offsets, per shard and group;
//! - `meta`: the `schema_version` row. A database with a newer schema than
//!   this code knows is refused at open.
//!
//! Shard policy is `database::DbShard`'s; this backend turns each atomic
//! change list into SQL. Concurrent commits share transactions (`commit`:
//! a leader applies every waiting list in one transaction, batch rows in
//! multi-row statements, and commits once), and readers fetch batches
//! ahead in ranges bounded by rows and bytes (`reader`).
//!
//! Durability. Every commit returns once the server has committed the
//! transaction: readers see it and the shard indexes it. What a mode adds
//! is a requirement on the server, checked when a shard is created or
//! opened (`Database::check_durability`, refused with `MQS_INVALID_CONFIG`
//! naming the variable to change):
//!
//! | mode | server must have | acknowledged when | lost by |
//! |---|---|---|---|
//! | `fsync` | `innodb_flush_log_at_trx_commit = 1`, and `sync_binlog = 1` when the binary log is on | COMMIT returned: the redo log (and binary log) flushed to the server's disk | nothing acknowledged |
//! | `os` | `innodb_flush_log_at_trx_commit` 1 or 2 | COMMIT returned: the log written to the server's OS | a power loss or OS crash of the server's machine (at 2) |
//! | `none` | anything | COMMIT returned | a crash of the server: up to about a second of commits (at 0) |
//!
//! A crash of the process embedding the store loses nothing acknowledged in
//! any mode: the data is on the server. A commit whose connection is lost
//! while COMMIT is on its way fails with `MQS_IO` and may or may not have
//! been applied: the shard then reloads its state from the server before
//! its next use (`database::DbShard`), so a batch stored that way stays,
//! unacknowledged, and the next append follows it.
//!
//! Connections. The sync client (`mysql`): the engine's calls are
//! synchronous, like every engine's. The pool is the engine's own
//! (`conn::Pool`), not the client's: the client's puts a connection back
//! after a timeout or a broken socket (whose stream may still carry the
//! answer to the request that timed out, to be read as the answer to the
//! next one) and pings before every use; ours drops a connection after any
//! transport error, drops the idle ones with it (a restarted server left
//! them all dead) and bounds the wait for a free one. A read, and a
//! transaction whose first statement met a dead connection, are retried
//! once on a new connection; nothing else is retried. Errors name the
//! server by `host:port`, never by the URL, which may hold the password.

mod commit;
mod conn;
mod reader;
mod schema;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};
use parking_lot::Mutex;

use self::commit::{precheck, Queue, Writer, PACKET_SLACK};
use self::conn::{code, Lease, Pool, Server};
use self::reader::Prefetch;
use self::schema::{ServerVars, Tables, VARS_QUERY};
use crate::config::{Config, Durability, EngineKind, ServerConfig};
use crate::engine::database::{server, BatchReader, Change, Database, Found};
use crate::engine::registry::{Capabilities, TransferPath};
use crate::engine::Engine;
use crate::{Error, Result};

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    durability: &[Durability::None, Durability::Os, Durability::Fsync],
    default_durability: Durability::Fsync,
    durability_limit: "",
    persistent: true,
    native_key_index: false,
    pipelined: false,
    transfer: TransferPath::Memory,
};

/// How long `check_durability` trusts the server settings it read.
const VARS_FRESH: Duration = Duration::from_secs(1);

/// The URL, when `[mysql]` names none.
pub const URL_ENV: &str = "MQS_MYSQL_URL";

/// The engine of the store in `dir`: its table prefix is the configured
/// one, else derived from the store's id (`database::server`).
pub(crate) fn engine(dir: &Path, config: &Config) -> Result<Arc<dyn Engine>> {
    let max_batch_bytes = config.max_batch_bytes;
    let open =
        move |server: &ServerConfig, read_only| MysqlDb::open(server, max_batch_bytes, read_only);
    Ok(server::engine(
        dir,
        &config.mysql,
        URL_ENV,
        '_',
        config.read_only,
        open,
    ))
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    transactions: AtomicU64,
    failed_transactions: AtomicU64,
    statements: AtomicU64,
    batches_written: AtomicU64,
    bytes_written: AtomicU64,
    fetches: AtomicU64,
    batches_read: AtomicU64,
    bytes_read: AtomicU64,
}

/// The store's MySQL database.
pub(crate) struct MysqlDb {
    server: Server,
    tables: Tables,
    key_prefix: String,
    pool: Arc<Pool>,
    queue: Queue,
    /// The server's settings at open.
    vars: ServerVars,
    /// The settings last read for `check_durability`, and when.
    checked: Mutex<Option<(Instant, ServerVars)>>,
    read_only: bool,
    /// Opened read-only where the database or the tables do not exist.
    absent: bool,
    closed: AtomicBool,
    counters: Counters,
}

impl MysqlDb {
    /// Connects (creating the database when missing), checks the server
    /// and creates or checks the tables. Read-only, it creates nothing: a
    /// missing database or table holds no shard.
    pub(crate) fn open(
        config: &ServerConfig,
        max_batch_bytes: usize,
        read_only: bool,
    ) -> Result<MysqlDb> {
        let (with_db, without_db, server) = conn::options(config)?;
        let (mut first, opts, mut absent) = if read_only {
            connect_reading(with_db, without_db, &server)?
        } else {
            (
                connect_creating(&with_db, &without_db, &server)?,
                with_db,
                false,
            )
        };
        let row = first
            .query_first(VARS_QUERY)
            .map_err(|e| server.error("reading its settings", e))?;
        let vars = ServerVars::parse(row, &server)?;
        check_server(&vars, (!read_only).then_some(max_batch_bytes), &server)?;
        let tables = Tables::new(&config.key_prefix);
        if read_only && !absent {
            absent = !tables.check(&mut first, &server)?;
        } else if !read_only {
            tables.ensure(&mut first, &server)?;
        }
        let wait = Duration::from_millis(config.io_timeout_ms);
        let pool = Pool::new(opts, config.pool_size as usize, wait, first);
        Ok(MysqlDb {
            server,
            tables,
            key_prefix: config.key_prefix.clone(),
            pool: Arc::new(pool),
            queue: Queue::default(),
            vars,
            checked: Mutex::new(None),
            read_only,
            absent,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn lease(&self) -> Result<Lease> {
        self.check_open()?;
        self.pool.get(&self.server)
    }

    /// Runs the read-only `f` on `lease` (taking one when `None`), once
    /// more on a new connection when the first one turns out dead.
    fn with_retry<T>(
        &self,
        what: &str,
        lease: &mut Option<Lease>,
        mut f: impl FnMut(&mut Conn) -> mysql::Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            let mut current = match lease.take() {
                Some(current) => current,
                None => self.lease()?,
            };
            let result = current.run(&mut f);
            let lost = current.is_lost();
            if !lost {
                *lease = Some(current);
            }
            match result {
                Ok(value) => return Ok(value),
                Err(_) if lost && attempt == 0 => attempt += 1,
                Err(e) => return Err(self.server.error(what, e)),
            }
        }
    }

    /// The server's settings, asked again when a second old.
    fn current_vars(&self) -> Result<ServerVars> {
        let mut checked = self.checked.lock();
        if let Some((at, vars)) = checked.as_ref() {
            if at.elapsed() < VARS_FRESH {
                return Ok(vars.clone());
            }
        }
        let mut lease = None;
        let row = self.with_retry("reading its settings", &mut lease, |conn| {
            conn.query_first(VARS_QUERY)
        })?;
        let vars = ServerVars::parse(row, &self.server)?;
        *checked = Some((Instant::now(), vars.clone()));
        Ok(vars)
    }

    fn count_fetch(&self, batches: usize, bytes: usize) {
        let c = &self.counters;
        c.fetches.fetch_add(1, Ordering::Relaxed);
        c.batches_read.fetch_add(batches as u64, Ordering::Relaxed);
        c.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn max_packet(&self) -> usize {
        usize::try_from(self.vars.max_allowed_packet).unwrap_or(usize::MAX)
    }

    /// One round of group commit: the lists that pass the size checks in
    /// one transaction; when it fails for a reason other than the
    /// connection, each list alone, so that only the guilty ones fail.
    fn round(&self, lists: &[Vec<Change>]) -> Vec<Result<()>> {
        let mut outcomes: Vec<Result<()>> = lists
            .iter()
            .map(|changes| {
                self.check_open()?;
                precheck(changes, self.max_packet(), &self.server.address)
            })
            .collect();
        let ready: Vec<usize> = (0..lists.len()).filter(|&i| outcomes[i].is_ok()).collect();
        let batch: Vec<&Vec<Change>> = ready.iter().map(|&i| &lists[i]).collect();
        match self.transaction(&batch) {
            Ok(()) => {}
            Err((_, false)) if ready.len() > 1 => {
                for &i in &ready {
                    outcomes[i] = self.transaction(&[&lists[i]]).map_err(|(e, _)| e);
                }
            }
            Err((e, _)) => {
                for &i in &ready {
                    outcomes[i] = Err(e.duplicate());
                }
            }
        }
        outcomes
    }

    /// Applies `lists` in one transaction. A failure says whether the
    /// connection was lost (then the lists could not be told apart).
    fn transaction(&self, lists: &[&Vec<Change>]) -> Result<(), (Error, bool)> {
        if lists.is_empty() {
            return Ok(());
        }
        let changes = lists.iter().flat_map(|list| list.iter());
        if commit::one_statement(changes, self.max_packet()) {
            return self.autocommit(lists);
        }
        let mut lease = self.begin().map_err(|e| (e, true))?;
        let written = self.write(&mut lease, lists);
        let c = &self.counters;
        let sent = match written {
            Ok(sent) => sent,
            Err(e) => {
                c.failed_transactions.fetch_add(1, Ordering::Relaxed);
                let lost = lease.is_lost();
                if !lost && lease.run(|conn| conn.query_drop("ROLLBACK")).is_err() {
                    lease.discard();
                }
                return Err((self.server.error("writing", e), lost));
            }
        };
        if let Err(e) = lease.run(|conn| conn.query_drop("COMMIT")) {
            c.failed_transactions.fetch_add(1, Ordering::Relaxed);
            let what = "committing (the outcome is unknown: the server may have applied it)";
            return Err((self.server.error(what, e), lease.is_lost()));
        }
        self.count(lists, &sent, 2);
        Ok(())
    }

    /// Sends every change of `lists` on `lease`.
    fn write(&self, lease: &mut Lease, lists: &[&Vec<Change>]) -> mysql::Result<commit::Sent> {
        lease.run(|conn| {
            let mut writer = Writer::new(conn, &self.tables, self.max_packet());
            for change in lists.iter().flat_map(|list| list.iter()) {
                writer.apply(change)?;
            }
            writer.flush()?;
            Ok(writer.sent)
        })
    }

    /// Counts a committed round (`extra` statements beside the writes).
    fn count(&self, lists: &[&Vec<Change>], sent: &commit::Sent, extra: u64) {
        let c = &self.counters;
        c.commits.fetch_add(lists.len() as u64, Ordering::Relaxed);
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.statements
            .fetch_add(sent.statements + extra, Ordering::Relaxed);
        c.batches_written.fetch_add(sent.batches, Ordering::Relaxed);
        c.bytes_written.fetch_add(sent.bytes, Ordering::Relaxed);
    }

    /// Applies batch rows that one statement carries (`one_statement`)
    /// without a transaction. A connection found dead (idle across a
    /// restart of the server) is replaced and the statement sent once
    /// more: replacing the same rows again changes nothing (the shard
    /// holds its lock, so nothing else wrote them meanwhile).
    fn autocommit(&self, lists: &[&Vec<Change>]) -> Result<(), (Error, bool)> {
        let mut attempt = 0;
        loop {
            let mut lease = self.lease().map_err(|e| (e, true))?;
            match self.write(&mut lease, lists) {
                Ok(sent) => {
                    self.count(lists, &sent, 0);
                    return Ok(());
                }
                Err(_) if lease.is_lost() && attempt == 0 => attempt += 1,
                Err(e) => {
                    let c = &self.counters;
                    c.failed_transactions.fetch_add(1, Ordering::Relaxed);
                    let what = "writing (the outcome is unknown: the server may have applied it)";
                    return Err((self.server.error(what, e), lease.is_lost()));
                }
            }
        }
    }

    /// A connection in a new transaction. A dead one (idle across a
    /// restart of the server) fails the first statement with nothing
    /// applied: then once more on a new connection.
    fn begin(&self) -> Result<Lease> {
        let mut attempt = 0;
        loop {
            let mut lease = self.lease()?;
            match lease.run(|conn| conn.query_drop("START TRANSACTION")) {
                Ok(()) => return Ok(lease),
                Err(_) if lease.is_lost() && attempt == 0 => attempt += 1,
                Err(e) => return Err(self.server.error("starting a transaction", e)),
            }
        }
    }
}

/// A connection to the URL's database, created first when missing.
fn connect_creating(with_db: &Opts, without_db: &Opts, server: &Server) -> Result<Conn> {
    match Conn::new(with_db.clone()) {
        Err(mysql::Error::MySqlError(e)) if e.code == code::BAD_DB => {
            let mut conn =
                Conn::new(without_db.clone()).map_err(|e| server.error("connecting", e))?;
            let create = format!("CREATE DATABASE IF NOT EXISTS `{}`", server.database);
            conn.query_drop(create).map_err(|e| {
                server.error(&format!("creating database `{}`", server.database), e)
            })?;
            Conn::new(with_db.clone()).map_err(|e| server.error("connecting", e))
        }
        other => other.map_err(|e| server.error("connecting", e)),
    }
}

/// A connection to the URL's database, or (missing) to none, with the
/// options of the one made, and whether the database is missing.
fn connect_reading(with_db: Opts, without_db: Opts, server: &Server) -> Result<(Conn, Opts, bool)> {
    match Conn::new(with_db.clone()) {
        Ok(conn) => Ok((conn, with_db, false)),
        Err(mysql::Error::MySqlError(e)) if e.code == code::BAD_DB => {
            let conn = Conn::new(without_db.clone()).map_err(|e| server.error("connecting", e))?;
            Ok((conn, without_db, true))
        }
        Err(e) => Err(server.error("connecting", e)),
    }
}

/// Refuses a server too old for the engine's statements (window
/// functions), or whose packets cannot carry the store's largest batch
/// (when it is to write batches).
fn check_server(vars: &ServerVars, max_batch_bytes: Option<usize>, server: &Server) -> Result<()> {
    let mariadb = vars.version.contains("MariaDB");
    let mut parts = vars
        .version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    let major_minor = (parts.next().flatten(), parts.next().flatten());
    let (least, name) = if mariadb {
        ((10, 6), "MariaDB")
    } else {
        ((8, 0), "MySQL")
    };
    if let (Some(major), Some(minor)) = major_minor {
        if (major, minor) < least {
            return Err(Error::Unsupported(format!(
                "MySQL server {}: version {} is too old: the mysql engine needs {name} {}.{} or \
                 newer",
                server.address, vars.version, least.0, least.1
            )));
        }
    }
    let Some(max_batch_bytes) = max_batch_bytes else {
        return Ok(());
    };
    let needed = max_batch_bytes as u64 + PACKET_SLACK as u64;
    if vars.max_allowed_packet < needed {
        return Err(Error::InvalidConfig(format!(
            "MySQL server {}: max_allowed_packet is {} bytes, too small for a batch of \
             store.max_batch_bytes ({max_batch_bytes}): raise max_allowed_packet to at least \
             {needed} (SET GLOBAL max_allowed_packet, and in the server's configuration), or \
             lower store.max_batch_bytes",
            server.address, vars.max_allowed_packet
        )));
    }
    Ok(())
}

impl Database for MysqlDb {
    const KIND: EngineKind = EngineKind::Mysql;

    /// Asks the server (its settings may have changed since open), at
    /// most once a second: opening a store checks every shard.
    fn check_durability(&self, durability: Durability) -> Result<()> {
        let vars = self.current_vars()?;
        match vars.refuses(durability) {
            None => Ok(()),
            Some(fix) => Err(Error::InvalidConfig(format!(
                "durability \"{}\" on the MySQL server {}: {fix}, or choose a weaker durability",
                durability.name(),
                self.server.address
            ))),
        }
    }

    /// Returns once the server committed the changes; `durability` was
    /// checked against the server's settings when the shard was created or
    /// opened, so the commit is as durable as it asks.
    fn commit(
        &self,
        changes: Vec<Change>,
        _durability: Durability,
        _pipelined: bool,
    ) -> Result<u64> {
        self.check_open()?;
        if changes.is_empty() {
            return Ok(0);
        }
        self.queue.commit(changes, |lists| self.round(lists))?;
        Ok(0)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    /// Every commit is as durable as the server makes it when it returns.
    fn sync(&self) -> Result<()> {
        self.check_open()
    }

    fn with_reader<R>(
        &self,
        shard: u64,
        _from: Option<i64>,
        f: impl FnOnce(&mut dyn BatchReader) -> R,
    ) -> Result<R> {
        self.check_open()?;
        let mut reader = Prefetch::new(self, shard);
        Ok(f(&mut reader))
    }

    fn load(&self, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        if self.absent {
            return self.check_open();
        }
        reader::load(self, found)
    }

    fn load_shard(&self, shard: u64, found: &mut dyn FnMut(Found) -> Result<()>) -> Result<()> {
        if self.absent {
            return self.check_open();
        }
        reader::load_shard(self, shard, found)
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let c = &self.counters;
        let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (commits, transactions) = (n(&c.commits), n(&c.transactions));
        Ok(serde_json::json!({
            "server": self.server.address,
            "database": self.server.database,
            "key_prefix": self.key_prefix,
            "server_version": self.vars.version,
            "max_allowed_packet": self.vars.max_allowed_packet,
            "innodb_flush_log_at_trx_commit": self.vars.innodb_flush_log_at_trx_commit,
            "commits": commits,
            "transactions": transactions,
            "commits_per_transaction": if transactions == 0 { 0.0 } else { commits as f64 / transactions as f64 },
            "failed_transactions": n(&c.failed_transactions),
            "statements": n(&c.statements),
            "batches_written": n(&c.batches_written),
            "bytes_written": n(&c.bytes_written),
            "fetches": n(&c.fetches),
            "batches_read": n(&c.batches_read),
            "bytes_read": n(&c.bytes_read),
            "connects": n(&self.pool.connects),
        }))
    }

    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
        Ok(())
    }
}
