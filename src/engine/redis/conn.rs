//! Connections to the server: how they are opened (timeouts, credentials),
//! a small pool for reads, and the mapping of the client's errors, which
//! never carry the URL or the password.
//!
//! The pool is a `Mutex<Vec<Connection>>` of idle connections and a count
//! of open ones, not r2d2: the engine is synchronous, a connection is only
//! held for one call, and a connection that failed in any way but a server
//! error reply is dropped rather than returned (its stream may hold a late
//! answer), so the next call opens a fresh one: that is the reconnect.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use redis::{Client, Connection, ConnectionLike, ErrorKind, IntoConnectionInfo, Pipeline, Value};

use crate::config::ServerConfig;
use crate::{Error, Result};

/// Where the password comes from when the URL has none.
pub const PASSWORD_ENV: &str = "MQS_REDIS_PASSWORD";

/// How to reach the server, and how to word its failures.
pub struct Server {
    client: Client,
    /// `host:port`, for messages.
    pub address: String,
    /// Scrubbed from every message, in case the client quotes it.
    password: Option<String>,
    connect_timeout: Duration,
    pub io_timeout: Duration,
    pub connects: AtomicU64,
}

impl Server {
    pub fn new(config: &ServerConfig) -> Result<Server> {
        let url = config.url.as_deref().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "the redis engine needs [redis] url = \"redis://...\" (or {})",
                super::URL_ENV
            ))
        })?;
        let address = config.server_address();
        // The client's parse errors may quote the URL: say only what is wrong.
        let info = url.into_connection_info().map_err(|_| {
            Error::InvalidConfig(format!(
                "redis.url (server {address}) is not a valid redis:// URL"
            ))
        })?;
        let mut settings = info.redis_settings().clone();
        if settings.password().is_none() {
            if let Ok(password) = std::env::var(PASSWORD_ENV) {
                settings = settings.set_password(password);
            }
        }
        let password = settings.password().map(str::to_string);
        let client = Client::open(info.set_redis_settings(settings))
            .map_err(|e| Error::InvalidConfig(format!("redis.url (server {address}): {e}")))?;
        Ok(Server {
            client,
            address,
            password: password.filter(|p| !p.is_empty()),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            io_timeout: Duration::from_millis(config.io_timeout_ms),
            connects: AtomicU64::new(0),
        })
    }

    /// A new connection, its setup (AUTH) bounded by the connect timeout
    /// and every later request by the I/O timeout.
    pub fn connect(&self) -> Result<Connection> {
        let mut tries = 0;
        let con = loop {
            match self
                .client
                .get_connection_with_timeout(self.connect_timeout)
            {
                Err(e) if tries < RETRIES && interrupted(&e) => tries += 1,
                other => break other.map_err(|e| self.error("connecting", e))?,
            }
        };
        con.set_read_timeout(Some(self.io_timeout))
            .and_then(|()| con.set_write_timeout(Some(self.io_timeout)))
            .map_err(|e| self.error("connecting", e))?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(con)
    }

    /// The client's error, worded for the caller: wrong credentials are a
    /// configuration error, everything else (refused, reset, timed out, a
    /// server error reply) `Io`, naming the server's address.
    pub fn error(&self, doing: &str, e: redis::RedisError) -> Error {
        let text = self.scrub(&e.to_string());
        let wrong_password = e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
        if wrong_password {
            return Error::InvalidConfig(format!(
                "Redis server {} refused the credentials ({text}): check the password \
                 in redis.url or {PASSWORD_ENV}",
                self.address
            ));
        }
        let kind = if e.is_timeout() {
            io::ErrorKind::TimedOut
        } else if e.is_connection_refusal() {
            io::ErrorKind::ConnectionRefused
        } else if e.is_connection_dropped() {
            io::ErrorKind::ConnectionReset
        } else {
            io::ErrorKind::Other
        };
        let text = match kind {
            io::ErrorKind::TimedOut => format!(
                "no answer within {} ms ({text})",
                self.io_timeout.as_millis()
            ),
            _ => text,
        };
        self.io_error(doing, kind, text)
    }

    pub fn io_error(&self, doing: &str, kind: io::ErrorKind, text: String) -> Error {
        Error::io(
            format!("Redis server {}, {doing}", self.address),
            io::Error::new(kind, self.scrub(&text)),
        )
    }

    /// An error reply of the server to one command.
    pub fn reply_error(&self, doing: &str, e: &redis::ServerError) -> Error {
        self.io_error(doing, io::ErrorKind::Other, e.to_string())
    }

    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(password) => text.replace(password.as_str(), "***"),
            None => text.to_string(),
        }
    }
}

