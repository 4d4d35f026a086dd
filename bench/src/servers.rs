//! The server engines (`engine = "mysql"`, `engine = "redis"`) against
//! their servers driven directly by the same client crates, in the same
//! run, on the same servers: the ratio is what the engine's layer (the
//! batch encoding, the extra statements of its transaction or its Lua
//! script, the index it keeps) costs over the bare client.
//!
//! | metric | what one op is |
//! |---|---|
//! | `raw.mysql_insert_64k_commit.ops_per_s` | a prepared `INSERT` of one 64 KiB LONGBLOB row, autocommit (one round trip, one COMMIT) |
//! | `mysql.append_1k_batch64_fsync.msgs_per_s` | `Store::append_batch` of 64 × 1 KiB, durability fsync (one transaction per batch) |
//! | `raw.redis_xadd_64k.ops_per_s` | `XADD key * b <64 KiB>`, waiting for the reply |
//! | `redis.append_1k_batch64.msgs_per_s` | `Store::append_batch` of 64 × 1 KiB, durability fsync (one `EVALSHA` per batch) |
//! | `raw.redis_xadd_1k.p99_us`, `redis.append_1k_single.p99_us` | one 1 KiB XADD / `Store::append` of one 1 KiB record, closed loop |
//!
//! One client thread on both sides (and a `_t4` row with four). The two
//! sides alternate in rounds (raw, engine, raw, engine, ...; 2 × reps
//! rounds of headline_secs / 2 each), so drift of a shared machine and its
//! disk hits both alike, and each ratio is the median of the rounds'
//! ratios. The servers are the ones `MQS_MYSQL_URL` and
//! `MQS_REDIS_URL` name (`scripts/with-servers.sh` starts private ones:
//! `make bench` runs the harness under it); without them every metric of
//! this section fails, naming the missing variable.
//!
//! What each op costs is read from counters around each timed run (MariaDB
//! `SHOW GLOBAL STATUS`: statements, commits, InnoDB fsyncs, redo bytes;
//! Redis `INFO`: commands, CPU per call, forks; the CPU time of the server
//! process and of the client's own, from /proc) and kept in the params as
//! per-op medians (`server_counters_per_op`). The data of each run is removed after it
//! (tables dropped, keys unlinked), so the servers do not grow over a run.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqstore::{Config, Durability, EngineKind, Record, Store};
use serde_json::{json, Value};

use crate::engine::{self, to_io, AppendSpec, BenchStore};
use crate::util::{self, Stats};
use crate::{Plan, Results};

pub const MYSQL_URL_ENV: &str = "MQS_MYSQL_URL";
pub const REDIS_URL_ENV: &str = "MQS_REDIS_URL";

/// The section's workload groups, each run in its own child process.
pub const GROUPS: [&str; 3] = ["mysql", "redis", "s3"];

/// Records per engine batch: the raw side's op carries one batch's worth.
const BATCH: usize = 64;
const RECORD: usize = 1024;
const RAW_ROW: usize = RECORD * BATCH;
/// Client threads of the optional many-producer rows.
const WIDE: usize = 4;

/// The metrics each group must produce (failed with the group's error when
/// it could not run).
pub const MYSQL_METRICS: [(&str, &str); 5] = [
    ("raw.mysql_insert_64k_commit.ops_per_s", "ops/s"),
    ("mysql.append_1k_batch64_fsync.msgs_per_s", "msgs/s"),
    ("mysql_vs_raw.append_1k_batch64_fsync.ratio", "x"),
    ("raw.mysql_insert_64k_commit_t4.ops_per_s", "ops/s"),
    ("mysql.append_1k_batch64_fsync_t4_s4.msgs_per_s", "msgs/s"),
];

pub const REDIS_METRICS: [(&str, &str); 9] = [
    ("raw.redis_xadd_64k.ops_per_s", "ops/s"),
    ("redis.append_1k_batch64.msgs_per_s", "msgs/s"),
    ("redis_vs_raw.append_1k_batch64.ratio", "x"),
    ("raw.redis_xadd_64k_t4.ops_per_s", "ops/s"),
    ("redis.append_1k_batch64_t4_s4.msgs_per_s", "msgs/s"),
    ("raw.redis_xadd_1k.p50_us", "us"),
    ("raw.redis_xadd_1k.p99_us", "us"),
    ("redis.append_1k_single.p50_us", "us"),
    ("redis.append_1k_single.p99_us", "us"),
];

