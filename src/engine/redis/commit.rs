//! Group commit: concurrent commits share round trips.
//!
//! A committing thread queues its script call; if no commit is on its way
//! to the server, it becomes the leader: it takes everything queued (its
//! own call and those of the threads that queued before), sends them as
//! one pipeline on the commit connection and hands each caller its reply.
//! Threads that queue meanwhile wait; when the leader is done, one of them
//! leads the next pipeline with everything queued by then. One pipeline at
//! a time keeps the commits in the order they were queued, and the server
//! runs a pipeline's scripts in one pass of its event loop, so with
//! `appendfsync always` they share one fsync of the append-only file too.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};
use redis::{Cmd, Connection, Pipeline, Value};

use super::conn::{self, Server};
use crate::{Error, Result};

/// A pipeline carries at most this many commits, or this many bytes of
/// arguments (the first commit always goes, whatever its size).
const MAX_COMMITS: usize = 512;
const MAX_BYTES: usize = 16 << 20;

pub struct Committer {
    queue: Mutex<Queue>,
    done: Condvar,
    /// The leader's connection; `None` after a failure (the next leader
    /// reconnects).
    con: Mutex<Option<Connection>>,
    pub commits: AtomicU64,
    pub round_trips: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: Vec<(u64, Cmd)>,
    next: u64,
    leading: bool,
    outcomes: HashMap<u64, Result<()>>,
}

/// Loads the commit script on a connection; returns its SHA-1.
pub type Load = dyn Fn(&mut Connection) -> redis::RedisResult<String> + Sync;

impl Committer {
    pub fn new() -> Committer {
        Committer {
            queue: Mutex::new(Queue::default()),
            done: Condvar::new(),
            con: Mutex::new(None),
            commits: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
        }
    }

    /// Applies `cmd` (a script call), sharing a pipeline with concurrent
    /// commits; returns once the server answered it.
    pub fn commit(&self, server: &Server, load: &Load, cmd: Cmd) -> Result<()> {
        let mut queue = self.queue.lock();
        let seq = queue.next;
        queue.next += 1;
        queue.pending.push((seq, cmd));
        loop {
            if let Some(outcome) = queue.outcomes.remove(&seq) {
                return outcome;
            }
            if queue.leading {
                self.done.wait(&mut queue);
                continue;
            }
            queue.leading = true;
            let batch = take_batch(&mut queue.pending);
            drop(queue);
            let outcomes = self.send(server, load, batch);
            queue = self.queue.lock();
            queue.outcomes.extend(outcomes);
            queue.leading = false;
            self.done.notify_all();
        }
    }

    /// Sends one pipeline; every commit of it gets an outcome.
    fn send(&self, server: &Server, load: &Load, batch: Vec<(u64, Cmd)>) -> Vec<(u64, Result<()>)> {
        let mut seqs = Vec::with_capacity(batch.len());
        let mut pipe = conn::pipeline();
        for (seq, cmd) in batch {
            seqs.push(seq);
            pipe.add_command(cmd);
        }
        let mut slot = self.con.lock();
        let result = self.run(server, load, &mut slot, &pipe);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.commits.fetch_add(seqs.len() as u64, Ordering::Relaxed);
        match result {
            Ok(replies) => seqs
                .into_iter()
                .zip(replies)
                .map(|(seq, reply)| (seq, check(server, reply)))
                .collect(),
            Err(e) => {
                *slot = None;
                seqs.into_iter()
                    .map(|seq| (seq, Err(unknown_outcome(&e))))
                    .collect()
            }
        }
    }

    /// Sends `pipe` on the commit connection. One the server closed since
    /// the last pipeline (a restart) is replaced and the pipeline sent
    /// again: a commit sets keys to values and removes ranges, so applying
    /// a prefix of the pipeline twice, in order, with nothing between,
    /// leaves what applying it once does.
    fn run(
        &self,
        server: &Server,
        load: &Load,
        slot: &mut Option<Connection>,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>> {
        let reused = slot.is_some();
        match self.try_run(server, load, slot, pipe) {
            Err(Failure::Client(e)) if reused && conn::stale(&e) => {
                *slot = None;
                self.try_run(server, load, slot, pipe)
            }
            other => other,
        }
        .map_err(|failure| match failure {
            Failure::Client(e) => server.error("committing a write", e),
            Failure::Mapped(e) => e,
        })
    }

    fn try_run(
        &self,
        server: &Server,
        load: &Load,
        slot: &mut Option<Connection>,
        pipe: &Pipeline,
    ) -> std::result::Result<Vec<Value>, Failure> {
        if slot.is_none() {
            let mut con = server.connect().map_err(Failure::Mapped)?;
            load(&mut con).map_err(Failure::Client)?;
            *slot = Some(con);
        }
        let con = slot.as_mut().ok_or(Failure::Mapped(Error::Closed))?;
        let mut replies = conn::send(con, pipe).map_err(Failure::Client)?;
        // A script cache flushed under us: nothing of those ran; load the
        // script again and resend them, once.
        let lost: Vec<usize> = (0..replies.len())
            .filter(|&i| is_noscript(&replies[i]))
            .collect();
        if !lost.is_empty() {
            load(con).map_err(Failure::Client)?;
            let mut again = conn::pipeline();
            for (i, cmd) in pipe.cmd_iter().enumerate() {
                if lost.contains(&i) {
                    again.add_command(cmd.clone());
                }
            }
            let resent = conn::send(con, &again).map_err(Failure::Client)?;
            for (i, reply) in lost.into_iter().zip(resent) {
                replies[i] = reply;
            }
        }
        Ok(replies)
    }

    /// Drops the commit connection.
    pub fn disconnect(&self) {
        *self.con.lock() = None;
    }
}

enum Failure {
    /// The client's error: the connection is unusable.
    Client(redis::RedisError),
    Mapped(Error),
}

/// The oldest queued commits, up to a pipeline's limits.
fn take_batch(pending: &mut Vec<(u64, Cmd)>) -> Vec<(u64, Cmd)> {
    let mut bytes = 0;
    let mut n = 0;
    for (_, cmd) in pending.iter() {
        let size: usize = cmd.args_iter().map(arg_len).sum();
        if n > 0 && (n == MAX_COMMITS || bytes + size > MAX_BYTES) {
            break;
        }
        bytes += size;
        n += 1;
    }
    pending.drain(..n).collect()
}

fn arg_len(arg: redis::Arg<&[u8]>) -> usize {
    match arg {
        redis::Arg::Simple(bytes) => bytes.len(),
        _ => 0,
    }
}

fn is_noscript(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

fn check(server: &Server, reply: Value) -> Result<()> {
    match reply {
        Value::ServerError(e) => Err(server.reply_error("committing a write", &e)),
        _ => Ok(()),
    }
}

/// The error of a commit whose pipeline failed: each caller gets its
/// own (errors are not `Clone`), saying that the write's fate is unknown.
fn unknown_outcome(e: &Error) -> Error {
    match e {
        Error::Io { context, source } => Error::io(
            context.clone(),
            io::Error::new(
                source.kind(),
                format!("{source} (the write may or may not have been applied)"),
            ),
        ),
        Error::InvalidConfig(text) => Error::InvalidConfig(text.clone()),
        Error::Closed => Error::Closed,
        other => Error::Internal(other.to_string()),
    }
}
