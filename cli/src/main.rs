//! `mqstore`: the operator's tool for a store directory.
//!
//! Every command but `bench` opens the store read-only (`store.read_only`):
//! it replays what a broker's open replays but changes no file (no torn
//! tail cut, no retention, no checkpoint at close). The shared directory
//! lock lets inspections run side by side but never beside a broker that
//! has the store open, unless `--wait` is given, which waits for that
//! broker to close it. Only `repair` writes: its skip_corrupt pass.
//! docs/OPERATING.md describes the commands for operators.

mod bench;
mod dump;
mod verify;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mqstore::{Config, Error, Store};

const USAGE: &str = "\
usage: mqstore <command> [options]

commands:
  info   DIR [--json]                 shards, engines, watermarks, sizes
  stats  DIR [SHARD]                  the store's (or one shard's) statistics, JSON
  dump   DIR SHARD [--from OFFSET] [--max-records N] [--values] [--json]
                                      batches and records of a shard (like kafka-dump-log)
  verify DIR [--progress|--quiet]     every batch's CRC and every offset index entry;
                                      exit 1 when anything is damaged
  repair DIR                          reopen a journal that refuses to open
                                      (recovery_mode = skip_corrupt), then close cleanly
  bench  DIR [--mb N] [--json]        appends and reads on the disk holding DIR, beside
                                      what the raw disk does

options of the commands that open a store:
  --wait           wait for another process that has the store open to close it
                   (without it, such a store is refused with exit code 3)
  --config FILE    the broker's storage.toml (engine settings such as [file] max_memory_mb)

exit codes: 0 done, 1 failed (damage found, store refused to open), 2 usage, 3 store in use
  mqstore --version | --help";

/// Why a command stopped, and the exit code that says so.
pub enum Failure {
    /// Damage found or an operation failed.
    Failed(String),
    Usage(String),
    /// Another process has the store open.
    InUse(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Failed(format!("{e} ({})", e.status().as_str()))
    }
}

pub type CliResult<T> = Result<T, Failure>;

/// Command-line arguments: positionals, `--flag`s and `--option value`s.
pub struct Args {
    pub positional: Vec<String>,
    flags: Vec<String>,
    options: HashMap<String, String>,
}

impl Args {
    fn parse(raw: &[String], flags: &[&str], options: &[&str]) -> CliResult<Args> {
        let mut args = Args {
            positional: Vec::new(),
            flags: Vec::new(),
            options: HashMap::new(),
        };
        let mut iter = raw.iter();
        while let Some(arg) = iter.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if flags.contains(&name) && inline.is_none() {
                    args.flags.push(name.to_string());
                } else if options.contains(&name) {
                    let value = match inline {
                        Some(v) => v,
                        None => iter
                            .next()
                            .cloned()
                            .ok_or_else(|| Failure::Usage(format!("--{name} needs a value")))?,
                    };
                    args.options.insert(name.to_string(), value);
                } else {
                    return Err(Failure::Usage(format!("unknown option '{arg}'")));
                }
            } else {
                args.positional.push(arg.clone());
            }
        }
        Ok(args)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub fn number(&self, name: &str) -> CliResult<Option<i64>> {
        self.option(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Failure::Usage(format!("--{name}: '{v}' is not a number")))
            })
            .transpose()
    }

    fn exactly(&self, names: &[&str]) -> CliResult<()> {
        if self.positional.len() != names.len() {
            return Err(Failure::Usage(format!(
                "expected {}, got {} argument(s)",
                names.join(" "),
                self.positional.len()
            )));
        }
        Ok(())
    }
}

/// The configuration a command opens the store with: the broker's file if
/// given, read-only, and `adjust` on top.
pub fn config(args: &Args, adjust: impl FnOnce(&mut Config)) -> CliResult<Config> {
    let mut config = match args.option("config") {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.read_only = true;
    adjust(&mut config);
    Ok(config)
}

/// Opens an existing store. Refuses a directory that is not a store (it
/// would create one), and one another process has open, unless `wait`:
/// then it blocks on the directory lock until that process closes it.
pub fn open_store(dir: &Path, config: Config, wait: bool) -> CliResult<Store> {
    if !dir.join("LOCK").is_file() {
        return Err(Failure::Failed(format!(
            "'{}' is not a store directory (it has no LOCK file)",
            dir.display()
        )));
    }
    loop {
        match Store::open(dir, config.clone()) {
            Err(Error::Locked(_)) if wait => wait_for_lock(dir, config.read_only)?,
            Err(Error::Locked(_)) => {
                return Err(Failure::InUse(format!(
                    "'{}' is open in another process (a running broker?); stop it, or pass --wait",
                    dir.display()
                )))
            }
            other => return Ok(other?),
        }
    }
}

/// Blocks until the process holding the store's lock releases it (the
/// shared lock of a `read_only` open waits only for a writer). The lock is
/// dropped again at once: the store's own open takes it, and when another
/// process wins that race the caller waits again.
fn wait_for_lock(dir: &Path, read_only: bool) -> CliResult<()> {
    let path = dir.join("LOCK");
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| Failure::Failed(format!("opening '{}': {e}", path.display())))?;
    eprintln!(
        "mqstore: '{}' is open in another process; waiting for it to close",
        dir.display()
    );
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode) };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(Failure::Failed(format!(
                "waiting for '{}': {error}",
                path.display()
            )));
        }
    }
}

fn store_dir(args: &Args) -> PathBuf {
    PathBuf::from(&args.positional[0])
}