pub fn metrics(group: &str) -> &'static [(&'static str, &'static str)] {
    match group {
        "mysql" => &MYSQL_METRICS,
        "s3" => &crate::s3::METRICS,
        _ => &REDIS_METRICS,
    }
}

/// The URL the group's server is at, or why there is none.
pub fn url(group: &str) -> Result<String, String> {
    let (var, example) = match group {
        "s3" => (
            crate::s3::ENDPOINT_ENV,
            "http://127.0.0.1:9000 (and AWS_BUCKET, AWS_ACCESS_KEY_ID, ...)",
        ),
        "mysql" => (
            MYSQL_URL_ENV,
            "mysql://user:password@127.0.0.1:3306/database",
        ),
        _ => (REDIS_URL_ENV, "redis://:password@127.0.0.1:6379/"),
    };
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => Err(format!(
            "{var} is not set: the servers section needs a running server; run the bench under \
             scripts/with-servers.sh (make bench and make bench-quick do), or export {var}={example}"
        )),
    }
}

/// Marks every metric of `group` failed with `error`.
pub fn fail_group(group: &str, error: &str, results: &mut Results) {
    for (name, unit) in metrics(group) {
        if results.get(name).is_none() {
            results.failed(name, unit, error);
        }
    }
}

pub fn run_group(group: &str, base: &Path, plan: &Plan, results: &mut Results) {
    println!("== servers: {group}");
    let url = match url(group) {
        Ok(url) => url,
        Err(error) => {
            eprintln!("bench: {error}");
            return fail_group(group, &error, results);
        }
    };
    let outcome = match group {
        "mysql" => mysql_group(&url, base, plan, results),
        "redis" => redis_group(&url, base, plan, results),
        "s3" => crate::s3::group(base, plan, results),
        other => Err(io::Error::other(format!(
            "unknown workload group '{other}'"
        ))),
    };
    if let Err(e) = outcome {
        eprintln!("bench: servers {group}: {e}");
        fail_group(group, &e.to_string(), results);
    }
}

/// Rounds of a throughput comparison and each side's seconds per round:
/// the plan's time, cut in twice as many shorter rounds, so that a stall
/// of the shared disk (seconds long) lands in fewer of them and the two
/// sides of a round see the same disk more often.
fn rounds(plan: &Plan) -> (usize, f64) {
    (plan.reps * 2, plan.headline_secs / 2.0)
}

/// One timed run: its rate and the server's counters per op over it.
struct Rep {
    rate: f64,
    per_op: BTreeMap<String, f64>,
    /// What the engine's own stats said after the run (engine side only).
    engine_stats: Option<Value>,
}

/// One side of a comparison, accumulated over rounds. After an error it
/// stops running, and reports the error.
#[derive(Default)]
struct Side {
    rates: Vec<f64>,
    per_op: BTreeMap<String, Vec<f64>>,
    engine_stats: Option<Value>,
    error: Option<String>,
}

