//! mqstore's benchmark harness: every engine that exists against the raw
//! limits of this machine (measured in the same run, on the same
//! filesystem), against RocksDB, and through its C and Python bindings.
//! One command writes results.json, results.txt (the table) and the charts.
//!
//!   cargo run -p mqstore-bench --release -- [--quick] [--out FILE] [--dir DIR]
//!
//! See docs/BENCHMARKS.md for the workloads and every metric name.

mod broker;
mod disk;
mod engine;
mod ffi;
mod file;
mod journal;
mod machine;
mod memory;
mod raw;
mod results;
mod rocksdb_engine;
mod rocksdb_peer;
mod s3;
mod servers;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mqstore::EngineKind;
pub use results::Results;

/// Sizes and durations of one run. `--quick` shrinks them to fit in under
/// three minutes on a 2-core machine; the metric names stay the same and
/// every entry is marked `quick`.
pub struct Plan {
    pub quick: bool,
    /// Repetitions of each headline metric (the median is reported).
    pub reps: usize,
    /// Rounds of the FFI comparison (one rep of each driver per round).
    pub ffi_rounds: usize,
    /// Repetitions of each point of the append matrix.
    pub matrix_reps: usize,
    pub matrix_secs: f64,
    pub headline_secs: f64,
    /// Unpaced single appends, to find the rate the latency test offers.
    pub calibrate_secs: f64,
    pub latency_secs: f64,
    /// Offered load of the latency test as a fraction of the measured maximum.
    pub offered_load: f64,
    /// Payload bytes after which a many-shard append run stops.
    pub many_shard_budget: u64,
    /// Size of the shard the read and sendfile workloads read.
    pub read_bytes: u64,
    pub many_shards: usize,
    /// A pass of single appends over the many shards stops after this long.
    pub many_shard_pass_secs: f64,
    /// Bytes written per pass of each point of the O_DIRECT write matrix
    /// (`disk.rs`; `matrix_reps` passes per point).
    pub disk_bytes: u64,
    pub fdatasync_write_bytes: u64,
    pub fdatasync_samples: usize,
    pub sendfile_bytes: u64,
    pub memcpy_bytes: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            quick: false,
            reps: 5,
            ffi_rounds: 7,
            matrix_reps: 3,
            matrix_secs: 1.0,
            headline_secs: 2.0,
            calibrate_secs: 1.0,
            latency_secs: 5.0,
            offered_load: 0.5,
            many_shard_budget: 2 << 30,
            read_bytes: 1 << 30,
            many_shards: 1_000_000,
            many_shard_pass_secs: 20.0,
            disk_bytes: 1 << 30,
            fdatasync_write_bytes: 256 << 20,
            fdatasync_samples: 2000,
            sendfile_bytes: 1 << 30,
            memcpy_bytes: 256 << 20,
        }
    }

    fn quick() -> Plan {
        Plan {
            quick: true,
            reps: 3,
            ffi_rounds: 5,
            matrix_reps: 1,
            matrix_secs: 0.2,
            headline_secs: 0.5,
            calibrate_secs: 0.3,
            latency_secs: 1.0,
            offered_load: 0.5,
            many_shard_budget: 512 << 20,
            read_bytes: 256 << 20,
            many_shards: 1_000_000,
            many_shard_pass_secs: 5.0,
            disk_bytes: 256 << 20,
            fdatasync_write_bytes: 64 << 20,
            fdatasync_samples: 500,
            sendfile_bytes: 256 << 20,
            memcpy_bytes: 128 << 20,
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "reps": self.reps, "ffi_rounds": self.ffi_rounds, "matrix_reps": self.matrix_reps, "matrix_secs": self.matrix_secs,
            "headline_secs": self.headline_secs, "latency_secs": self.latency_secs,
            "offered_load": self.offered_load, "many_shard_budget": self.many_shard_budget,
            "read_bytes": self.read_bytes, "many_shards": self.many_shards,
            "many_shard_pass_secs": self.many_shard_pass_secs,
            "disk_bytes": self.disk_bytes, "fdatasync_write_bytes": self.fdatasync_write_bytes,
            "fdatasync_samples": self.fdatasync_samples, "sendfile_bytes": self.sendfile_bytes,
            "memcpy_bytes": self.memcpy_bytes,
        })
    }
}

const SECTIONS: [&str; 7] = [
    "raw", "memory", "engines", "rocksdb", "ffi", "broker", "servers",
];

