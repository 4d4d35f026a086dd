//! FFI overhead: the headline batch-append workload driven from C through
//! libmqstore.so and from Python through the package, run as subprocesses
//! and merged into the same results. A driver that cannot run here (no
//! header yet, no library, no package) is reported absent with the reason.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mqstore::{Config, Durability, EngineKind, Record, Store};

use serde_json::{json, Value};

use crate::engine;
use crate::engine::APPEND_RETENTION_BYTES;
use crate::memory::{HEADLINE, HEADLINE_SPEC};
use crate::util::{self, Stats};
use crate::{Plan, Results};

pub const RUST_METRIC: &str = "ffi_rust.append_100b_batch1024.msgs_per_s";
pub const C_METRIC: &str = "ffi_c.append_100b_batch1024.msgs_per_s";
pub const PYTHON_METRIC: &str = "ffi_python.append_100b_batch1024.msgs_per_s";

/// Where the drivers and what they link against are found.
pub struct Drivers {
    /// The workspace root (bench/c, bench/python and include/ live under it).
    pub root: PathBuf,
    /// libmqstore.so, the release build the C driver links against.
    pub lib: PathBuf,
    /// The directory holding mqstore.h.
    pub include: PathBuf,
    /// The C compiler.
    pub cc: String,
    /// A Python interpreter that can `import mqstore`.
    pub python: PathBuf,
    /// Where the compiled C driver goes.
    pub build_dir: PathBuf,
    /// Cargo's target directory (to tell a release extension from a debug one).
    pub target: PathBuf,
}

/// Which cargo profile built the installed Python extension: its bytes are
/// compared with the artifacts maturin copied it from. A debug extension
/// runs several times slower, and its figure would say nothing about the
/// binding's overhead.
fn extension_build(extension: &Path, target: &Path) -> &'static str {
    let Ok(installed) = std::fs::read(extension) else {
        return "unknown";
    };
    for profile in ["release", "debug"] {
        let built = target.join(profile).join("lib_mqstore.so");
        let same_size = std::fs::metadata(&built).is_ok_and(|m| m.len() == installed.len() as u64);
        if same_size && std::fs::read(&built).is_ok_and(|b| b == installed) {
            return profile;
        }
    }
    // Built in another target directory (the tree is shared, and any
    // `make test-python` installs a debug build): debug builds carry
    // rustc's overflow-check panic messages, release builds do not.
    let marker: &[u8] = b"attempt to add with overflow";
    if installed.windows(marker.len()).any(|w| w == marker) {
        return "debug";
    }
    "unknown"
}

