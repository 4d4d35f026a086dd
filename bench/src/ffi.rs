//! FFI overhead: the headline batch-append workload driven from C through
//! libmqstore.so and from Python through the package, run as subprocesses
//! and merged into the same results. A driver that cannot run here (no
//! header yet, no library, no package) is reported absent with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::engine::APPEND_RETENTION_BYTES;
use crate::memory::{HEADLINE, HEADLINE_SPEC};
use crate::util::Stats;
use crate::{Plan, Results};

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
    "unknown"
}

/// Runs a driver and parses the JSON object on the last line of its output.
fn run_driver(command: &mut Command) -> Result<Value, String> {
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
    })
}

fn run_c(base: &Path, plan: &Plan, drivers: &Drivers, results: &mut Results) {
    let header = drivers.include.join("mqstore.h");
    if !header.exists() {
        results.absent(
            C_METRIC,
            "msgs/s",
            &format!("{} does not exist yet (the C API header)", header.display()),
        );
        return;
    }
    if !drivers.lib.exists() {
        results.absent(
            C_METRIC,
            "msgs/s",
            &format!(
                "{} not found: build it with `cargo build --release -p mqstore`",
                drivers.lib.display()
            ),
        );
        return;
    }
    let source = drivers.root.join("bench/c/ffi_bench.c");
    let binary = drivers.build_dir.join("ffi_bench");
    let lib_dir = drivers.lib.parent().unwrap_or(Path::new("."));
    if let Err(e) = std::fs::create_dir_all(&drivers.build_dir) {
        results.failed(
            C_METRIC,
            "msgs/s",
            &format!("creating {}: {e}", drivers.build_dir.display()),
        );
        return;
    }
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
            results.failed(
                C_METRIC,
                "msgs/s",
                &format!(
                    "compiling {} failed: {}",
                    source.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            return;
        }
        Err(e) => {
            results.absent(
                C_METRIC,
                "msgs/s",
                &format!("no C compiler ({}): {e}", drivers.cc),
            );
            return;
        }
    }
    let dir = match tempfile::Builder::new().prefix("ffi-c-").tempdir_in(base) {
        Ok(dir) => dir,
        Err(e) => return results.failed(C_METRIC, "msgs/s", &e.to_string()),
    };
    // `cargo run` prepends its own target dirs to LD_LIBRARY_PATH, which
    // outranks the binary's RUNPATH: pin the loader to the library measured.
    let lib_dir = drivers.lib.parent().unwrap_or(Path::new("."));
    let report = run_driver(
        Command::new(&binary)
            .env("LD_LIBRARY_PATH", lib_dir)
            .arg(dir.path())
            .arg(HEADLINE_SPEC.record_size.to_string())
            .arg(HEADLINE_SPEC.batch.to_string())
            .arg(plan.headline_secs.to_string())
            .arg(plan.reps.to_string())
            .arg(APPEND_RETENTION_BYTES.to_string()),
    );
    match report {
        Ok(report) => {
            let mut extra = common_params(plan);
            extra["library"] = json!(drivers.lib.display().to_string());
            extra["compiler"] = json!(drivers.cc);
            extra["api"] = json!("mqs_append_batch");
            record(results, C_METRIC, report, extra);
        }
        Err(e) => results.failed(C_METRIC, "msgs/s", &e),
    }
}

fn run_python(base: &Path, plan: &Plan, drivers: &Drivers, results: &mut Results) {
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
            results.absent(
                PYTHON_METRIC,
                "msgs/s",
                &format!(
                    "{} cannot import mqstore ({last}); build it with `make python-release`",
                    drivers.python.display()
                ),
            );
            return;
        }
        Err(e) => {
            results.absent(
                PYTHON_METRIC,
                "msgs/s",
                &format!("no Python interpreter at {}: {e}", drivers.python.display()),
            );
            return;
        }
    };
    let build = extension_build(&extension, &drivers.target);
    if build == "debug" {
        results.absent(
            PYTHON_METRIC,
            "msgs/s",
            &format!(
                "the installed extension {} is a debug build (identical to {}/debug/lib_mqstore.so); \
                 install the release build with `make python-release`",
                extension.display(),
                drivers.target.display()
            ),
        );
        return;
    }
    let dir = match tempfile::Builder::new().prefix("ffi-py-").tempdir_in(base) {
        Ok(dir) => dir,
        Err(e) => return results.failed(PYTHON_METRIC, "msgs/s", &e.to_string()),
    };
    let report = run_driver(
        Command::new(&drivers.python)
            .arg(drivers.root.join("bench/python/ffi_bench.py"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--record-bytes", &HEADLINE_SPEC.record_size.to_string()])
            .args(["--batch", &HEADLINE_SPEC.batch.to_string()])
            .args(["--seconds", &plan.headline_secs.to_string()])
            .args(["--reps", &plan.reps.to_string()])
            .args(["--retention-bytes", &APPEND_RETENTION_BYTES.to_string()]),
    );
    match report {
        Ok(report) => {
            let mut extra = common_params(plan);
            extra["interpreter"] = json!(drivers.python.display().to_string());
            extra["extension"] = json!(extension.display().to_string());
            extra["extension_build"] = json!(build);
            extra["api"] = json!("Store.append_batch(shard, list of bytes)");
            record(results, PYTHON_METRIC, report, extra);
        }
        Err(e) => results.failed(PYTHON_METRIC, "msgs/s", &e),
    }
}

pub fn run(base: &Path, plan: &Plan, drivers: &Drivers, results: &mut Results) {
    println!("== FFI overhead (C through libmqstore.so, Python through the package)");
    run_c(base, plan, drivers, results);
    run_python(base, plan, drivers, results);
}

pub fn compare(results: &mut Results) {
    results.compare(C_METRIC, HEADLINE, 1.0, "vs the Rust API, same workload");
    results.compare(
        PYTHON_METRIC,
        HEADLINE,
        1.0,
        "vs the Rust API, same workload",
    );
}
