//! The engine's tables, their statements, and what the engine needs to know
//! of the server's settings.

use mysql::prelude::Queryable;
use mysql::Conn;

use super::conn::{code, value_text, Server};
use crate::config::Durability;
use crate::{Error, Result};

/// The schema this code writes and reads. A database holding a newer one
/// is refused: its rows may mean something this code does not know.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// The longest consumer-group name the groups table keys (InnoDB keys stop
/// at 3072 bytes).
pub(super) const MAX_GROUP_NAME: usize = 3000;

/// The tables' names (`key_prefix` + role), quoted.
pub(super) struct Tables {
    pub meta: String,
    pub shards: String,
    pub batches: String,
    pub groups: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Tables {
        let table = |role: &str| format!("`{prefix}{role}`");
        Tables {
            meta: table("meta"),
            shards: table("shards"),
            batches: table("batches"),
            groups: table("groups"),
        }
    }

    /// The batch table keeps the `BatchMeta` columns in a covering index
    /// (`meta`) too, so that opening and prefetch sizing read no page
    /// holding batch bytes (InnoDB keeps short blobs inside the row).
    fn create(&self) -> [String; 3] {
        [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 shard_id BIGINT UNSIGNED NOT NULL PRIMARY KEY, \
                 name VARBINARY(1024) NOT NULL, \
                 options MEDIUMBLOB NOT NULL, \
                 low_watermark BIGINT NOT NULL, \
                 next_offset BIGINT NOT NULL) ENGINE=InnoDB",
                self.shards
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 shard_id BIGINT UNSIGNED NOT NULL, \
                 base_offset BIGINT NOT NULL, \
                 last_offset BIGINT NOT NULL, \
                 max_timestamp BIGINT NOT NULL, \
                 records INT UNSIGNED NOT NULL, \
                 len INT UNSIGNED NOT NULL, \
                 bytes LONGBLOB NOT NULL, \
                 PRIMARY KEY (shard_id, base_offset), \
                 KEY meta (shard_id, base_offset, last_offset, max_timestamp, records, len)\
                 ) ENGINE=InnoDB ROW_FORMAT=DYNAMIC",
                self.batches
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 shard_id BIGINT UNSIGNED NOT NULL, \
                 group_name VARBINARY({MAX_GROUP_NAME}) NOT NULL, \
                 committed_offset BIGINT NOT NULL, \
                 PRIMARY KEY (shard_id, group_name)) ENGINE=InnoDB ROW_FORMAT=DYNAMIC",
                self.groups
            ),
        ]
    }

    /// Creates the tables, or checks that their schema is one this code
    /// knows.
    pub fn ensure(&self, conn: &mut Conn, server: &Server) -> Result<()> {
        let fail = |what: &str, e| server.error(what, e);
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             name VARCHAR(64) NOT NULL PRIMARY KEY, value BIGINT NOT NULL) ENGINE=InnoDB",
            self.meta
        ))
        .map_err(|e| fail("creating the schema table", e))?;
        let version = self.version(conn, server)?;
        if version.is_some_and(|v| v > SCHEMA_VERSION) {
            return Err(self.too_new(version.unwrap_or_default(), server));
        }
        for create in self.create() {
            conn.query_drop(create)
                .map_err(|e| fail("creating the tables", e))?;
        }
        if version.is_none() {
            conn.query_drop(format!(
                "INSERT IGNORE INTO {} (name, value) VALUES ('schema_version', {SCHEMA_VERSION})",
                self.meta
            ))
            .map_err(|e| fail("recording the schema version", e))?;
        }
        // Another store may have created the tables meanwhile.
        match self.version(conn, server)? {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(v) if v > SCHEMA_VERSION => Err(self.too_new(v, server)),
            other => Err(Error::corruption(format!(
                "MySQL server {}: table {} records schema version {other:?}",
                server.address, self.meta
            ))),
        }
    }

    /// Read-only: whether the tables exist (with a schema this code
    /// knows).
    pub fn check(&self, conn: &mut Conn, server: &Server) -> Result<bool> {
        let sql = format!(
            "SELECT value FROM {} WHERE name = 'schema_version'",
            self.meta
        );
        match conn.query_first::<i64, _>(sql) {
            Err(mysql::Error::MySqlError(e)) if e.code == code::NO_SUCH_TABLE => Ok(false),
            Err(e) => Err(server.error("reading the schema version", e)),
            Ok(Some(v)) if v > SCHEMA_VERSION => Err(self.too_new(v, server)),
            Ok(version) => Ok(version.is_some()),
        }
    }

    fn version(&self, conn: &mut Conn, server: &Server) -> Result<Option<i64>> {
        let sql = format!(
            "SELECT value FROM {} WHERE name = 'schema_version'",
            self.meta
        );
        conn.query_first::<i64, _>(sql)
            .map_err(|e| server.error("reading the schema version", e))
    }

    fn too_new(&self, version: i64, server: &Server) -> Error {
        Error::Unsupported(format!(
            "MySQL server {}, database `{}`: the tables {} and beside it have schema version \
             {version}, newer than the {SCHEMA_VERSION} this mqstore knows: open them with the \
             mqstore that wrote them",
            server.address, server.database, self.meta
        ))
    }
}

