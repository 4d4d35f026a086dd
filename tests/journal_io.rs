//! The journal's I/O paths: every `[journal] io` × `direct` combination this
//! machine offers runs the same write / read-back / reopen checks, the files
//! they write are byte-identical, O_DIRECT falls back to the page cache
//! where the filesystem refuses it, and `auto` falls back to pwrite where
//! io_uring is unavailable (simulated with a seccomp filter) while `uring`
//! fails clearly. io_uring must work here unless `MQS_EXPECT_NO_URING=1`
//! declares a machine without it (see `uring_available`).

use std::path::Path;
use std::sync::Arc;

use mqstore::{Config, Record, Status, Store};

mod common;
use common::{segment_files, values_of};

/// Not a multiple of 4096: the last block of every segment is partial,
/// which O_DIRECT cannot write (see writer.rs).
const SEGMENT_BYTES: u64 = 65536 + 1000;

fn config(io: &str, direct: bool, durability: &str) -> Config {
    Config::from_toml_str(&format!(
        "[shard]\nengine = \"journal\"\ndurability = \"{durability}\"\n\
         [journal]\nsegment_bytes = {SEGMENT_BYTES}\nio = \"{io}\"\ndirect = {direct}\n"
    ))
    .unwrap()
}

fn io_of(store: &Store, shard: &str) -> String {
    store.shard_stats(shard).unwrap()["engine_stats"]["journal"]["io"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `MQS_EXPECT_NO_URING=1` declares a machine without io_uring.
fn expect_no_uring() -> bool {
    std::env::var("MQS_EXPECT_NO_URING").as_deref() == Ok("1")
}

/// Whether io_uring works here (the strict mode's answer), checking that
/// the answer is consistent with `auto` and that the refusal is clear.
/// Its absence fails the tests that need it, unless `MQS_EXPECT_NO_URING=1`
/// declared it (and a declaration that is not true fails too).
fn uring_available() -> bool {
    uring_policy(expect_no_uring()).unwrap_or_else(|problem| panic!("{problem}"))
}

/// `Ok(true)`: io_uring works (and was not declared absent); `Ok(false)`:
/// declared absent and indeed absent; `Err`: what is wrong.
fn uring_policy(declared_absent: bool) -> Result<bool, String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config("uring", false, "os")).unwrap();
    let err = match store.create_shard("s", None) {
        Ok(_) if declared_absent => {
            return Err(
                "MQS_EXPECT_NO_URING=1 declares no io_uring, yet it works here: \
                        unset it so that the io_uring paths are tested"
                    .into(),
            )
        }
        Ok(_) => {
            assert_eq!(io_of(&store, "s"), "uring");
            return Ok(true);
        }
        Err(err) => err,
    };
    assert_uring_refused(&err);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config("auto", false, "os")).unwrap();
    store.create_shard("s", None).unwrap();
    assert_eq!(io_of(&store, "s"), "pwrite", "auto must fall back");
    if declared_absent {
        Ok(false)
    } else {
        Err(format!(
            "io_uring is unavailable here ({err}), so its paths cannot be tested; \
             on a machine without io_uring, set MQS_EXPECT_NO_URING=1 to skip them"
        ))
    }
}