impl Side {
    fn run(&mut self, measure: impl FnOnce() -> io::Result<Rep>) {
        if self.error.is_some() {
            return;
        }
        match measure() {
            Ok(rep) => {
                self.rates.push(rep.rate);
                for (key, value) in rep.per_op {
                    self.per_op.entry(key).or_default().push(value);
                }
                if rep.engine_stats.is_some() {
                    self.engine_stats = rep.engine_stats;
                }
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn report(&self, results: &mut Results, name: &str, unit: &str, mut p: Value) {
        if let Some(error) = &self.error {
            return results.failed(name, unit, error);
        }
        let medians: serde_json::Map<String, Value> = self
            .per_op
            .iter()
            .map(|(k, v)| (k.clone(), json!(Stats::new(v.clone()).median())))
            .collect();
        p["server_counters_per_op"] = Value::Object(medians);
        if let Some(stats) = &self.engine_stats {
            p["engine_stats_last_rep"] = stats.clone();
        }
        results.stats(name, &Stats::new(self.rates.clone()), unit, p);
    }
}

/// `engine msgs/s / (raw ops/s × 64)` per round, as a metric of its own.
fn ratio(
    results: &mut Results,
    name: &str,
    (engine_name, engine): (&str, &Side),
    (raw_name, raw): (&str, &Side),
) {
    if let Some(error) = engine.error.as_ref().or(raw.error.as_ref()) {
        return results.failed(name, "x", &format!("a side failed: {error}"));
    }
    let rounds: Vec<f64> = engine
        .rates
        .iter()
        .zip(&raw.rates)
        .filter(|(_, r)| **r > 0.0)
        .map(|(e, r)| e / (r * BATCH as f64))
        .collect();
    if rounds.is_empty() {
        return results.failed(name, "x", "no round measured both sides");
    }
    let p = json!({
        "engine": engine_name, "raw": raw_name,
        "measured": format!(
            "per round: engine msgs/s / (raw ops/s x {BATCH}), the two measured back to back; \
             the median of the rounds"
        ),
        "target": "at least 0.7",
        "note": format!(
            "{} vs {} x {BATCH} msgs/s (medians)",
            crate::results::human(Stats::new(engine.rates.clone()).median()),
            crate::results::human(Stats::new(raw.rates.clone()).median())
        ),
    });
    results.stats(name, &Stats::new(rounds), "x", p);
}

/// In the parent, once every section ran: each engine row's ratio to its
/// raw row × 64 beside it in the table (the `_ratio` metrics are the
/// per-round medians).
pub fn compare(results: &mut Results) {
    let scale = 1.0 / BATCH as f64;
    let basis = "engine msgs/s / (raw ops/s x 64), medians";
    for (engine, raw) in [
        (
            "mysql.append_1k_batch64_fsync.msgs_per_s",
            "raw.mysql_insert_64k_commit.ops_per_s",
        ),
        (
            "mysql.append_1k_batch64_fsync_t4_s4.msgs_per_s",
            "raw.mysql_insert_64k_commit_t4.ops_per_s",
        ),
        (
            "redis.append_1k_batch64.msgs_per_s",
            "raw.redis_xadd_64k.ops_per_s",
        ),
        (
            "redis.append_1k_batch64_t4_s4.msgs_per_s",
            "raw.redis_xadd_64k_t4.ops_per_s",
        ),
    ] {
        results.compare(engine, raw, scale, basis);
    }
    for suffix in ["p50_us", "p99_us"] {
        results.compare(
            &format!("redis.append_1k_single.{suffix}"),
            &format!("raw.redis_xadd_1k.{suffix}"),
            1.0,
            "engine / raw XADD of 1 KiB, both closed loop",
        );
    }
}

/// A name no earlier run used: the server may outlive this process.
fn unique(prefix: &str, sep: char) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}{sep}{}{sep}{:x}{sep}{}{sep}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    util::fill_pseudo_random(&mut data, seed);
    data
}

/// Runs `threads` clients, each set up by `setup` (its connection) before
/// the clock starts, then calling `op` until `duration` passed; returns the
/// ops per second of them all.
fn timed_clients<C: Send>(
    threads: usize,
    duration: Duration,
    setup: impl Fn(usize) -> io::Result<C> + Sync,
    op: impl Fn(&mut C, usize, u64) -> io::Result<()> + Sync,
) -> io::Result<f64> {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, setup, op) = (&barrier, &setup, &op);
                scope.spawn(move || -> io::Result<(u64, Instant)> {
                    let client = setup(t);
                    // Everyone passes the barrier, ready or not, so that a
                    // failed setup cannot leave the others waiting.
                    barrier.wait();
                    let mut client = client?;
                    let start = Instant::now();
                    let mut ops = 0u64;
                    while start.elapsed() < duration {
                        op(&mut client, t, ops)?;
                        ops += 1;
                    }
                    Ok((ops, Instant::now()))
                })
            })
            .collect();
        util::joined_rate(&barrier, workers)
    })
}

/// CPU time (user + system) of process `pid` ("self" for this one) so
/// far, µs, from /proc (USER_HZ is 100 on Linux): `None` when the process
/// is not visible from here.
fn cpu_us(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10_000.0)
}

/// The client's own CPU time, added to a server's counters.
fn with_client_cpu(mut counters: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    if let Some(us) = cpu_us("self") {
        counters.insert("client_cpu_us".into(), us);
    }
    counters
}

/// `after - before` per op, for the counters both readings have.
fn per_op(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    ops: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, a)| Some((k.clone(), (a - before.get(k)?) / ops.max(1.0))))
        .collect()
}

/// The engine's own counters (`Store::shard_stats`, under its name).
fn engine_stats(store: &Store, shard: &str, engine: &str) -> Option<Value> {
    store
        .shard_stats(shard)
        .ok()
        .and_then(|s| s.get("engine_stats")?.get(engine).cloned())
}

// ------------------------------------------------------------------ MySQL

mod my {
    use std::collections::BTreeMap;
    use std::io;

    use mysql::prelude::Queryable;
    use mysql::{Conn, Opts, OptsBuilder};