/// The server settings the engine depends on.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct ServerVars {
    pub version: String,
    pub innodb_flush_log_at_trx_commit: i64,
    pub log_bin: bool,
    pub sync_binlog: i64,
    pub max_allowed_packet: u64,
}

pub(super) const VARS_QUERY: &str = "SELECT VERSION(), @@GLOBAL.innodb_flush_log_at_trx_commit, \
     @@GLOBAL.log_bin, @@GLOBAL.sync_binlog, @@GLOBAL.max_allowed_packet";

impl ServerVars {
    pub fn parse(row: Option<mysql::Row>, server: &Server) -> Result<ServerVars> {
        let bad = |what: &str| {
            Error::corruption(format!(
                "MySQL server {}: unexpected answer reading {what}",
                server.address
            ))
        };
        let row = row.ok_or_else(|| bad("its variables"))?;
        let text = |i: usize| row.as_ref(i).map(value_text).unwrap_or_default();
        let number = |i: usize, name: &str| text(i).trim().parse::<i64>().map_err(|_| bad(name));
        let log_bin = text(2);
        Ok(ServerVars {
            version: text(0),
            innodb_flush_log_at_trx_commit: number(1, "innodb_flush_log_at_trx_commit")?,
            log_bin: log_bin == "1" || log_bin.eq_ignore_ascii_case("ON"),
            sync_binlog: number(3, "sync_binlog")?,
            max_allowed_packet: number(4, "max_allowed_packet")?.max(0) as u64,
        })
    }

    /// Why the server cannot acknowledge commits as `durability` asks, if
    /// it cannot. `fsync` needs the redo log (and the binary log, when on)
    /// flushed to the device at every commit; `os` needs it written to the
    /// server's OS at every commit (`innodb_flush_log_at_trx_commit = 2`
    /// survives the server process dying, not a power loss; 0 writes it
    /// once a second, so a crash of the server loses the last second).
    pub fn refuses(&self, durability: Durability) -> Option<String> {
        let flush = self.innodb_flush_log_at_trx_commit;
        match durability {
            Durability::Fsync if flush != 1 => Some(format!(
                "set innodb_flush_log_at_trx_commit = 1 (it is {flush}: commits are not \
                 flushed to the disk when acknowledged)"
            )),
            Durability::Fsync if self.log_bin && self.sync_binlog != 1 => Some(format!(
                "set sync_binlog = 1 (it is {}, and the binary log is on: a commit's binary \
                 log entry is not flushed to the disk when acknowledged)",
                self.sync_binlog
            )),
            Durability::Os if flush != 1 && flush != 2 => Some(format!(
                "set innodb_flush_log_at_trx_commit = 1 or 2 (it is {flush}: the log is \
                 written once a second, so a crash of the server loses acknowledged commits)"
            )),
            _ => None,
        }
    }
}
