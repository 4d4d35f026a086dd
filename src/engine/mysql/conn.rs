//! Reaching the server: client options from `[mysql]`, the engine's pool
//! of connections, and the client's errors turned into the store's.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::{Conn, Opts, OptsBuilder, Value};
use parking_lot::{Condvar, Mutex};

use crate::config::ServerConfig;
use crate::{Error, Result};

/// Server error codes the engine tells apart.
pub(super) mod code {
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const ACCESS_DENIED: u16 = 1045;
    pub const BAD_DB: u16 = 1049;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const NET_PACKET_TOO_LARGE: u16 = 1153;
    pub const NO_SUCH_TABLE: u16 = 1146;
    pub const CONNECTION_KILLED: u16 = 1927;
}

/// Where the server is, for messages: never the URL, which may hold a
/// password.
pub(super) struct Server {
    pub address: String,
    pub database: String,
    pub io_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Server {
    /// The store's error for a client error met while doing `what`.
    pub fn error(&self, what: &str, e: mysql::Error) -> Error {
        let context = format!("MySQL server {}: {what}", self.address);
        match e {
            mysql::Error::MySqlError(e) => self.server_error(context, e),
            mysql::Error::IoError(e) => Error::io(context, self.timeout_named(e)),
            mysql::Error::DriverError(e) => Error::io(context, self.driver_error(e)),
            mysql::Error::CodecError(e) => {
                // The codec wraps the socket's errors: keep their kind.
                let source = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .map(|s| io::Error::new(s.kind(), s.to_string()));
                let source = source
                    .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                Error::io(context, self.timeout_named(source))
            }
            mysql::Error::UrlError(e) => Error::InvalidConfig(format!("mysql.url: {e}")),
            mysql::Error::FromValueError(_) | mysql::Error::FromRowError(_) => Error::corruption(
                format!("{context}: a column holds a value of the wrong type"),
            ),
        }
    }

    fn server_error(&self, context: String, e: mysql::MySqlError) -> Error {
        match e.code {
            code::ACCESS_DENIED | code::DB_ACCESS_DENIED => Error::InvalidConfig(format!(
                "{context}: {} (check the user and password of mysql.url, or MQS_MYSQL_PASSWORD)",
                e.message
            )),
            code::NET_PACKET_TOO_LARGE => Error::InvalidConfig(format!(
                "{context}: {} (raise the server's max_allowed_packet)",
                e.message
            )),
            _ => Error::io(context, io::Error::other(e.to_string())),
        }
    }

    /// A read or write that hit the socket's timeout says "would block":
    /// name the setting instead.
    fn timeout_named(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within mysql.io_timeout_ms ({} ms)",
                    self.io_timeout_ms
                ),
            ),
            _ => e,
        }
    }

    fn driver_error(&self, e: mysql::DriverError) -> io::Error {
        match e {
            mysql::DriverError::ConnectTimeout => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "not connected within mysql.connect_timeout_ms ({} ms)",
                    self.connect_timeout_ms
                ),
            ),
            mysql::DriverError::CouldNotConnect(Some((_, description, kind))) => {
                io::Error::new(kind, format!("cannot connect: {description}"))
            }
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Whether the connection that returned `e` must be dropped: its socket
/// failed or timed out, so its stream may hold a late answer to an earlier
/// request.
pub(super) fn is_transport(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(e) => {
            matches!(e.code, code::SERVER_SHUTDOWN | code::CONNECTION_KILLED)
        }
        mysql::Error::IoError(_) | mysql::Error::DriverError(_) | mysql::Error::CodecError(_) => {
            true
        }
        _ => false,
    }
}

/// Client options of the database the URL names, and of none (to create
/// it), with the password from `MQS_MYSQL_PASSWORD` when the URL has none.
pub(super) fn options(config: &ServerConfig) -> Result<(Opts, Opts, Server)> {
    let url = config.url.as_deref().ok_or_else(|| {
        Error::InvalidConfig(
            "the mysql engine needs [mysql] url = \"mysql://user@host:port/database\"".into(),
        )
    })?;
    let parsed =
        Opts::from_url(url).map_err(|e| Error::InvalidConfig(format!("mysql.url: {e}")))?;
    let database = parsed
        .get_db_name()
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::InvalidConfig(
                "mysql.url names no database (mysql://user@host:port/database)".into(),
            )
        })?;
    check_database_name(&database)?;
    let password = match parsed.get_pass() {
        Some(pass) => Some(pass.to_string()),
        None => std::env::var("MQS_MYSQL_PASSWORD").ok(),
    };
    let builder = OptsBuilder::from_opts(parsed)
        .pass(password)
        .prefer_socket(false)
        .tcp_nodelay(true)
        .tcp_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .read_timeout(Some(Duration::from_millis(config.io_timeout_ms)))
        .write_timeout(Some(Duration::from_millis(config.io_timeout_ms)))
        .stmt_cache_size(64)
        // Strict: a value that does not fit fails the write instead of
        // being cut; no engine substitution: the tables are InnoDB or
        // nothing.
        .init(vec![
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
        ]);
    let server = Server {
        address: config.server_address(),
        database: database.clone(),
        io_timeout_ms: config.io_timeout_ms,
        connect_timeout_ms: config.connect_timeout_ms,
    };
    let without = builder.clone().db_name(None::<String>);
    Ok((builder.into(), without.into(), server))
}