    /// Errors without the URL (it may hold the password).
    pub fn err(doing: &str, e: mysql::Error) -> io::Error {
        match e {
            mysql::Error::UrlError(_) => io::Error::other(format!(
                "{}: not a valid mysql:// URL",
                super::MYSQL_URL_ENV
            )),
            e => io::Error::other(format!("MySQL server, {doing}: {e}")),
        }
    }

    /// A connection to the URL's database, created first when missing (as
    /// the engine does).
    pub fn connect(url: &str) -> io::Result<Conn> {
        let opts = Opts::from_url(url).map_err(|e| err("parsing the URL", e.into()))?;
        match Conn::new(opts.clone()) {
            Err(mysql::Error::MySqlError(e)) if e.code == 1049 => {
                let database = opts.get_db_name().unwrap_or_default().to_string();
                let bare = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>);
                let mut conn = Conn::new(bare).map_err(|e| err("connecting", e))?;
                conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS `{database}`"))
                    .map_err(|e| err("creating the database", e))?;
                Conn::new(opts).map_err(|e| err("connecting", e))
            }
            other => other.map_err(|e| err("connecting", e)),
        }
    }

    /// The server's global counters this section reports per op.
    pub fn status(conn: &mut Conn) -> io::Result<BTreeMap<String, f64>> {
        let rows: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_commit', \
                 'Handler_commit', 'Innodb_os_log_fsyncs', 'Innodb_data_fsyncs', \
                 'Innodb_os_log_written', 'Bytes_received')",
            )
            .map_err(|e| err("reading its status", e))?;
        let mut out: BTreeMap<String, f64> = rows
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.parse().ok()?)))
            .collect();
        // The server's CPU time, when it runs on this machine.
        let pid_file: Option<String> = conn
            .query_first("SELECT @@pid_file")
            .map_err(|e| err("reading its settings", e))?;
        let pid = pid_file.and_then(|f| std::fs::read_to_string(f).ok());
        if let Some(us) = pid.and_then(|pid| super::cpu_us(pid.trim())) {
            out.insert("server_cpu_us".into(), us);
        }
        Ok(super::with_client_cpu(out))
    }

    /// Drops every table of the current database whose name starts with
    /// `prefix`.
    pub fn drop_tables(conn: &mut Conn, prefix: &str) -> io::Result<()> {
        let tables: Vec<String> = conn
            .query(
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE()",
            )
            .map_err(|e| err("listing tables", e))?;
        for table in tables.iter().filter(|t| t.starts_with(prefix)) {
            conn.query_drop(format!("DROP TABLE IF EXISTS `{table}`"))
                .map_err(|e| err("dropping a table", e))?;
        }
        Ok(())
    }
}

fn mysql_group(url: &str, base: &Path, plan: &Plan, results: &mut Results) -> io::Result<()> {
    use mysql::prelude::Queryable;

    let mut admin = my::connect(url)?;
    let vars: Option<(String, String, String, String, String, String)> = admin
        .query_first(
            "SELECT @@version, @@innodb_flush_log_at_trx_commit, @@sync_binlog, @@log_bin, \
             @@autocommit, @@datadir",
        )
        .map_err(|e| my::err("reading its settings", e))?;
    let (version, flush, sync_binlog, log_bin, autocommit, datadir) =
        vars.ok_or_else(|| io::Error::other("the server answered no settings"))?;
    let server = json!({
        "server_version": version, "innodb_flush_log_at_trx_commit": flush,
        "sync_binlog": sync_binlog, "log_bin": log_bin, "autocommit": autocommit,
        "url_from": MYSQL_URL_ENV,
    });
    let (round_count, round_secs) = rounds(plan);
    let secs = Duration::from_secs_f64(round_secs);
    let row = pseudo_random(RAW_ROW, 64);

    for (threads, raw_name, engine_name, ratio_name) in [
        (
            1,
            "raw.mysql_insert_64k_commit.ops_per_s",
            "mysql.append_1k_batch64_fsync.msgs_per_s",
            "mysql_vs_raw.append_1k_batch64_fsync.ratio",
        ),
        (
            WIDE,
            "raw.mysql_insert_64k_commit_t4.ops_per_s",
            "mysql.append_1k_batch64_fsync_t4_s4.msgs_per_s",
            "mysql_vs_raw.append_1k_batch64_fsync_t4_s4.ratio",
        ),
    ] {
        let (mut raw, mut eng) = (Side::default(), Side::default());
        for _ in 0..round_count {
            raw.run(|| mysql_raw_rep(url, &mut admin, &row, threads, secs));
            eng.run(|| mysql_engine_rep(url, &mut admin, base, threads, secs));
        }
        let mut p = server.clone();
        p["row_bytes"] = json!(RAW_ROW);
        p["threads"] = json!(threads);
        p["table"] = json!(
            "shard_id BIGINT, base_offset BIGINT, bytes LONGBLOB, PRIMARY KEY (shard_id, \
             base_offset), InnoDB; a fresh table per rep, dropped after it"
        );
        p["api"] = json!(
            "prepared INSERT (COM_STMT_EXECUTE) with autocommit: one round trip and one commit \
             per row; each client thread its own connection and shard_id"
        );
        p["crate"] = json!("mysql 28 (minimal), the engine's client");
        p["seconds_per_rep"] = json!(round_secs);
        raw.report(results, raw_name, "ops/s", p);
        let spec = append_spec(threads);
        let mut p = spec.params(&engine::options(EngineKind::Mysql, Durability::Fsync, 0));
        p["server"] = server.clone();
        p["seconds_per_rep"] = json!(round_secs);
        p["retention"] = json!(
            "none while measuring (no deletes in the transaction, like the raw side); the \
             store's tables are dropped after each rep"
        );
        p["beside"] = json!(format!("{raw_name} x {BATCH}"));
        eng.report(results, engine_name, "msgs/s", p);
        ratio(results, ratio_name, (engine_name, &eng), (raw_name, &raw));
    }

    let disk_dir = Path::new(&datadir).parent().map(Path::to_path_buf);
    server_disk(results, plan, disk_dir);
    Ok(())
}

