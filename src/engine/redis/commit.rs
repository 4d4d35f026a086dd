//! Group commit: concurrent commits share round trips, and so do a
//! producer's pipelined ones.
//!
//! Every commit gets a ticket, in the order it was queued. A thread that
//! needs a ticket answered (a blocking commit, `wait_durable`, a read
//! that must see the shard's writes, a close) leads if no pipeline is on
//! its way to the server: it takes everything queued (its own commit and
//! those queued before it), sends them as one pipeline on the commit
//! connection and records each outcome; others wait meanwhile, and one of
//! them leads the next pipeline with everything queued by then. A
//! pipelined commit (`append_nowait`) is queued and not sent until a
//! ticket at or after it is needed, or until `MAX_QUEUED` commits or
//! `MAX_BYTES` wait: a producer with a window of batches in flight sends
//! the window as one pipeline. One pipeline at a time keeps the commits in
//! the order they were queued, and the server runs a pipeline's scripts
//! in one pass of its event loop, so with `appendfsync always` they share
//! one fsync of the append-only file too.
//!
//! A failed pipeline fails its commits and every commit queued behind it,
//! and a shard whose newest commit failed gets no new one (the commit
//! fails at once): a shard never has a later write applied after an
//! earlier one that failed, so a crash or a resync finds no hole in it.

use std::collections::{HashMap, VecDeque};
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
/// Pipelined commits wait to be sent until this many are queued.
const MAX_QUEUED: usize = 64;

pub struct Committer {
    queue: Mutex<Queue>,
    done: Condvar,
    /// The leader's connection; `None` after a failure (the next leader
    /// reconnects).
    con: Mutex<Option<Connection>>,
    pub commits: AtomicU64,
    pub round_trips: AtomicU64,
}

struct Queue {
    pending: VecDeque<(u64, Cmd)>,
    pending_bytes: usize,
    /// The next ticket (from 1).
    next: u64,
    /// Every ticket up to this one has its outcome.
    answered: u64,
    leading: bool,
    /// The tickets whose commit failed, with why.
    failed: HashMap<u64, Error>,
    /// Each shard's newest ticket.
    newest: HashMap<u64, u64>,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            pending: VecDeque::new(),
            pending_bytes: 0,
            next: 1,
            answered: 0,
            leading: false,
            failed: HashMap::new(),
            newest: HashMap::new(),
        }
    }
}

impl Queue {
    fn outcome(&self, ticket: u64) -> Result<()> {
        match self.failed.get(&ticket) {
            Some(e) => Err(e.duplicate()),
            None => Ok(()),
        }
    }

    /// Records a pipeline's outcomes; after a failure, fails everything
    /// still queued (it was queued behind the failed commits).
    fn record(&mut self, outcomes: Vec<(u64, Result<()>)>) {
        let mut failure = None;
        for (ticket, outcome) in outcomes {
            self.answered = self.answered.max(ticket);
            if let Err(e) = outcome {
                failure.get_or_insert_with(|| e.duplicate());
                self.failed.insert(ticket, e);
            }
        }
        if let Some(e) = failure {
            for (ticket, _) in self.pending.drain(..) {
                self.failed.insert(ticket, e.duplicate());
                self.answered = ticket;
            }
            self.pending_bytes = 0;
        }
    }
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

    /// Queues `cmd` (a script call changing `shards`) and returns its
    /// ticket: once the server answered it, or, `pipelined`, at once
    /// (`wait` answers it).
    pub fn commit(
        &self,
        server: &Server,
        load: &Load,
        cmd: Cmd,
        shards: &[u64],
        pipelined: bool,
    ) -> Result<u64> {
        let mut queue = self.queue.lock();
        for shard in shards {
            if let Some(&newest) = queue.newest.get(shard) {
                if let Some(e) = queue.failed.get(&newest) {
                    return Err(e.duplicate());
                }
            }
        }
        let ticket = queue.next;
        queue.next += 1;
        queue.pending_bytes += cmd.args_iter().map(arg_len).sum::<usize>();
        queue.pending.push_back((ticket, cmd));
        for &shard in shards {
            queue.newest.insert(shard, ticket);
        }
        let full = queue.pending.len() >= MAX_QUEUED || queue.pending_bytes >= MAX_BYTES;
        drop(queue);
        if pipelined && !full {
            return Ok(ticket);
        }
        self.wait(server, load, ticket)?;
        Ok(ticket)
    }

    /// Returns once `ticket` is answered, leading pipelines meanwhile; its
    /// outcome.
    pub fn wait(&self, server: &Server, load: &Load, ticket: u64) -> Result<()> {
        let mut queue = self.queue.lock();
        loop {
            if queue.answered >= ticket {
                return queue.outcome(ticket);
            }
            if queue.leading {
                self.done.wait(&mut queue);
                continue;
            }
            queue.leading = true;
            let batch = take_batch(&mut queue);
            drop(queue);
            let outcomes = self.send(server, load, batch);
            queue = self.queue.lock();
            queue.record(outcomes);
            queue.leading = false;
            self.done.notify_all();
        }
    }

    /// Lets `shard` commit again after a failure, once its shard has
    /// rebuilt its state from what the server holds.
    pub fn forget_failure(&self, shard: u64) {
        self.queue.lock().newest.remove(&shard);
    }

    /// Waits for the newest commit of `shard` (every one, for `None`).
    pub fn flush(&self, server: &Server, load: &Load, shard: Option<u64>) -> Result<()> {
        let ticket = {
            let queue = self.queue.lock();
            match shard {
                Some(shard) => queue.newest.get(&shard).copied().unwrap_or(0),
                None => queue.next - 1,
            }
        };
        self.wait(server, load, ticket)
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
        let mut reused = slot.is_some();
        let mut tries = 0;
        loop {
            match self.try_run(server, load, slot, pipe) {
                Err(Failure::Client(e)) if tries < conn::RETRIES && conn::retryable(&e, reused) => {
                    *slot = None;
                    (reused, tries) = (false, tries + 1);
                }
                other => break other,
            }
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
fn take_batch(queue: &mut Queue) -> Vec<(u64, Cmd)> {
    let mut bytes = 0;
    let mut n = 0;
    for (_, cmd) in queue.pending.iter() {
        let size: usize = cmd.args_iter().map(arg_len).sum();
        if n > 0 && (n == MAX_COMMITS || bytes + size > MAX_BYTES) {
            break;
        }
        bytes += size;
        n += 1;
    }
    queue.pending_bytes = queue.pending_bytes.saturating_sub(bytes);
    queue.pending.drain(..n).collect()
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
        other => other.duplicate(),
    }
}