/// Names are quoted with backquotes in statements: refuse the characters
/// that would need escaping rather than escape them.
fn check_database_name(name: &str) -> Result<()> {
    let fine = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'-');
    if fine {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "mysql.url: database name {name:?}: at most 64 letters, digits, '_', '$' or '-'"
    )))
}

/// A value of a `SELECT @@...` as text (servers answer numbers or words).
pub(super) fn value_text(value: &Value) -> String {
    match value {
        Value::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::Int(n) => n.to_string(),
        Value::UInt(n) => n.to_string(),
        Value::NULL => String::new(),
        other => format!("{other:?}"),
    }
}

/// The engine's connections: at most `max`, each dropped after a transport
/// error (`Lease::check`) together with every idle one opened before it
/// (after a restart of the server they are all dead), so the next call
/// connects afresh. Waiting for a free connection is bounded.
pub(super) struct Pool {
    opts: Opts,
    max: usize,
    wait: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Connections opened, for stats.
    pub connects: AtomicU64,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    open: usize,
    /// Bumped by a transport error: leases of an older generation are not
    /// given back.
    generation: u64,
    closed: bool,
}

impl Pool {
    pub fn new(opts: Opts, max: usize, wait: Duration, first: Conn) -> Pool {
        Pool {
            opts,
            max: max.max(1),
            wait,
            state: Mutex::new(PoolState {
                idle: vec![first],
                open: 1,
                ..PoolState::default()
            }),
            freed: Condvar::new(),
            connects: AtomicU64::new(1),
        }
    }

    /// A connection: an idle one, a new one, or the first one given back
    /// within the wait.
    pub fn get(self: &Arc<Self>, server: &Server) -> Result<Lease> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Error::Closed);
            }
            let generation = state.generation;
            if let Some(conn) = state.idle.pop() {
                return Ok(self.lease(conn, generation));
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return self.connect(server, generation);
            }
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                return Err(Error::io(
                    format!("MySQL server {}", server.address),
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "all {} connections (mysql.pool_size) stayed busy for {} ms",
                            self.max,
                            self.wait.as_millis()
                        ),
                    ),
                ));
            }
        }
    }

    fn connect(self: &Arc<Self>, server: &Server, generation: u64) -> Result<Lease> {
        match Conn::new(self.opts.clone()) {
            Ok(conn) => {
                self.connects.fetch_add(1, Ordering::Relaxed);
                Ok(self.lease(conn, generation))
            }
            Err(e) => {
                self.state.lock().open -= 1;
                self.freed.notify_one();
                Err(server.error("connecting", e))
            }
        }
    }

    fn lease(self: &Arc<Self>, conn: Conn, generation: u64) -> Lease {
        Lease {
            pool: self.clone(),
            conn: Some(conn),
            generation,
        }
    }

    fn give_back(&self, conn: Conn, generation: u64) {
        let mut state = self.state.lock();
        if state.closed || generation != state.generation {
            state.open -= 1;
            drop(state);
            drop(conn);
        } else {
            state.idle.push(conn);
        }
        self.freed.notify_one();
    }

    /// Drops every idle connection, and makes the leased ones go when given
    /// back.
    fn reset(&self, generation: u64) {
        let idle = {
            let mut state = self.state.lock();
            if state.generation != generation {
                return;
            }
            state.generation += 1;
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }

    pub fn close(&self) {
        let idle = {
            let mut state = self.state.lock();
            state.closed = true;
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }
}

/// A connection taken from the pool, given back when dropped unless a
/// transport error condemned it.
pub(super) struct Lease {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    generation: u64,
}

impl Lease {
    /// Passes `result` on; after a transport error the connection is
    /// dropped and so are the idle ones.
    pub fn check<T>(&mut self, result: mysql::Result<T>) -> mysql::Result<T> {
        if let Err(e) = &result {
            if is_transport(e) {
                self.discard();
                self.pool.reset(self.generation);
            }
        }
        result
    }

    /// Drops the connection: its session is in a state nobody should
    /// inherit.
    pub fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            self.pool.state.lock().open -= 1;
            self.pool.freed.notify_one();
        }
    }

    /// Whether `check` dropped the connection.
    pub fn is_lost(&self) -> bool {
        self.conn.is_none()
    }

    /// Runs `f` on the connection, checked.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> mysql::Result<T>) -> mysql::Result<T> {
        let result = match self.conn.as_mut() {
            Some(conn) => f(conn),
            None => Err(mysql::Error::IoError(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection dropped after an earlier error",
            ))),
        };
        self.check(result)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn, self.generation);
        }
    }
}