fn append_spec(threads: usize) -> AppendSpec {
    AppendSpec {
        record_size: RECORD,
        batch: BATCH,
        threads,
        shards: threads,
        window: 0,
    }
}

fn mysql_raw_rep(
    url: &str,
    admin: &mut mysql::Conn,
    row: &[u8],
    threads: usize,
    duration: Duration,
) -> io::Result<Rep> {
    use mysql::prelude::Queryable;

    let table = unique("mqsb_raw", '_').trim_end_matches('_').to_string();
    admin
        .query_drop(format!(
            "CREATE TABLE `{table}` (shard_id BIGINT NOT NULL, base_offset BIGINT NOT NULL, \
             bytes LONGBLOB NOT NULL, PRIMARY KEY (shard_id, base_offset)) ENGINE=InnoDB"
        ))
        .map_err(|e| my::err("creating the table", e))?;
    let before = my::status(admin)?;
    let insert = format!("INSERT INTO `{table}` (shard_id, base_offset, bytes) VALUES (?, ?, ?)");
    let rate = timed_clients(
        threads,
        duration,
        |_| {
            let mut conn = my::connect(url)?;
            let stmt = conn
                .prep(&insert)
                .map_err(|e| my::err("preparing the INSERT", e))?;
            Ok((conn, stmt))
        },
        |(conn, stmt), t, i| {
            conn.exec_drop(&*stmt, (t as u64, i, row))
                .map_err(|e| my::err("inserting", e))
        },
    );
    let after = my::status(admin);
    let dropped = admin
        .query_drop(format!("DROP TABLE IF EXISTS `{table}`"))
        .map_err(|e| my::err("dropping the table", e));
    let rate = rate?;
    dropped?;
    let ops = rate * duration.as_secs_f64();
    Ok(Rep {
        rate,
        per_op: per_op(&before, &after?, ops),
        engine_stats: None,
    })
}

fn mysql_engine_rep(
    url: &str,
    admin: &mut mysql::Conn,
    base: &Path,
    threads: usize,
    duration: Duration,
) -> io::Result<Rep> {
    let prefix = unique("mqsb", '_');
    let mut config = Config::default();
    config.mysql.url = Some(url.to_string());
    config.mysql.key_prefix = prefix.clone();
    let outcome = (|| -> io::Result<Rep> {
        let bench = BenchStore::open_with(base, config)?;
        let spec = append_spec(threads);
        let options = engine::options(EngineKind::Mysql, Durability::Fsync, 0);
        let names = engine::create_append_shards(&bench.store, &options, spec.shards)?;
        let before = my::status(admin)?;
        let start = Instant::now();
        let rate = engine::append_run(&bench.store, &names, spec, duration, u64::MAX)?;
        let ops = rate * start.elapsed().as_secs_f64() / BATCH as f64;
        let after = my::status(admin)?;
        let stats = engine_stats(&bench.store, &names[0], "mysql");
        bench.store.close().map_err(to_io)?;
        Ok(Rep {
            rate,
            per_op: per_op(&before, &after, ops),
            engine_stats: stats,
        })
    })();
    let dropped = my::drop_tables(admin, &prefix);
    let rep = outcome?;
    dropped?;
    Ok(rep)
}