/// Reports a part of `test` that did not run, past the test harness's
/// output capture (which would hide it in a passing test).
fn skipped(test: &str, what: &str) {
    use std::io::Write;
    let line = format!("SKIPPED: {test}: {what} (MQS_EXPECT_NO_URING=1: no io_uring here)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn assert_uring_refused(err: &mqstore::Error) {
    assert_eq!(err.status(), Status::Unsupported, "{err}");
    let message = err.to_string();
    assert!(message.contains("journal.io"), "{message}");
    assert!(message.contains("io_uring is not available"), "{message}");
}

/// Every (io, direct) combination to run, with the `io` stats value each
/// must show on a filesystem that supports O_DIRECT.
fn modes(test: &str) -> Vec<(&'static str, bool, &'static str)> {
    let uring = uring_available();
    let mut out = vec![
        ("pwrite", false, "pwrite"),
        ("pwrite", true, "pwrite+direct"),
    ];
    if uring {
        out.extend([
            ("uring", false, "uring"),
            ("uring", true, "uring+direct"),
            ("auto", true, "uring+direct"),
        ]);
    } else {
        skipped(test, "the io = \"uring\" and \"auto\" + io_uring paths");
        out.push(("auto", true, "pwrite+direct"));
    }
    out
}

/// A value whose length varies so flushes end anywhere in a block.
fn value(shard: usize, i: usize) -> Vec<u8> {
    let len = (i * 37 + shard * 11) % 1500 + 1;
    let mut v = format!("{shard}-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    v
}

/// Several threads append with `durability`, each reading back what it just
/// wrote; then reopen (the tail block is read back from disk), append more
/// and reopen again.
fn write_read_reopen(io: &str, direct: bool, expect: &str, durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let threads = 4;
    let per_thread = 150;
    {
        let store = Arc::new(Store::open(dir.path(), config(io, direct, durability)).unwrap());
        for t in 0..threads {
            store.create_shard(&format!("s{t}"), None).unwrap();
        }
        assert_eq!(io_of(&store, "s0"), expect);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let name = format!("s{t}");
                    for i in 0..per_thread {
                        let v = value(t, i);
                        let offset = store.append(&name, &Record::new(&v)).unwrap();
                        assert_eq!(offset, i as i64);
                        // Read-your-write through the segment mapping.
                        let r = store.read(&name, offset, 1, usize::MAX).unwrap();
                        assert_eq!(r.records[0].value_bytes(), &v[..], "{name} @ {i}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let journal = &store.shard_stats("s0").unwrap()["engine_stats"]["journal"];
        assert!(journal["segments"].as_u64().unwrap() > 1, "{journal}");
        assert!(journal["poisoned"].is_null(), "{journal}");
        store.close().unwrap();
    }
    for round in 0..2 {
        let store = Store::open(dir.path(), config(io, direct, durability)).unwrap();
        assert_eq!(io_of(&store, "s0"), expect);
        for t in 0..threads {
            let name = format!("s{t}");
            let n = per_thread + round * 7;
            let want: Vec<(i64, Vec<u8>)> = (0..n).map(|i| (i as i64, value(t, i))).collect();
            assert_eq!(values_of(&store, &name), want, "{io}/{direct} {name}");
            // Appends after reopening continue in the recovered tail block.
            for i in n..n + 7 {
                let v = value(t, i);
                assert_eq!(store.append(&name, &Record::new(&v)).unwrap(), i as i64);
                let r = store.read(&name, i as i64, 1, usize::MAX).unwrap();
                assert_eq!(r.records[0].value_bytes(), &v[..]);
            }
        }
        store.close().unwrap();
    }
}

#[test]
fn every_io_path_writes_reads_and_reopens() {
    for (io, direct, expect) in modes("every_io_path_writes_reads_and_reopens") {
        for durability in ["fsync", "os", "none"] {
            eprintln!("io = {io}, direct = {direct}, durability = {durability}");
            write_read_reopen(io, direct, expect, durability);
        }
    }
}

/// One thread, fixed timestamps, flushes of every size: the journal files
/// of every path must be byte-identical (the direct path's tail-block
/// rewrites neither lose nor duplicate bytes, and pads with zeros). The
/// cleaner is off: its background relocations land wherever its thread
/// gets to run.
#[test]
fn every_io_path_writes_identical_files() {
    let mut reference: Option<(String, Vec<Vec<u8>>)> = None;
    for (io, direct, _) in modes("every_io_path_writes_identical_files") {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut config = config(io, direct, "fsync");
            config.journal.cleaner = false;
            let store = Store::open(dir.path(), config).unwrap();
            store.create_shard("a", None).unwrap();
            store
                .create_shard("b", Some("durability = \"none\""))
                .unwrap();
            for i in 0..400 {
                // Now and then an entry larger than a segment, which gets a
                // segment of its own size (not a multiple of 4096 either).
                let v = if i % 97 == 50 {
                    vec![b'L'; 100_000 + i]
                } else {
                    value(0, i)
                };
                let record = Record {
                    timestamp_ms: 1_700_000_000_000 + i as i64,
                    ..Record::new(&v)
                };
                let shard = if i % 3 == 0 { "b" } else { "a" };
                store.append(shard, &record).unwrap();
            }
            store.close().unwrap();
        }
        let files: Vec<Vec<u8>> = segment_files(dir.path())
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(files.len() > 2);
        assert!(files.iter().all(|f| f.len() as u64 >= SEGMENT_BYTES));
        assert!(files.iter().any(|f| f.len() as u64 > SEGMENT_BYTES));
        let name = format!("{io}/direct={direct}");
        match &reference {
            None => reference = Some((name, files)),
            Some((ref_name, ref_files)) => {
                assert_eq!(files.len(), ref_files.len(), "{name} vs {ref_name}");
                for (i, (a, b)) in files.iter().zip(ref_files).enumerate() {
                    if a != b {
                        let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
                        panic!("segment {i}: {name} differs from {ref_name} at byte {at}");
                    }
                }
            }
        }
    }
}

/// A mapping of a segment made BEFORE the writes sees them right after each
/// append: direct writes invalidate the page cache range they cover,
/// including a partial block written again by the next flush.
#[test]
fn a_mapping_made_before_direct_writes_sees_them() {
    for (io, direct, expect) in modes("a_mapping_made_before_direct_writes_sees_them") {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(io, direct, "fsync")).unwrap();
        store.create_shard("s", None).unwrap();
        assert_eq!(io_of(&store, "s"), expect);
        let path = segment_files(dir.path())[0].clone();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY (test): the file is never truncated while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        // Touch every page so the page cache holds the old (zero) content.
        let touched: u64 = map.iter().step_by(4096).map(|&b| b as u64).sum();
        assert!(touched < u64::MAX);
        for i in 0..40 {
            let v = vec![b'A' + (i % 26) as u8; 100 + i * 13];
            store.append("s", &Record::new(&v)).unwrap();
            let from_disk = std::fs::read(&path).unwrap();
            let needle = &v[..];
            let in_map = map.windows(needle.len()).any(|w| w == needle);
            assert!(
                in_map,
                "{io}/{direct}: record {i} not visible in the old mapping"
            );
            assert_eq!(
                &map[..],
                &from_disk[..],
                "{io}/{direct}: map differs after {i}"
            );
        }
        store.close().unwrap();
    }
}

/// tmpfs: before Linux 6.6 it refuses O_DIRECT (EINVAL) and the journal
/// writes through the page cache, saying so in its stats; later kernels
/// accept it. Either way the data must round-trip. (The EINVAL fallback
/// itself is also tested through the `FileOps` seam in the unit tests.)
#[test]
fn tmpfs_with_or_without_o_direct() {
    use std::os::unix::fs::OpenOptionsExt;
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    let dir = tempfile::tempdir_in(shm).unwrap();
    let probe_path = dir.path().join("probe");
    std::fs::write(&probe_path, b"").unwrap();
    let direct_ok = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe_path)
        .is_ok();
    eprintln!("O_DIRECT on tmpfs: {direct_ok}");
    let expect = format!(
        "{}{}",
        if uring_available() { "uring" } else { "pwrite" },
        if direct_ok { "+direct" } else { "" }
    );
    for round in 0..2 {
        let store = Store::open(dir.path(), config("auto", true, "fsync")).unwrap();
        if round == 0 {
            store.create_shard("s", None).unwrap();
        }
        assert_eq!(io_of(&store, "s"), expect);
        for i in 0..200 {
            let i = i + round * 200;
            assert_eq!(
                store.append("s", &Record::new(&value(1, i))).unwrap(),
                i as i64
            );
        }
        let want: Vec<(i64, Vec<u8>)> = (0..200 * (round + 1))
            .map(|i| (i as i64, value(1, i)))
            .collect();
        assert_eq!(values_of(&store, "s"), want);
        store.close().unwrap();
    }
}

/// Makes io_uring_setup fail with ENOSYS in the calling thread only (a
/// seccomp filter without TSYNC), as in sandboxes without io_uring.
fn deny_io_uring_in_this_thread() {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(JEQ_K, ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(JEQ_K, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY (test): prctl with valid arguments; the filter program is
    // copied by the kernel during the call. Without TSYNC it applies to
    // this thread (and threads it creates) only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        );
        assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn without_io_uring_auto_falls_back_and_uring_fails_clearly() {
    // In a thread of its own: the filter stays with the thread.
    std::thread::spawn(|| {
        deny_io_uring_in_this_thread();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config("uring", true, "fsync")).unwrap();
        let err = store.create_shard("s", None).unwrap_err();
        assert_uring_refused(&err);
        assert!(err.to_string().contains("not implemented"), "{err}"); // ENOSYS
        store.close().unwrap();
        drop(store);

        let store = Store::open(dir.path(), config("auto", true, "fsync")).unwrap();
        store.create_shard("s", None).unwrap();
        assert_eq!(io_of(&store, "s"), "pwrite+direct");
        for i in 0..50 {
            store.append("s", &Record::new(&value(2, i))).unwrap();
        }
        store.close().unwrap();
        drop(store);

        // Reopening a journal with `uring` fails too, before touching it.
        let Err(err) = Store::open(dir.path(), config("uring", true, "fsync")) else {
            panic!("a journal opened with io = \"uring\" and no io_uring");
        };
        assert_uring_refused(&err);
        let store = Store::open(dir.path(), config("pwrite", true, "fsync")).unwrap();
        assert_eq!(values_of(&store, "s").len(), 50);
        assert_eq!(io_of(&store, "s"), "pwrite+direct");
    })
    .join()
    .unwrap();
}

/// The io_uring tests' guard: a machine without io_uring fails them with
/// the remedy, unless it declared itself so; the declaration is checked.
#[test]
fn missing_io_uring_fails_unless_declared() {
    if expect_no_uring() {
        skipped(
            "missing_io_uring_fails_unless_declared",
            "the check that a false declaration fails",
        );
    } else {
        // Fails with the remedy where io_uring is missing.
        assert!(uring_available());
        let problem = uring_policy(true).unwrap_err();
        assert!(problem.contains("MQS_EXPECT_NO_URING=1"), "{problem}");
    }
    std::thread::spawn(|| {
        deny_io_uring_in_this_thread();
        let problem = uring_policy(false).unwrap_err();
        assert!(problem.contains("io_uring is unavailable"), "{problem}");
        assert!(problem.contains("MQS_EXPECT_NO_URING=1"), "{problem}");
        assert_eq!(uring_policy(true), Ok(false));
    })
    .join()
    .unwrap();
}