struct Args {
    quick: bool,
    out: PathBuf,
    dir: Option<PathBuf>,
    only: Vec<String>,
    chart: bool,
    /// Set in the child processes that run the engine suites (see
    /// `run_isolated`): run inline, write JSON, print no table.
    isolated: bool,
    /// In such a child: the one workload group to run ("append",
    /// "journal/read", ...); all of the section's when absent.
    group: Option<String>,
    drivers: ffi::Drivers,
}

const USAGE: &str = "\
usage: bench [--quick] [--out FILE] [--dir DIR] [--only SECTIONS] [--no-chart]
             [--lib PATH] [--include DIR] [--cc CMD] [--python PATH]

  --quick          smaller sizes, fewer repetitions (< 3 min); entries marked quick
  --out FILE       results JSON (default: $CARGO_TARGET_DIR or <workspace>/target,
                   then bench/results.json); the table goes to FILE with .txt
  --dir DIR        directory on the filesystem to test (default: a temporary
                   directory under the results directory, removed afterwards)
  --only LIST      comma-separated sections: raw,memory,engines (journal, RocksDB, file),
                   rocksdb,ffi,broker (the example Kafka broker),servers (the MySQL,
                   Redis and S3 engines against their servers; needs MQS_MYSQL_URL,
                   MQS_REDIS_URL and the AWS_* variables: run under
                   scripts/with-servers.sh)
  --no-chart       do not run bench/python/chart.py afterwards
  --lib PATH       libmqstore.so for the C driver (default: next to this binary;
                   env MQS_BENCH_LIB)
  --include DIR    directory of mqstore.h (default: <workspace>/include)
  --cc CMD         C compiler (default: env CC, else cc)
  --python PATH    interpreter with the mqstore package and matplotlib
                   (default: env MQS_BENCH_PYTHON, else <workspace>/.venv/bin/python)";

fn parse_args() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ lives inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| target.join("release"));
    let mut args = Args {
        quick: false,
        out: target.join("bench/results.json"),
        dir: None,
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        chart: true,
        isolated: false,
        group: None,
        drivers: ffi::Drivers {
            lib: std::env::var_os("MQS_BENCH_LIB")
                .map(PathBuf::from)
                .unwrap_or_else(|| exe_dir.join("libmqstore.so")),
            include: root.join("include"),
            cc: std::env::var("CC").unwrap_or_else(|_| "cc".into()),
            python: std::env::var_os("MQS_BENCH_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join(".venv/bin/python")),
            build_dir: target.join("bench"),
            target: target.clone(),
            root,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--quick" => args.quick = true,
            "--no-chart" => args.chart = false,
            "--isolated-child" => args.isolated = true,
            "--group" => args.group = Some(value("--group")?),
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            "--lib" => args.drivers.lib = PathBuf::from(value("--lib")?),
            "--include" => args.drivers.include = PathBuf::from(value("--include")?),
            "--cc" => args.drivers.cc = value("--cc")?,
            "--python" => args.drivers.python = PathBuf::from(value("--python")?),
            "--only" => {
                let list = value("--only")?;
                args.only = list.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = args.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    return Err(format!(
                        "unknown section '{bad}' (known: {})",
                        SECTIONS.join(",")
                    ));
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(args)
}

/// Engines other than memory: measured when this build has them, else
/// their metrics (the names the issue fixes) are listed as absent, so a
/// reader sees every promised figure and why it is missing. Inline: used by
/// a child asked for the whole section (`--isolated-child --only engines`
/// without `--group`).
fn other_engines(base: &Path, plan: &Plan, results: &mut Results) {
    if EngineKind::Journal.is_available() {
        for group in engine::PERSISTENT_GROUPS {
            journal::run_group(group, base, plan, results);
        }
    } else {
        println!("== journal engine: not built");
        let reason = "engine 'journal' is not built yet";
        for (name, unit) in journal::ISSUE_METRICS {
            results.absent(name, unit, reason);
        }
    }
    if EngineKind::Rocksdb.is_available() {
        for group in rocksdb_engine::GROUPS {
            rocksdb_engine::run_group(group, base, plan, results);
        }
    } else {
        rocksdb_engine_absent(results);
    }
    file_engine(results);
}

fn rocksdb_engine_absent(results: &mut Results) {
    println!("== rocksdb engine: not built");
    for (name, unit) in rocksdb_engine::ISSUE_METRICS {
        results.absent(name, unit, "engine 'rocksdb' is not in this build");
    }
}

fn file_engine(results: &mut Results) {
    println!("== file engine");
    file::run_from_args(results);
}

/// How a workload group's child process ended.
struct ChildRun {
    /// Its peak RSS (ru_maxrss of wait4: the child and any process it
    /// waited for, such as the kill -9 victim of reopen_crash), KiB.
    max_rss_kib: u64,
    /// The harness's own RSS when it started the child, KiB: the floor of
    /// `max_rss_kib` (exec keeps the high-water mark of the address space
    /// the child was forked with).
    parent_rss_kib: u64,
    outcome: Result<Vec<results::Metric>, String>,
}

/// Runs one workload group in a child process (`bench --isolated-child
/// --only SECTION --group GROUP`) and collects its metrics and peak RSS.
///
/// Children because engines still under construction can crash the process
/// (a segfault in an engine is exactly what a benchmark may be first to
/// hit): a crash costs that group's metrics, reported as failed with the
/// signal, and not the whole run. And because a process's peak RSS cannot
/// be reset, one process per group is what gives each workload its own.
fn run_child(base: &Path, args: &Args, section: &str, group: &str) -> ChildRun {
    let out = base.join(format!("{}-{}.json", section, group.replace('/', "-")));
    let parent_rss_kib = util::proc_status_kib("VmRSS").unwrap_or(0);
    let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "bench".into()));
    command
        .args([
            "--isolated-child",
            "--no-chart",
            "--only",
            section,
            "--group",
            group,
            "--dir",
        ])
        .arg(base)
        .arg("--out")
        .arg(&out);
    if args.quick {
        command.arg("--quick");
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ChildRun {
                max_rss_kib: 0,
                parent_rss_kib,
                outcome: Err(format!("could not start the workload process: {e}")),
            }
        }
    };
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: `pid` is our child, not yet reaped (std's Child is never
        // waited on); status and usage are writable.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            break Err(format!("waiting for the workload process: {error}"));
        }
    };
    let max_rss_kib = usage.ru_maxrss.max(0) as u64;
    let outcome = waited.and_then(|()| {
        if libc::WIFSIGNALED(status) {
            return Err(format!(
                "the workload process died with signal {}",
                libc::WTERMSIG(status)
            ));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!(
                "the workload process failed (exit status {})",
                libc::WEXITSTATUS(status)
            ));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let document: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        serde_json::from_value::<Vec<results::Metric>>(document["metrics"].clone())
            .map_err(|e| e.to_string())
    });
    let _ = std::fs::remove_file(&out);
    drop(child);
    ChildRun {
        max_rss_kib,
        parent_rss_kib,
        outcome,
    }
}