/// Appends of 64 KiB, each followed by fdatasync, next to the server's
/// data (same filesystem): the floor under both servers' commits.
fn server_disk(results: &mut Results, plan: &Plan, dir: Option<PathBuf>) {
    use std::io::Write;
    let name = "raw.server_disk_fdatasync_64k.ops_per_s";
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return results.absent(
            name,
            "ops/s",
            "the MySQL server's data directory is not on this machine",
        );
    };
    let data = pseudo_random(RAW_ROW, 7);
    let secs = Duration::from_secs_f64(plan.headline_secs);
    let measured = util::repeat(plan.reps, || {
        let mut file = tempfile::Builder::new()
            .prefix("mqsb-fsync-")
            .tempfile_in(&dir)?;
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < secs {
            file.write_all(&data)?;
            file.as_file().sync_data()?;
            ops += 1;
        }
        Ok(ops as f64 / start.elapsed().as_secs_f64())
    });
    let p = json!({
        "dir": dir.display().to_string(),
        "measured": "write(64 KiB) + fdatasync appended to one file beside the MySQL server's \
                     data directory: what one durable commit of one client costs the disk \
                     there, with no server in the way",
        "seconds_per_rep": plan.headline_secs,
    });
    results.stats_or_failed(name, measured, "ops/s", p);
}

// ------------------------------------------------------------------ Redis

mod rd {
    use std::collections::BTreeMap;
    use std::io;

    use redis::Connection;

    pub fn err(doing: &str, e: redis::RedisError) -> io::Error {
        io::Error::other(format!("Redis server, {doing}: {e}"))
    }

    pub fn connect(url: &str) -> io::Result<Connection> {
        let client = redis::Client::open(url).map_err(|_| {
            io::Error::other(format!(
                "{}: not a valid redis:// URL",
                super::REDIS_URL_ENV
            ))
        })?;
        client.get_connection().map_err(|e| err("connecting", e))
    }