/// Runs a driver and parses the JSON object on the last line of its output.
pub fn run_driver(command: &mut Command) -> Result<Value, String> {
    let output = command
        .output()
        .map_err(|e| format!("could not start {:?}: {e}", command.get_program()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{:?} exited with {}: {}",
            command.get_program(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or("driver printed nothing")?;
    serde_json::from_str(line).map_err(|e| format!("driver output {line:?} is not JSON: {e}"))
}

/// The driver's per-repetition samples as stats, and the rest of its
/// report as params.
fn record(results: &mut Results, name: &str, report: Value, extra: Value) {
    let samples: Option<Vec<f64>> = report["samples"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect());
    match samples.filter(|s| !s.is_empty()) {
        Some(samples) => {
            let mut p = report.clone();
            if let Some(map) = p.as_object_mut() {
                map.remove("samples");
                if let Value::Object(extra) = extra {
                    map.extend(extra);
                }
            }
            results.stats(name, &Stats::new(samples), "msgs/s", p);
        }
        None => results.failed(
            name,
            "msgs/s",
            &format!("driver reported no samples: {report}"),
        ),
    }
}

fn common_params(plan: &Plan) -> Value {
    json!({
        "record_bytes": HEADLINE_SPEC.record_size, "batch": HEADLINE_SPEC.batch,
        "threads": 1, "shards": 1, "engine": "memory", "durability": "none",
        "retention_bytes": APPEND_RETENTION_BYTES, "seconds_per_rep": plan.headline_secs,
        "same_workload_as": HEADLINE,
        "schedule": "one rep of each driver in turn, order rotated every round",
    })
}

/// Why a driver does not run here: absent (not built, not installed) or
/// failed (it should have run).
enum Unavailable {
    Absent(String),
    Failed(String),
}

/// A driver process: how to start one repetition of it in a directory.
struct Driver {
    program: PathBuf,
    /// Arguments before the workload's.
    prefix: Vec<String>,
    /// Environment the process needs.
    env: Vec<(&'static str, PathBuf)>,
    /// The workload's arguments in the driver's own syntax.
    args: fn(dir: &Path, plan: &Plan) -> Vec<String>,
    params: Value,
}

/// The C driver's (and Rust driver's) positional arguments, one rep.
fn positional_args(dir: &Path, plan: &Plan) -> Vec<String> {
    vec![
        dir.display().to_string(),
        HEADLINE_SPEC.record_size.to_string(),
        HEADLINE_SPEC.batch.to_string(),
        plan.headline_secs.to_string(),
        "1".to_string(),
        APPEND_RETENTION_BYTES.to_string(),
    ]
}

fn python_args(dir: &Path, plan: &Plan) -> Vec<String> {
    vec![
        "--dir".into(),
        dir.display().to_string(),
        "--record-bytes".into(),
        HEADLINE_SPEC.record_size.to_string(),
        "--batch".into(),
        HEADLINE_SPEC.batch.to_string(),
        "--seconds".into(),
        plan.headline_secs.to_string(),
        "--reps".into(),
        "1".into(),
        "--retention-bytes".into(),
        APPEND_RETENTION_BYTES.to_string(),
    ]
}

fn rust_driver_process() -> Result<Driver, Unavailable> {
    let exe = std::env::current_exe().map_err(|e| Unavailable::Failed(e.to_string()))?;
    Ok(Driver {
        program: exe,
        prefix: vec!["--driver-rust".into()],
        env: Vec::new(),
        args: positional_args,
        params: json!({ "api": "Store::append_batch", "driver": "bench --driver-rust" }),
    })
}

fn c_driver(drivers: &Drivers) -> Result<Driver, Unavailable> {
    let header = drivers.include.join("mqstore.h");
    if !header.exists() {
        return Err(Unavailable::Absent(format!(
            "{} does not exist yet (the C API header)",
            header.display()
        )));
    }
    if !drivers.lib.exists() {
        return Err(Unavailable::Absent(format!(
            "{} not found: build it with `cargo build --release -p mqstore`",
            drivers.lib.display()
        )));
    }
    let source = drivers.root.join("bench/c/ffi_bench.c");
    let binary = drivers.build_dir.join("ffi_bench");
    let lib_dir = drivers.lib.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&drivers.build_dir).map_err(|e| {
        Unavailable::Failed(format!("creating {}: {e}", drivers.build_dir.display()))
    })?;
    let mut compile = Command::new(&drivers.cc);
    compile
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(&drivers.include)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .arg(format!("-L{}", lib_dir.display()))
        .arg("-lmqstore")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    match compile.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Err(Unavailable::Failed(format!(
                "compiling {} failed: {}",
                source.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
        Err(e) => {
            return Err(Unavailable::Absent(format!(
                "no C compiler ({}): {e}",
                drivers.cc
            )))
        }
    }
    Ok(Driver {
        program: binary,
        prefix: Vec::new(),
        // `cargo run` prepends its own target dirs to LD_LIBRARY_PATH, which
        // outranks the binary's RUNPATH: pin the loader to the library measured.
        env: vec![("LD_LIBRARY_PATH", lib_dir)],
        args: positional_args,
        params: json!({
            "library": drivers.lib.display().to_string(), "compiler": drivers.cc,
            "api": "mqs_append_batch",
        }),
    })
}

/// The installed Python extension and the profile that built it, or why
/// it cannot be measured (absent, or a debug build).
fn python_extension(drivers: &Drivers) -> Result<(PathBuf, &'static str), String> {
    let probe = Command::new(&drivers.python)
        .args(["-c", "import mqstore._mqstore as m; print(m.__file__)"])
        .output();
    let extension = match probe {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.trim().lines().last().unwrap_or("").to_string();
            return Err(format!(
                "{} cannot import mqstore ({last}); build it with `make python-release`",
                drivers.python.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "no Python interpreter at {}: {e}",
                drivers.python.display()
            ))
        }
    };
    let build = extension_build(&extension, &drivers.target);
    if build == "debug" {
        return Err(format!(
            "the installed extension {} is a debug build (overflow checks compiled in); \
             install the release build with `make python-release`",
            extension.display()
        ));
    }
    Ok((extension, build))
}

/// Fails unless the interpreter imports a release build of the package.
pub fn release_extension(drivers: &Drivers) -> Result<(), String> {
    python_extension(drivers).map(|_| ())
}

fn python_driver(drivers: &Drivers) -> Result<Driver, Unavailable> {
    let (extension, build) = python_extension(drivers).map_err(Unavailable::Absent)?;
    Ok(Driver {
        program: drivers.python.clone(),
        prefix: vec![drivers
            .root
            .join("bench/python/ffi_bench.py")
            .display()
            .to_string()],
        env: Vec::new(),
        args: python_args,
        params: json!({
            "interpreter": drivers.python.display().to_string(),
            "extension": extension.display().to_string(), "extension_build": build,
            "api": "Store.append_batch(shard, list of bytes)",
        }),
    })
}

/// One repetition of `driver` in a fresh directory under `base`: its report.
fn run_once(base: &Path, plan: &Plan, driver: &Driver) -> Result<Value, String> {
    let dir = tempfile::Builder::new()
        .prefix("ffi-")
        .tempdir_in(base)
        .map_err(|e| e.to_string())?;
    let mut command = Command::new(&driver.program);
    command
        .args(&driver.prefix)
        .args((driver.args)(dir.path(), plan));
    for (key, value) in &driver.env {
        command.env(key, value);
    }
    run_driver(&mut command)
}

/// Runs the Rust, C and Python drivers one repetition at a time, in turn,
/// rotating the order every round: on a shared machine the load drifts over
/// minutes, and taking every driver's samples from the same minutes keeps
/// the ratios between them honest (the memory headline, measured minutes
/// earlier, is kept as the Rust API's figure in its own section).
pub fn run(base: &Path, plan: &Plan, drivers: &Drivers, results: &mut Results) {
    println!("== FFI overhead (Rust, C through libmqstore.so, Python through the package)");
    // Each driver: ready to run (with its samples so far and its report),
    // or unavailable; recorded in this order at the end.
    type Slot = Result<(Driver, Vec<f64>, Option<Value>), Unavailable>;
    let mut slots: Vec<(&str, Slot)> = vec![
        (
            RUST_METRIC,
            rust_driver_process().map(|d| (d, Vec::new(), None)),
        ),
        (C_METRIC, c_driver(drivers).map(|d| (d, Vec::new(), None))),
        (
            PYTHON_METRIC,
            python_driver(drivers).map(|d| (d, Vec::new(), None)),
        ),
    ];
    let count = slots.len();
    for round in 0..plan.ffi_rounds {
        for i in 0..count {
            let slot = &mut slots[(i + round) % count].1;
            let Ok((driver, samples, report)) = slot else {
                continue;
            };
            match run_once(base, plan, driver) {
                Ok(one) => {
                    samples.extend(
                        one["samples"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_f64),
                    );
                    *report = Some(one);
                }
                Err(e) => *slot = Err(Unavailable::Failed(e)),
            }
        }
    }
    // The Rust samples, round by round, for paired ratios: within a round
    // the drivers ran seconds apart, so a ratio per round cancels most of
    // the machine's drift.
    let rust_samples: Option<Vec<f64>> = match &slots[0].1 {
        Ok((_, samples, _)) => Some(samples.clone()),
        Err(_) => None,
    };
    for (metric, slot) in slots {
        match slot {
            Ok((driver, samples, report)) => {
                let mut report = report.unwrap_or_else(|| json!({}));
                let mut extra = common_params(plan);
                if let Some(rust) = rust_samples.as_ref().filter(|_| metric != RUST_METRIC) {
                    let ratios: Vec<f64> = samples
                        .iter()
                        .zip(rust)
                        .filter(|(_, r)| **r > 0.0)
                        .map(|(s, r)| s / r)
                        .collect();
                    if !ratios.is_empty() {
                        extra["ratio_to_rust_per_round"] = json!(ratios);
                        extra["ratio_to_rust_median_of_rounds"] =
                            json!(Stats::new(ratios).median());
                    }
                }
                report["samples"] = json!(samples);
                if let (Value::Object(extra), Value::Object(own)) = (&mut extra, driver.params) {
                    extra.extend(own);
                }
                record(results, metric, report, extra);
            }
            Err(Unavailable::Absent(reason)) => results.absent(metric, "msgs/s", &reason),
            Err(Unavailable::Failed(error)) => results.failed(metric, "msgs/s", &error),
        }
    }
}

pub fn compare(results: &mut Results) {
    // Against the Rust figure taken in the same rounds when there is one,
    // else against the memory section's headline.
    for metric in [C_METRIC, PYTHON_METRIC] {
        results.compare(metric, HEADLINE, 1.0, "vs the Rust API, same workload");
        results.compare(
            metric,
            RUST_METRIC,
            1.0,
            "vs the Rust API, same workload, interleaved reps",
        );
    }
}

/// The Rust side of the FFI comparison, as a driver process like the C and
/// Python ones (`bench --driver-rust DIR RECORD_BYTES BATCH SECONDS REPS
/// RETENTION_BYTES`, the C driver's arguments, the same JSON line): same
/// records (one prebuilt descriptor per record, the same xorshift values),
/// same store and shard options, same loop and clock checks. Only the API
/// layer differs, so the ratio between the drivers is the binding's cost.
pub fn rust_driver(args: &[String]) -> io::Result<()> {
    let [dir, record_bytes, batch, seconds, reps, retention] = args else {
        return Err(io::Error::other(
            "usage: bench --driver-rust DIR RECORD_BYTES BATCH SECONDS REPS RETENTION_BYTES",
        ));
    };
    let number = |text: &str| -> io::Result<f64> {
        text.parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .ok_or_else(|| io::Error::other(format!("{text:?} is not a positive number")))
    };
    let record_bytes = number(record_bytes)? as usize;
    let batch = number(batch)? as usize;
    let seconds = number(seconds)?;
    let reps = number(reps)? as usize;
    let retention = number(retention)? as u64;

    let mut data = vec![0u8; record_bytes * batch];
    util::fill_pseudo_random(&mut data, 1);
    let records: Vec<Record<'_>> = data.chunks(record_bytes).map(Record::new).collect();
    let options = engine::options(EngineKind::Memory, Durability::None, retention);
    let per_check = if batch >= 1024 { 1 } else { 1024 / batch };
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..reps {
        let path = Path::new(dir).join(format!("rep-{rep}"));
        std::fs::create_dir_all(&path)?;
        let store = Store::open(&path, Config::default()).map_err(engine::to_io)?;
        store
            .create_shard_with("bench-0", options.clone())
            .map_err(engine::to_io)?;
        let mut sent = 0u64;
        let start = Instant::now();
        let elapsed = loop {
            for _ in 0..per_check {
                store
                    .append_batch("bench-0", &records)
                    .map_err(engine::to_io)?;
            }
            sent += (per_check * batch) as u64;
            let elapsed = start.elapsed().as_secs_f64();
            if elapsed >= seconds {
                break elapsed;
            }
        };
        store.close().map_err(engine::to_io)?;
        samples.push(sent as f64 / elapsed);
    }
    println!(
        "{}",
        json!({
            "driver": "rust", "library_version": mqstore::VERSION,
            "record_bytes": record_bytes, "batch": batch, "seconds": seconds,
            "samples": samples,
        })
    );
    Ok(())
}
