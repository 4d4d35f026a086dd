//! mqstore's benchmark harness: every engine that exists against the raw
//! limits of this machine (measured in the same run, on the same
//! filesystem), against RocksDB, and through its C and Python bindings.
//! One command writes results.json, results.txt (the table) and the charts.
//!
//!   cargo run -p mqstore-bench --release -- [--quick] [--out FILE] [--dir DIR]
//!
//! See docs/BENCHMARKS.md for the workloads and every metric name.

mod engine;
mod ffi;
mod journal;
mod machine;
mod memory;
mod raw;
mod results;
mod rocksdb_peer;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mqstore::EngineKind;
pub use results::Results;

/// Sizes and durations of one run. `--quick` shrinks them to fit in under
/// three minutes on a 2-core machine; the metric names stay the same and
/// every entry is marked `quick`.
pub struct Plan {
    pub quick: bool,
    /// Repetitions of each headline metric (the median is reported).
    pub reps: usize,
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
    /// File size of the O_DIRECT write baseline.
    pub disk_bytes: u64,
    pub fdatasync_write_bytes: u64,
    pub fdatasync_samples: usize,
    pub sendfile_bytes: u64,
    pub memcpy_bytes: usize,
    pub rocksdb_secs: f64,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            quick: false,
            reps: 5,
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
            rocksdb_secs: 3.0,
        }
    }

    fn quick() -> Plan {
        Plan {
            quick: true,
            reps: 3,
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
            rocksdb_secs: 1.0,
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "reps": self.reps, "matrix_reps": self.matrix_reps, "matrix_secs": self.matrix_secs,
            "headline_secs": self.headline_secs, "latency_secs": self.latency_secs,
            "offered_load": self.offered_load, "many_shard_budget": self.many_shard_budget,
            "read_bytes": self.read_bytes, "many_shards": self.many_shards,
            "many_shard_pass_secs": self.many_shard_pass_secs,
            "disk_bytes": self.disk_bytes, "fdatasync_write_bytes": self.fdatasync_write_bytes,
            "fdatasync_samples": self.fdatasync_samples, "sendfile_bytes": self.sendfile_bytes,
            "memcpy_bytes": self.memcpy_bytes, "rocksdb_secs": self.rocksdb_secs,
        })
    }
}

const SECTIONS: [&str; 5] = ["raw", "memory", "engines", "rocksdb", "ffi"];

struct Args {
    quick: bool,
    out: PathBuf,
    dir: Option<PathBuf>,
    only: Vec<String>,
    chart: bool,
    /// Set in the child process that runs the engine suites (see
    /// `engines_isolated`): run inline, write JSON, print no table.
    isolated: bool,
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
  --only LIST      comma-separated sections: raw,memory,engines (journal, file),
                   rocksdb,ffi
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
/// reader sees every promised figure and why it is missing.
fn other_engines(base: &Path, plan: &Plan, results: &mut Results) {
    if EngineKind::Journal.is_available() {
        journal::run(base, plan, results);
    } else {
        println!("== journal engine: not built");
        let reason = "engine 'journal' is not built yet";
        for (name, unit) in journal::ISSUE_METRICS {
            results.absent(name, unit, reason);
        }
    }
    file_engine(results);
}

fn file_engine(results: &mut Results) {
    println!("== file engine");
    let reason = if EngineKind::File.is_available() {
        // The engine landed; its workloads belong here next (engine.rs has
        // them, parameterised by shard options, as journal.rs uses them).
        "engine 'file' is built, but the harness has no file workloads yet"
    } else {
        "engine 'file' is not built yet"
    };
    results.absent("file.append_1k_batch64_os.msgs_per_s", "msgs/s", reason);
    results.absent("file.edge_1000shards.peak_rss_mb", "MiB", reason);
}

/// Engines still under construction can crash the process (a segfault in
/// an engine is exactly what a benchmark may be first to hit). Their suites
/// run in a child process, so a crash costs their metrics, reported as
/// failed with the signal, and not the whole run.
fn engines_isolated(base: &Path, args: &Args, results: &mut Results) {
    let out = base.join("engines.json");
    let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "bench".into()));
    command
        .args([
            "--isolated-child",
            "--no-chart",
            "--only",
            "engines",
            "--dir",
        ])
        .arg(base)
        .arg("--out")
        .arg(&out);
    if args.quick {
        command.arg("--quick");
    }
    let outcome = command
        .status()
        .map_err(|e| e.to_string())
        .and_then(|status| {
            if !status.success() {
                use std::os::unix::process::ExitStatusExt;
                return Err(match status.signal() {
                    Some(signal) => format!("the engine suite process died with signal {signal}"),
                    None => format!("the engine suite process failed: {status}"),
                });
            }
            let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
            let document: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| e.to_string())?;
            serde_json::from_value::<Vec<results::Metric>>(document["metrics"].clone())
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(metrics) => results.extend(metrics),
        Err(error) => {
            eprintln!("bench: {error}");
            for (name, unit) in journal::ISSUE_METRICS {
                results.failed(name, unit, &error);
            }
            file_engine(results);
        }
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
    // The victim process of journal.reopen_crash (killed with SIGKILL).
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 4 && argv[1] == "--child-append" {
        let bytes = argv[3].parse().unwrap_or(1 << 20);
        if let Err(e) = journal::child_append(Path::new(&argv[2]), bytes) {
            eprintln!("bench --child-append: {e}");
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
        raw::run(base.path(), &plan, &mut results);
    }
    if wants("memory") {
        memory::run(base.path(), &plan, &mut results);
    }
    if wants("engines") {
        if args.isolated {
            other_engines(base.path(), &plan, &mut results);
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
    memory::compare(&mut results);
    journal::compare(&mut results);
    ffi::compare(&mut results);

    let elapsed = clock.elapsed().as_secs_f64();
    let document = results.to_json(machine, &started_at, elapsed);
    let table = format!(
        "mqstore {} benchmark, {} run, {started_at}, {elapsed:.0} s\n\n{}",
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