    /// The server's counters this section reports per op: commands,
    /// bytes in, forks (an AOF rewrite forks), its CPU time, and calls and
    /// CPU time of the commands the two sides send.
    pub fn status(con: &mut Connection) -> io::Result<BTreeMap<String, f64>> {
        let text: String = redis::cmd("INFO")
            .arg("all")
            .query(con)
            .map_err(|e| err("reading INFO", e))?;
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            match key {
                "total_commands_processed" | "total_net_input_bytes" | "total_forks" => {
                    if let Ok(v) = value.parse() {
                        out.insert(key.to_string(), v);
                    }
                }
                "used_cpu_sys" | "used_cpu_user" => {
                    if let Ok(v) = value.parse::<f64>() {
                        *out.entry("server_cpu_us".to_string()).or_default() += v * 1e6;
                    }
                }
                "cmdstat_xadd" | "cmdstat_evalsha" => {
                    for field in value.split(',') {
                        if let Some((k, v)) = field.split_once('=') {
                            if matches!(k, "calls" | "usec") {
                                if let Ok(v) = v.parse() {
                                    let name = key.trim_start_matches("cmdstat_");
                                    out.insert(format!("{name}_{k}"), v);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(super::with_client_cpu(out))
    }

    /// Unlinks every key that starts with `prefix` (glob-safe characters).
    pub fn delete_prefix(con: &mut Connection, prefix: &str) -> io::Result<()> {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(con)
                .map_err(|e| err("listing keys", e))?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(keys)
                    .query::<redis::Value>(con)
                    .map_err(|e| err("deleting keys", e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn redis_group(url: &str, base: &Path, plan: &Plan, results: &mut Results) -> io::Result<()> {
    let mut admin = rd::connect(url)?;
    let mut setting = |name: &str| -> io::Result<String> {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query(&mut admin)
            .map_err(|e| rd::err("reading its settings", e))?;
        Ok(pair.get(1).cloned().unwrap_or_default())
    };
    let server = json!({
        "appendonly": setting("appendonly")?, "appendfsync": setting("appendfsync")?,
        "url_from": REDIS_URL_ENV,
    });
    let (round_count, round_secs) = rounds(plan);
    let secs = Duration::from_secs_f64(round_secs);
    let entry = pseudo_random(RAW_ROW, 64);

    for (threads, raw_name, engine_name, ratio_name) in [
        (
            1,
            "raw.redis_xadd_64k.ops_per_s",
            "redis.append_1k_batch64.msgs_per_s",
            "redis_vs_raw.append_1k_batch64.ratio",
        ),
        (
            WIDE,
            "raw.redis_xadd_64k_t4.ops_per_s",
            "redis.append_1k_batch64_t4_s4.msgs_per_s",
            "redis_vs_raw.append_1k_batch64_t4_s4.ratio",
        ),
    ] {
        let (mut raw, mut eng) = (Side::default(), Side::default());
        for _ in 0..round_count {
            raw.run(|| redis_raw_rep(url, &mut admin, &entry, threads, secs));
            eng.run(|| redis_engine_rep(url, &mut admin, base, threads, secs));
        }
        let mut p = server.clone();
        p["entry_bytes"] = json!(RAW_ROW);
        p["threads"] = json!(threads);
        p["api"] = json!(
            "XADD <key> * b <64 KiB>, waiting for each reply; each client thread its own \
             connection and stream, unlinked after the rep"
        );
        p["crate"] = json!("redis 1.8 (streams, script), the engine's client");
        p["seconds_per_rep"] = json!(round_secs);
        raw.report(results, raw_name, "ops/s", p);
        let spec = append_spec(threads);
        let mut p = spec.params(&engine::options(EngineKind::Redis, Durability::Fsync, 0));
        p["server"] = server.clone();
        p["seconds_per_rep"] = json!(round_secs);
        p["retention"] = json!(
            "none while measuring (no trims, like the raw side); the store's keys are unlinked \
             after each rep"
        );
        p["beside"] = json!(format!("{raw_name} x {BATCH}"));
        eng.report(results, engine_name, "msgs/s", p);
        ratio(results, ratio_name, (engine_name, &eng), (raw_name, &raw));
    }

    redis_latency(url, base, plan, results, &server);
    Ok(())
}

fn redis_raw_rep(
    url: &str,
    admin: &mut redis::Connection,
    entry: &[u8],
    threads: usize,
    duration: Duration,
) -> io::Result<Rep> {
    let prefix = unique("mqsb:raw", ':');
    let before = rd::status(admin)?;
    let rate = timed_clients(
        threads,
        duration,
        |t| Ok((rd::connect(url)?, format!("{prefix}{t}"))),
        |(con, key), _, _| {
            redis::cmd("XADD")
                .arg(&*key)
                .arg("*")
                .arg("b")
                .arg(entry)
                .query::<redis::Value>(con)
                .map(drop)
                .map_err(|e| rd::err("XADD", e))
        },
    );
    let after = rd::status(admin);
    let deleted = rd::delete_prefix(admin, &prefix);
    let rate = rate?;
    deleted?;
    Ok(Rep {
        rate,
        per_op: per_op(&before, &after?, rate * duration.as_secs_f64()),
        engine_stats: None,
    })
}

fn redis_store(url: &str, base: &Path) -> io::Result<(BenchStore, String)> {
    let prefix = unique("mqsb", ':');
    let mut config = Config::default();
    config.redis.url = Some(url.to_string());
    config.redis.key_prefix = prefix.clone();
    Ok((BenchStore::open_with(base, config)?, prefix))
}

fn redis_engine_rep(
    url: &str,
    admin: &mut redis::Connection,
    base: &Path,
    threads: usize,
    duration: Duration,
) -> io::Result<Rep> {
    let (bench, prefix) = redis_store(url, base)?;
    let outcome = (|| -> io::Result<Rep> {
        let spec = append_spec(threads);
        let options = engine::options(EngineKind::Redis, Durability::Fsync, 0);
        let names = engine::create_append_shards(&bench.store, &options, spec.shards)?;
        let before = rd::status(admin)?;
        let start = Instant::now();
        let rate = engine::append_run(&bench.store, &names, spec, duration, u64::MAX)?;
        let ops = rate * start.elapsed().as_secs_f64() / BATCH as f64;
        let after = rd::status(admin)?;
        Ok(Rep {
            rate,
            per_op: per_op(&before, &after, ops),
            engine_stats: engine_stats(&bench.store, &names[0], "redis"),
        })
    })();
    let closed = bench.store.close().map_err(to_io);
    drop(bench);
    let deleted = rd::delete_prefix(admin, &prefix);
    let rep = outcome?;
    closed?;
    deleted?;
    Ok(rep)
}

fn histogram() -> io::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(io::Error::other)
}

/// One round of the latency comparison: for `duration`, a 1 KiB XADD on
/// a raw connection, then `Store::append` of one 1 KiB record, then the
/// XADD again, ...: one call in flight at a time, each timed alone, so both
/// sides see the same phases of the shared disk (its fsync time moves
/// between ~0.2 and ~4 ms from one few-second stretch to the next).
fn latency_round(url: &str, base: &Path, duration: Duration) -> io::Result<[Histogram<u64>; 2]> {
    let mut con = rd::connect(url)?;
    let key = format!("{}lat", unique("mqsb:raw", ':'));
    let (bench, prefix) = redis_store(url, base)?;
    let entry = pseudo_random(RECORD, 99);
    let record = Record::new(&entry);
    let mut histograms = [histogram()?, histogram()?];
    let outcome = (|| -> io::Result<()> {
        bench
            .store
            .create_shard_with(
                "lat",
                engine::options(EngineKind::Redis, Durability::Fsync, 0),
            )
            .map_err(to_io)?;
        let start = Instant::now();
        while start.elapsed() < duration {
            let began = Instant::now();
            redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("b")
                .arg(&entry[..])
                .query::<redis::Value>(&mut con)
                .map_err(|e| rd::err("XADD", e))?;
            histograms[0].saturating_record(began.elapsed().as_nanos() as u64);
            let began = Instant::now();
            bench.store.append("lat", &record).map_err(to_io)?;
            histograms[1].saturating_record(began.elapsed().as_nanos() as u64);
        }
        Ok(())
    })();
    let closed = bench.store.close().map_err(to_io);
    drop(bench);
    let deleted = rd::delete_prefix(&mut con, &prefix).and_then(|()| {
        redis::cmd("UNLINK")
            .arg(&key)
            .query::<redis::Value>(&mut con)
            .map(drop)
            .map_err(|e| rd::err("deleting the stream", e))
    });
    outcome?;
    closed?;
    deleted?;
    Ok(histograms)
}

/// p50/p99/p999/max of single 1 KiB writes, closed loop, engine and raw
/// interleaved op by op (`latency_round`); each figure the median of the
/// rounds'.
fn redis_latency(url: &str, base: &Path, plan: &Plan, results: &mut Results, server: &Value) {
    let secs = Duration::from_secs_f64(plan.latency_secs);
    let runs = (0..plan.reps)
        .map(|_| latency_round(url, base, secs))
        .collect::<io::Result<Vec<_>>>();
    let rows = [
        (
            "raw.redis_xadd_1k",
            "XADD <key> * b <1 KiB>, waiting for the reply",
        ),
        (
            "redis.append_1k_single",
            "Store::append of one 1 KiB record, durability fsync (one EVALSHA per append)",
        ),
    ];
    for (side, (prefix, api)) in rows.into_iter().enumerate() {
        let mut p = server.clone();
        p["api"] = json!(api);
        p["load"] = json!(
            "closed loop, one client: the raw call and the engine's alternate op by op (raw, \
             engine, raw, ...), one in flight at a time; each sample is one call's duration"
        );
        p["seconds_per_rep"] = json!(plan.latency_secs);
        let runs = match &runs {
            Ok(runs) => runs,
            Err(e) => {
                for (suffix, _) in crate::raw::PERCENTILES {
                    results.failed(&format!("{prefix}.{suffix}_us"), "us", &e.to_string());
                }
                continue;
            }
        };
        p["samples_per_rep"] = json!(runs.iter().map(|h| h[side].len()).collect::<Vec<_>>());
        for (suffix, quantile) in crate::raw::PERCENTILES {
            let values: Vec<f64> = runs
                .iter()
                .map(|h| util::percentile(&h[side], quantile) / 1000.0)
                .collect();
            let name = format!("{prefix}.{suffix}_us");
            results.stats(&name, &Stats::new(values), "us", p.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_a_table_name() {
        let a = unique("mqsb", '_');
        let b = unique("mqsb", '_');
        assert_ne!(a, b);
        assert!(a.len() <= 32, "{a}");
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }

    #[test]
    fn counters_per_op_need_both_readings() {
        let before: BTreeMap<String, f64> = [("a".into(), 10.0), ("b".into(), 1.0)].into();
        let after: BTreeMap<String, f64> = [("a".into(), 30.0), ("c".into(), 5.0)].into();
        let d = per_op(&before, &after, 10.0);
        assert_eq!(d.len(), 1);
        assert_eq!(d["a"], 2.0);
    }

    #[test]
    fn a_missing_url_fails_every_metric_of_the_group() {
        let mut results = Results::new(true);
        fail_group("mysql", "MQS_MYSQL_URL is not set", &mut results);
        for (name, _) in MYSQL_METRICS {
            let metric = results.get(name).unwrap();
            assert_eq!(metric.status, crate::results::Status::Failed);
        }
    }
}
