//! The object store client: `object_store`'s S3 client (or any
//! `ObjectStore`, in tests) driven from the store's synchronous threads.
//! Requests run on a small runtime of the engine's own and the caller
//! waits on a channel, so a caller that is itself inside some async
//! runtime is not refused. Every call is bounded: the client retries
//! throttling, 5xx and broken connections with backoff up to
//! `s3.retries` times within `s3.io_timeout_ms` per try, and the call
//! gives up after all tries' time.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use parking_lot::{Condvar, Mutex};

use crate::config::S3Config;
use crate::{Error, Result};

/// Requests in flight at once when a call has many (footers at open).
pub const CONCURRENCY: usize = 16;

pub struct Client {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    /// "bucket B at ENDPOINT", for messages (never credentials).
    place: String,
    /// How long one call may take, all its tries included.
    call_timeout: Duration,
    pub counters: Arc<Counters>,
}

#[derive(Default)]
pub struct Counters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub deletes: AtomicU64,
    pub lists: AtomicU64,
    pub failures: AtomicU64,
}

fn total_len(parts: &[Bytes]) -> usize {
    parts.iter().map(Bytes::len).sum()
}

impl Counters {
    /// `requests` GETs answered with `bytes` bytes.
    fn got(&self, requests: u64, bytes: usize) {
        self.gets.fetch_add(requests, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "puts": get(&self.puts),
            "put_bytes": get(&self.put_bytes),
            "gets": get(&self.gets),
            "get_bytes": get(&self.get_bytes),
            "deletes": get(&self.deletes),
            "lists": get(&self.lists),
            "failed_requests": get(&self.failures),
        })
    }
}

/// How a PUT may replace what is there.
pub enum Mode {
    /// Only if nothing is stored under the name (`If-None-Match: *`).
    Create,
    /// Only if what is stored has this ETag (`If-Match`).
    Update(String),
}

pub enum Put {
    /// Stored, with its ETag.
    Stored(String),
    /// The condition failed: something else is stored there.
    Conflict(String),
}