/// Runs an engine's workload groups, each in its own child process, and
/// records `{engine}.{group}.peak_rss_mb` for each and `{engine}.peak_rss_mb`
/// (the largest). `required` are metrics that must exist afterwards: any
/// missing (their group failed) is reported failed with the group's error.
fn run_groups(
    base: &Path,
    args: &Args,
    section: &str,
    engine: &str,
    groups: &[&str],
    required: &[(&str, &str)],
    results: &mut Results,
) {
    let mut peaks = serde_json::Map::new();
    let mut errors = Vec::new();
    for group in groups {
        let child_group = if section == "memory" {
            group.to_string()
        } else {
            format!("{engine}/{group}")
        };
        let run = run_child(base, args, section, &child_group);
        let name = format!("{engine}.{group}.peak_rss_mb");
        let p = serde_json::json!({
            "measured": "peak RSS: ru_maxrss of the workload group's own process (wait4), \
                         file-backed (mapped segments) and anonymous pages alike",
            "group": group,
            "floor_mb": util::mib(run.parent_rss_kib),
            "floor": "the harness's RSS when it started the process, which exec carries \
                      into ru_maxrss",
        });
        match run.outcome {
            Ok(metrics) => {
                results.extend(metrics);
                results.value(&name, util::mib(run.max_rss_kib), "MiB", p);
                peaks.insert(group.to_string(), util::mib(run.max_rss_kib).into());
            }
            Err(error) => {
                eprintln!("bench: {engine} {group}: {error}");
                results.failed(&name, "MiB", &error);
                errors.push(format!("{group}: {error}"));
            }
        }
    }
    for (name, unit) in required {
        if results.get(name).is_none() {
            results.failed(name, unit, &errors.join("; "));
        }
    }
    let peak = peaks
        .values()
        .filter_map(|v| v.as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let name = format!("{engine}.peak_rss_mb");
    match peak {
        Some(peak) => results.value(
            &name,
            peak,
            "MiB",
            serde_json::json!({
                "measured": "largest peak RSS of the engine's workload groups, each in its own \
                             process (ru_maxrss from wait4)",
                "per_group_mb": peaks,
            }),
        ),
        None => results.failed(&name, "MiB", &errors.join("; ")),
    }
}

/// The engines section from the parent: each persistent engine's groups
/// in child processes; engines not in the build are listed absent.
fn engines_isolated(base: &Path, args: &Args, results: &mut Results) {
    if EngineKind::Journal.is_available() {
        run_groups(
            base,
            args,
            "engines",
            "journal",
            &engine::PERSISTENT_GROUPS,
            &journal::ISSUE_METRICS,
            results,
        );
    } else {
        println!("== journal engine: not built");
        let reason = "engine 'journal' is not built yet";
        for (name, unit) in journal::ISSUE_METRICS {
            results.absent(name, unit, reason);
        }
    }
    if EngineKind::Rocksdb.is_available() {
        run_groups(
            base,
            args,
            "engines",
            rocksdb_engine::PREFIX,
            &rocksdb_engine::GROUPS,
            &rocksdb_engine::ISSUE_METRICS,
            results,
        );
    } else {
        rocksdb_engine_absent(results);
    }
    let run = run_child(base, args, "engines", "file");
    match run.outcome {
        Ok(metrics) => results.extend(metrics),
        Err(error) => {
            eprintln!("bench: file engine: {error}");
            file_engine(results);
        }
    }
}

/// The servers section from the parent: each server's group in a child
/// process; a group whose server is not named in the environment fails
/// every metric of it with that reason, without starting a child.
fn servers_isolated(base: &Path, args: &Args, results: &mut Results) {
    for group in servers::GROUPS {
        if let Err(error) = servers::url(group) {
            eprintln!("bench: servers {group}: {error}");
            servers::fail_group(group, &error, results);
            continue;
        }
        let run = run_child(base, args, "servers", group);
        match run.outcome {
            Ok(metrics) => results.extend(metrics),
            Err(error) => {
                eprintln!("bench: servers {group}: {error}");
                servers::fail_group(group, &error, results);
            }
        }
    }
}

/// A child's work: one group of its section, or the whole section.
fn run_in_child(section: &str, args: &Args, base: &Path, plan: &Plan, results: &mut Results) {
    match (section, args.group.as_deref()) {
        ("memory", Some(group)) => memory::run_group(group, base, plan, results),
        ("memory", None) => {
            for group in memory::GROUPS {
                memory::run_group(group, base, plan, results);
            }
            memory::not_applicable(base, plan, results);
        }
        ("engines", Some("file")) => file_engine(results),
        ("engines", Some(group)) => match group.split_once('/') {
            Some(("journal", group)) => journal::run_group(group, base, plan, results),
            Some((rocksdb_engine::PREFIX, group)) => {
                rocksdb_engine::run_group(group, base, plan, results)
            }
            _ => results.failed(
                &format!("{group}.peak_rss_mb"),
                "MiB",
                &format!("unknown workload group '{group}'"),
            ),
        },
        ("engines", None) => other_engines(base, plan, results),
        ("servers", Some(group)) => servers::run_group(group, base, plan, results),
        ("servers", None) => {
            for group in servers::GROUPS {
                servers::run_group(group, base, plan, results);
            }
        }
        _ => {}
    }
}

fn run_chart(args: &Args) {
    let script = args.drivers.root.join("bench/python/chart.py");
    let out_dir = args.out.parent().unwrap_or(Path::new("."));
    let status = Command::new(&args.drivers.python)
        .arg(&script)
        .arg(&args.out)
        .arg("--out-dir")
        .arg(out_dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("bench: chart.py exited with {s} (results are still written)"),
        Err(e) => eprintln!(
            "bench: could not run {} with {}: {e} (results are still written)",
            script.display(),
            args.drivers.python.display()
        ),
    }
}

fn main() {
    // The victim process of {engine}.reopen_crash (killed with SIGKILL).
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 5 && argv[1] == "--child-append" {
        let bytes = argv[3].parse().unwrap_or(1 << 20);
        if let Err(e) = engine::child_append(Path::new(&argv[2]), bytes, &argv[4]) {
            eprintln!("bench --child-append: {e}");
            std::process::exit(1);
        }
        return;
    }
    // The Rust driver of the FFI comparison (a process, like the C and
    // Python drivers it is compared with).
    if argv.len() >= 2 && argv[1] == "--driver-rust" {
        if let Err(e) = ffi::rust_driver(&argv[2..]) {
            eprintln!("bench --driver-rust: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let started_at = machine::utc_now_rfc3339();
    let clock = Instant::now();

    // The filesystem under test: --dir, or a temporary directory next to the
    // results (on the project's disk, not /tmp, which may be tmpfs).
    let results_dir = args.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let base_parent = args.dir.clone().unwrap_or_else(|| results_dir.clone());
    if let Err(e) = std::fs::create_dir_all(&base_parent) {
        eprintln!("bench: cannot create {}: {e}", base_parent.display());
        std::process::exit(1);
    }
    let base = match tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&base_parent)
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "bench: cannot create a directory in {}: {e}",
                base_parent.display()
            );
            std::process::exit(1);
        }
    };
    // The load the run was measured under (the parent only: children are
    // part of the run).
    let sampler = (!args.isolated).then(|| machine::LoadSampler::start(Duration::from_secs(10)));
    let mut machine = machine::describe(base.path());
    machine["plan"] = plan.describe();
    println!(
        "mqstore {} bench ({}) on {} cores, {}, {} filesystem at {}",
        mqstore::VERSION,
        if plan.quick { "quick" } else { "full" },
        machine["cores"],
        machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        machine["filesystem"]["type"].as_str().unwrap_or("unknown"),
        base.path().display()
    );

    let mut results = Results::new(plan.quick);
    let wants = |section: &str| args.only.iter().any(|s| s == section);
    if wants("raw") {
        if args.isolated {
            raw::run(base.path(), &plan, &mut results);
        } else {
            // In a child too: the raw baselines touch hundreds of MiB, and
            // a process spawned later starts its peak RSS at its parent's
            // (exec records the old address space's high-water mark), which
            // would put a floor under every workload group's figure.
            let run = run_child(base.path(), &args, "raw", "all");
            match run.outcome {
                Ok(metrics) => results.extend(metrics),
                Err(error) => {
                    eprintln!("bench: raw baselines: {error}");
                    results.failed("raw.memcpy_gbps", "GB/s", &error);
                }
            }
        }
    }
    if wants("memory") {
        if args.isolated {
            run_in_child("memory", &args, base.path(), &plan, &mut results);
        } else {
            run_groups(
                base.path(),
                &args,
                "memory",
                "memory",
                &memory::GROUPS,
                &[(memory::HEADLINE, "msgs/s")],
                &mut results,
            );
            memory::not_applicable(base.path(), &plan, &mut results);
        }
    }
    if wants("engines") {
        if args.isolated {
            run_in_child("engines", &args, base.path(), &plan, &mut results);
        } else {
            engines_isolated(base.path(), &args, &mut results);
        }
    }
    if wants("rocksdb") {
        rocksdb_peer::run(base.path(), &plan, &mut results);
    }
    if wants("ffi") {
        ffi::run(base.path(), &plan, &args.drivers, &mut results);
    }
    if wants("broker") {
        broker::run(base.path(), &plan, &args.drivers, &mut results);
    }
    if wants("servers") {
        if args.isolated {
            run_in_child("servers", &args, base.path(), &plan, &mut results);
        } else {
            servers_isolated(base.path(), &args, &mut results);
        }
    }
    if !args.isolated {
        // Ratios between sections: only the parent has every section's
        // metrics (a workload group's child would list the pairs absent).
        memory::compare(&mut results);
        journal::compare(&mut results);
        rocksdb_engine::compare(&mut results);
        file::compare(&mut results);
        ffi::compare(&mut results);
        broker::compare(&mut results);
        servers::compare(&mut results);
        s3::compare(&mut results);
    }

    let elapsed = clock.elapsed().as_secs_f64();
    let load = match sampler {
        Some(sampler) => {
            let (record, summary) = sampler.finish();
            machine["load"] = record;
            format!("; {summary}")
        }
        None => String::new(),
    };
    let document = results.to_json(machine, &started_at, elapsed);
    let table = format!(
        "mqstore {} benchmark, {} run, {started_at}, {elapsed:.0} s{load}\n\n{}",
        mqstore::VERSION,
        if plan.quick { "quick" } else { "full" },
        results.table()
    );
    if !args.isolated {
        println!("\n{table}");
    }
    if let Err(e) = results::write_files(&args.out, &document, &table) {
        eprintln!("bench: writing {}: {e}", args.out.display());
        std::process::exit(1);
    }
    println!(
        "wrote {} and {}",
        args.out.display(),
        args.out.with_extension("txt").display()
    );
    drop(base);
    if args.chart {
        run_chart(&args);
    }
}