fn info(raw: &[String]) -> CliResult<()> {
    let args = Args::parse(raw, &["json", "wait"], &["config"])?;
    args.exactly(&["DIR"])?;
    let store = open_store(&store_dir(&args), config(&args, |_| ())?, args.flag("wait"))?;
    let engines: Vec<&str> = mqstore::engine::registry::available()
        .map(|spec| spec.name)
        .collect();
    let mut shards = Vec::new();
    for name in store.list_shards()? {
        let info = store.shard_info(&name)?;
        shards.push(serde_json::json!({
            "name": name,
            "engine": info.engine.name(),
            "durability": info.options.durability.name(),
            "first_offset": info.first_offset,
            "next_offset": info.next_offset,
            "records": info.records,
            "bytes": info.bytes,
        }));
    }
    store.close()?;
    if args.flag("json") {
        let out = serde_json::json!({
            "dir": args.positional[0],
            "version": mqstore::VERSION,
            "engines": engines,
            "shards": shards,
        });
        println!("{out:#}");
        return Ok(());
    }
    println!(
        "store {} (mqstore {}; engines in this build: {})",
        args.positional[0],
        mqstore::VERSION,
        engines.join(", ")
    );
    println!(
        "{:<24} {:<8} {:<10} {:>12} {:>12} {:>12} {:>14}",
        "shard", "engine", "durability", "first", "next", "records", "bytes"
    );
    for s in &shards {
        println!(
            "{:<24} {:<8} {:<10} {:>12} {:>12} {:>12} {:>14}",
            s["name"].as_str().unwrap_or(""),
            s["engine"].as_str().unwrap_or(""),
            s["durability"].as_str().unwrap_or(""),
            s["first_offset"].to_string(),
            s["next_offset"].to_string(),
            s["records"].to_string(),
            s["bytes"].to_string()
        );
    }
    println!("{} shard(s)", shards.len());
    Ok(())
}

fn stats(raw: &[String]) -> CliResult<()> {
    let args = Args::parse(raw, &["wait"], &["config"])?;
    if args.positional.is_empty() || args.positional.len() > 2 {
        return Err(Failure::Usage("expected DIR [SHARD]".into()));
    }
    let store = open_store(&store_dir(&args), config(&args, |_| ())?, args.flag("wait"))?;
    let stats = match args.positional.get(1) {
        Some(shard) => store.shard_stats(shard),
        None => store.stats(),
    };
    store.close()?;
    println!("{:#}", stats?);
    Ok(())
}

/// Reopens a store whose journal refuses to open (damage to data a synced
/// entry vouches for) with `recovery_mode = "skip_corrupt"`, writable, then
/// closes it cleanly: the checkpoint that close writes lets the next open,
/// in the default mode, start after the damage.
fn repair(raw: &[String]) -> CliResult<()> {
    let args = Args::parse(raw, &["wait"], &["config"])?;
    args.exactly(&["DIR"])?;
    let dir = store_dir(&args);
    match open_store(&dir, config(&args, |_| ())?, args.flag("wait")) {
        Ok(store) => {
            store.close()?;
            println!("repair: the store opens as it is; nothing to repair (run mqstore verify to check every batch)");
            return Ok(());
        }
        Err(Failure::Failed(reason)) => {
            println!("repair: the store refuses to open: {reason}");
        }
        Err(other) => return Err(other),
    }
    let skip = config(&args, |c| {
        c.read_only = false;
        // Repairing must not be what starts deleting by age.
        c.retention_check_ms = 0;
        c.journal.recovery_mode = mqstore::config::RecoveryMode::SkipCorrupt;
    })?;
    let store = open_store(&dir, skip, args.flag("wait")).map_err(|e| match e {
        Failure::Failed(reason) => Failure::Failed(format!(
            "cannot repair: it does not open with recovery_mode = \"skip_corrupt\" either: {reason} \
             (only the journal can skip damage; restore a backup)"
        )),
        other => other,
    })?;
    let mut skipped = 0;
    let mut truncated = 0;
    for name in store.list_shards()? {
        let stats = store.shard_stats(&name)?;
        if stats["engine"] == "journal" {
            skipped = stats["engine_stats"]["journal"]["skipped_bytes"]
                .as_u64()
                .unwrap_or(0);
            truncated = stats["engine_stats"]["journal"]["truncated_bytes"]
                .as_u64()
                .unwrap_or(0);
        }
    }
    store.close()?;
    // The proof: the store now opens without skip_corrupt.
    let store = open_store(&dir, config(&args, |_| ())?, false)?;
    store.close()?;
    println!(
        "repair: done: the journal skipped {skipped} damaged bytes and cut a torn tail of {truncated} bytes; \
         the records in them are gone. The store opens again in the default recovery mode."
    );
    Ok(())
}

fn run(argv: &[String]) -> CliResult<()> {
    let Some(command) = argv.first() else {
        return Err(Failure::Usage("no command given".into()));
    };
    let rest = &argv[1..];
    match command.as_str() {
        "info" => info(rest),
        "stats" => stats(rest),
        "dump" => dump::run(rest),
        "verify" => verify::run(rest),
        "repair" => repair(rest),
        "bench" => bench::run(rest),
        "--version" | "version" => {
            println!("mqstore {}", mqstore::VERSION);
            Ok(())
        }
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Failure::Usage(format!("unknown command '{other}'"))),
    }
}

fn main() -> ExitCode {
    // Like any filter, end quietly when the reader of our output goes away
    // (`mqstore dump ... | head`) instead of failing to print.
    // SAFETY: restores the default disposition of SIGPIPE before any thread
    // starts; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(message)) => {
            eprintln!("mqstore: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("mqstore: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::InUse(message)) => {
            eprintln!("mqstore: {message}");
            ExitCode::from(3)
        }
    }
}