impl Client {
    /// The S3 client `config` (completed by the `AWS_*` variables) names.
    /// `background`: its threads serve background work (see
    /// `thread::lower_priority`).
    pub fn new(config: &S3Config, background: bool) -> Result<Client> {
        let mut builder = AmazonS3Builder::from_env();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = config.endpoint.clone().or_else(|| env("AWS_ENDPOINT"));
        let bucket = config.bucket.clone().or_else(|| env("AWS_BUCKET"));
        let Some(bucket) = bucket else {
            return Err(Error::InvalidConfig(
                "the s3 engine needs a bucket: set s3.bucket in storage.toml or AWS_BUCKET".into(),
            ));
        };
        builder = builder.with_bucket_name(&bucket);
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if config.virtual_hosted_style {
            builder = builder.with_virtual_hosted_style_request(true);
        }
        if config.unsigned_payload {
            builder = builder.with_unsigned_payload(true);
        }
        let plain_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            || env("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1");
        let try_timeout = Duration::from_millis(config.io_timeout_ms);
        let options = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_timeout(try_timeout)
            .with_connect_timeout(Duration::from_millis(config.connect_timeout_ms));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: config.retries as usize,
            retry_timeout: try_timeout * (config.retries + 1),
        };
        let store = builder
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| Error::InvalidConfig(format!("the s3 engine's settings: {e}")))?;
        let place = format!(
            "bucket {bucket} at {}",
            endpoint.as_deref().unwrap_or("AWS")
        );
        // Each try's time, the backoffs between them and one more try.
        let call_timeout = try_timeout * (config.retries + 2) + Duration::from_secs(5);
        Client::with_store(Arc::new(store), place, call_timeout, background)
    }

    /// A client of any object store (tests: in-memory, fault-injecting).
    pub fn with_store(
        store: Arc<dyn ObjectStore>,
        place: String,
        call_timeout: Duration,
        background: bool,
    ) -> Result<Client> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if background {
            builder.on_thread_start(crate::thread::lower_priority);
        }
        let runtime = builder
            .worker_threads(2)
            .thread_name("mqs-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the s3 engine's client threads", e))?;
        Ok(Client {
            store,
            runtime,
            place,
            call_timeout,
            counters: Arc::default(),
        })
    }

    pub fn place(&self) -> &str {
        &self.place
    }

    /// Runs `task` on the client's runtime and waits for it, at most the
    /// call timeout (then the task is cancelled).
    fn run<T, F>(&self, what: &str, path: &Path, task: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        // A mutex and condvar rather than a std channel: std's blocking
        // receive registers the caller's thread with std, which leaks a
        // handle on threads std did not start (a C host's).
        let answer = Arc::new((Mutex::new(None), Condvar::new()));
        let handle = {
            let answer = answer.clone();
            self.runtime.spawn(async move {
                let outcome = task.await;
                *answer.0.lock() = Some(outcome);
                answer.1.notify_one();
            })
        };
        let deadline = Instant::now() + self.call_timeout;
        let mut slot = answer.0.lock();
        while slot.is_none() && !answer.1.wait_until(&mut slot, deadline).timed_out() {}
        let outcome = match slot.take() {
            Some(outcome) => outcome.map_err(|e| self.error(what, path, e)),
            None => {
                handle.abort();
                Err(Error::io(
                    format!("S3 {what} {path} ({})", self.place),
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.call_timeout),
                    ),
                ))
            }
        };
        if outcome.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn error(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Error::io(
            format!("S3 {what} {path} ({})", self.place),
            io::Error::new(kind, e.to_string()),
        )
    }

    /// Stores `payload` at `path` under the condition `mode`.
    pub fn put(&self, path: &Path, payload: PutPayload, mode: Mode) -> Result<Put> {
        let len = payload.content_length() as u64;
        let mode = match mode {
            Mode::Create => PutMode::Create,
            Mode::Update(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let (store, at) = (self.store.clone(), path.clone());
        let outcome = self.run("PUT", path, async move {
            match store.put_opts(&at, payload, PutOptions::from(mode)).await {
                Ok(done) => Ok(Ok(done.e_tag.unwrap_or_default())),
                Err(
                    e @ (object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }),
                ) => Ok(Err(e.to_string())),
                Err(e) => Err(e),
            }
        })?;
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        Ok(match outcome {
            Ok(e_tag) => {
                self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
                Put::Stored(e_tag)
            }
            Err(message) => Put::Conflict(message),
        })
    }

    /// The whole object at `path` and its ETag; `None` if there is none.
    pub fn get(&self, path: &Path) -> Result<Option<(Bytes, String)>> {
        let (store, at) = (self.store.clone(), path.clone());
        let found = self.run("GET", path, async move {
            match store.get(&at).await {
                Ok(result) => {
                    let e_tag = result.meta.e_tag.clone().unwrap_or_default();
                    Ok(Some((result.bytes().await?, e_tag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        self.counters
            .got(1, found.as_ref().map_or(0, |(bytes, _)| bytes.len()));
        Ok(found)
    }

    /// The bytes of `ranges` of the object at `path` (ranged GETs, nearby
    /// ranges coalesced by the client).
    pub fn get_ranges(&self, path: &Path, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>> {
        let (store, at) = (self.store.clone(), path.clone());
        let parts = self.run("ranged GET", path, async move {
            store.get_ranges(&at, &ranges).await
        })?;
        self.counters.got(1, total_len(&parts));
        Ok(parts)
    }

    /// Starts ranged GETs of `ranges` of the object at `path` and returns
    /// at once; `done` gets the parts on the client's runtime, or `None`
    /// when they failed or took longer than a call may (a read-ahead that
    /// failed is left to the read that needs the bytes, which reports it).
    pub fn get_ranges_in_background(
        &self,
        path: &Path,
        ranges: Vec<Range<u64>>,
        done: impl FnOnce(Option<Vec<Bytes>>) + Send + 'static,
    ) {
        let (store, at) = (self.store.clone(), path.clone());
        let (counters, timeout) = (self.counters.clone(), self.call_timeout);
        self.runtime.spawn(async move {
            let fetch = store.get_ranges(&at, &ranges);
            let parts = match tokio::time::timeout(timeout, fetch).await {
                Ok(Ok(parts)) => Some(parts),
                _ => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            counters.got(1, parts.as_deref().map_or(0, total_len));
            done(parts);
        });
    }

    /// One ranged GET of each `(path, range)`, `CONCURRENCY` at a time.
    pub fn get_many(&self, what: &str, reads: Vec<(Path, Range<u64>)>) -> Result<Vec<Bytes>> {
        let count = reads.len() as u64;
        let store = self.store.clone();
        let parts = self.run(what, &Path::from(""), async move {
            futures::stream::iter(reads)
                .map(|(path, range)| {
                    let store = store.clone();
                    async move { store.get_range(&path, range).await }
                })
                .buffered(CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await
        })?;
        self.counters.got(count, total_len(&parts));
        Ok(parts)
    }

    /// The "directories" right under `prefix` (`list_with_delimiter`).
    pub fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        let (store, at) = (self.store.clone(), prefix.clone());
        let listed = self.run("LIST", prefix, async move {
            store.list_with_delimiter(Some(&at)).await
        })?;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        Ok(listed.common_prefixes)
    }

    /// Every object under `prefix`.
    pub fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        let (store, at) = (self.store.clone(), prefix.clone());
        let listed = self.run("LIST", prefix, async move {
            store
                .list(Some(&at))
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>()
                .await
        })?;
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        Ok(listed)
    }

    /// Deletes the objects at `paths` (already gone is fine).
    pub fn delete(&self, paths: Vec<Path>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let count = paths.len() as u64;
        let first = paths[0].clone();
        let store = self.store.clone();
        self.run("DELETE", &first, async move {
            futures::stream::iter(paths)
                .map(|path| {
                    let store = store.clone();
                    async move {
                        match store.delete(&path).await {
                            Err(object_store::Error::NotFound { .. }) => Ok(()),
                            other => other,
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
        })?;
        self.counters.deletes.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }
}