/// Sends `pipe` and returns one reply per command, error replies
/// included. `Err`: the connection failed and must be dropped.
pub fn send(con: &mut Connection, pipe: &Pipeline) -> redis::RedisResult<Vec<Value>> {
    let replies: Vec<Value> = pipe.query(con as &mut dyn ConnectionLike)?;
    if replies.len() != pipe.len() {
        return Err(redis::RedisError::from(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} replies to {} commands", replies.len(), pipe.len()),
        )));
    }
    Ok(replies)
}

/// The server closed the connection (it restarted, or dropped an idle
/// client): nothing sent on it is pending, so the request may be sent
/// again on a new one. Not a timeout: the server may still run it.
pub fn stale(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

/// A read or write the kernel interrupted (a socket with a timeout is not
/// restarted after a signal, nor after io_uring task work the thread was
/// sent): the connection's position in the reply stream is unknown, so it
/// is replaced, and the request sent again on the new one.
pub fn interrupted(e: &redis::RedisError) -> bool {
    // The client keeps the `io::Error` behind an `Arc` of its own.
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let io = std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<Shared>())
        .and_then(|shared| shared.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

/// How many times a request is sent again on a new connection (each time
/// the kernel interrupted it, or once after a connection a restart left
/// dead).
pub const RETRIES: usize = 3;

/// Whether a request that failed with `e` on a connection (`reused`: one
/// that served before) is sent again on a new one.
pub fn retryable(e: &redis::RedisError, reused: bool) -> bool {
    interrupted(e) || (reused && stale(e))
}

/// A pipeline that hands back error replies instead of failing.
pub fn pipeline() -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe
}

/// The idle connections for reads, `size` at most open at once.
pub struct Pool {
    idle: Mutex<PoolState>,
    freed: Condvar,
    size: usize,
}

struct PoolState {
    idle: Vec<Connection>,
    open: usize,
}

impl Pool {
    pub fn new(size: usize) -> Pool {
        Pool {
            idle: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            size: size.max(1),
        }
    }

    /// Runs `f` with a connection; the connection goes back to the pool
    /// unless the request failed on it (`f` returned a client error). A
    /// pooled connection the server closed while it was idle (a restart)
    /// is replaced and the request sent again, once: `f` must be
    /// idempotent.
    pub fn with<R>(
        &self,
        server: &Server,
        doing: &str,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<R>,
    ) -> Result<R> {
        let (mut con, mut reused) = self.take(server, doing)?;
        let mut tries = 0;
        loop {
            match f(&mut con) {
                Ok(out) => {
                    self.give_back(con);
                    return Ok(out);
                }
                Err(e) => {
                    self.forget();
                    if !(tries < RETRIES && retryable(&e, reused)) {
                        return Err(server.error(doing, e));
                    }
                    // The other idle ones most likely went with it.
                    self.clear();
                    (con, reused) = self.take(server, doing)?;
                    tries += 1;
                }
            }
        }
    }

    /// A connection, and whether it was used before.
    fn take(&self, server: &Server, doing: &str) -> Result<(Connection, bool)> {
        let deadline = Instant::now() + server.io_timeout;
        let mut state = self.idle.lock();
        loop {
            if let Some(con) = state.idle.pop() {
                return Ok((con, true));
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                let con = server.connect().inspect_err(|_| self.forget())?;
                return Ok((con, false));
            }
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                return Err(server.io_error(
                    doing,
                    io::ErrorKind::TimedOut,
                    format!("all {} connections stayed busy", self.size),
                ));
            }
        }
    }

    fn give_back(&self, con: Connection) {
        self.idle.lock().idle.push(con);
        self.freed.notify_one();
    }

    fn forget(&self) {
        self.idle.lock().open -= 1;
        self.freed.notify_one();
    }

    /// Closes the idle connections (those in use close when returned to
    /// nobody: `close` of the database refuses later calls).
    pub fn clear(&self) {
        let mut state = self.idle.lock();
        let n = state.idle.len();
        state.idle.clear();
        state.open -= n;
    }
}
