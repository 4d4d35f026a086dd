//! Facts about the machine and the filesystem under test, recorded with every
//! run: a number means little without the hardware it was measured on.

use std::ffi::CStr;
use std::path::Path;

use serde_json::{json, Value};

fn cpuinfo_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == field).then(|| value.trim().to_string())
    })
}

fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates every field within its array.
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (field(&u.release), field(&u.version))
}

/// statfs(2)'s magic number, named. ext2, ext3 and ext4 share one magic, so
/// the mount table (below) is what tells them apart.
fn statfs_type(dir: &Path) -> Option<(String, u64)> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data, filled by the call.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated; s is writable.
    if unsafe { libc::statfs(path.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let magic = s.f_type as u64;
    let name = match magic {
        0xEF53 => "ext2/3/4",
        0x0102_1994 => "tmpfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        _ => "unknown",
    };
    Some((name.to_string(), magic))
}

/// The mount holding `dir` (longest mount point that prefixes it), from
/// /proc/self/mountinfo: (mount point, fs type, source device, options).
fn mount_of(dir: &Path) -> Option<(String, String, String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(String, String, String, String)> = None;
    for line in text.lines() {
        // Fields: id parent major:minor root mount-point options ... - type source super-options
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fs), Some(source)) =
            (left.get(4), right.first(), right.get(1))
        else {
            continue;
        };
        let mount_point = mount_point.replace("\\040", " ");
        if dir.starts_with(&mount_point)
            && best.as_ref().is_none_or(|b| mount_point.len() >= b.0.len())
        {
            let options = right.get(2).unwrap_or(&"").to_string();
            best = Some((mount_point, fs.to_string(), source.to_string(), options));
        }
    }
    best
}

/// Whether the block device behind `source` (e.g. /dev/vda) is rotational.
fn rotational(source: &str) -> Option<bool> {
    let name = Path::new(source).file_name()?.to_str()?;
    // Partitions (vda1) report through their parent disk (vda).
    let candidates = [
        name.to_string(),
        name.trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string(),
    ];
    candidates.iter().find_map(|disk| {
        let text = std::fs::read_to_string(format!("/sys/block/{disk}/queue/rotational")).ok()?;
        Some(text.trim() == "1")
    })
}

pub fn describe(dir: &Path) -> Value {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let (kernel, kernel_version) = uname();
    let (statfs_name, magic) = statfs_type(&dir).unwrap_or_default();
    let mount = mount_of(&dir);
    let logical_cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "logical_cpus": logical_cpus,
        "cpu_model": cpuinfo_field("model name"),
        "hypervisor": cpuinfo_field("flags").map(|f| f.split(' ').any(|x| x == "hypervisor")),
        "memory_mb": meminfo_kib("MemTotal").map(|k| k / 1024),
        "kernel": kernel,
        "kernel_version": kernel_version,
        "bench_dir": dir.display().to_string(),
        "filesystem": {
            "type": mount.as_ref().map(|m| m.1.clone()).unwrap_or(statfs_name.clone()),
            "statfs_type": statfs_name,
            "statfs_magic": format!("{magic:#x}"),
            "mount_point": mount.as_ref().map(|m| m.0.clone()),
            "source": mount.as_ref().map(|m| m.2.clone()),
            "options": mount.as_ref().map(|m| m.3.clone()),
            "rotational": mount.as_ref().and_then(|m| rotational(&m.2)),
        },
    })
}

/// The current UTC time as RFC 3339, without a date-time dependency.
pub fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The three load averages of /proc/loadavg (1, 5 and 15 minutes).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// Samples the 1-minute load average every `period` on a thread of its own
/// until stopped: on a shared machine a figure means little without the
/// load it was measured under, so every run records it.
pub struct LoadSampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<f64>>,
    start: Option<[f64; 3]>,
    period: std::time::Duration,
}

impl LoadSampler {
    pub fn start(period: std::time::Duration) -> LoadSampler {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            loop {
                if let Some([one, _, _]) = load_average() {
                    samples.push(one);
                }
                match stopped.recv_timeout(period) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return samples,
                }
            }
        });
        LoadSampler {
            stop,
            thread,
            start: load_average(),
            period,
        }
    }

    /// Stops sampling; returns the record for results.json and a one-line
    /// summary for the table's header.
    pub fn finish(self) -> (Value, String) {
        let _ = self.stop.send(());
        let samples = self.thread.join().unwrap_or_default();
        let end = load_average();
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(0.0, f64::max);
        let one = |l: Option<[f64; 3]>| l.map_or("?".to_string(), |l| format!("{:.2}", l[0]));
        let summary = if samples.is_empty() {
            format!(
                "load average (1 min) {} at start, {} at end",
                one(self.start),
                one(end)
            )
        } else {
            format!(
                "load average (1 min) {} at start, {min:.2}..{max:.2} during, {} at end",
                one(self.start),
                one(end)
            )
        };
        let record = json!({
            "source": "/proc/loadavg", "cores": std::thread::available_parallelism()
                .map(|n| n.get()).unwrap_or(0),
            "start": self.start, "end": end,
            "during_1m": { "min": (!samples.is_empty()).then_some(min),
                           "max": (!samples.is_empty()).then_some(max),
                           "samples": samples, "period_s": self.period.as_secs_f64() },
        });
        (record, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_this_machine() {
        let facts = describe(Path::new("/"));
        assert!(facts["cores"].as_u64().unwrap() >= 1);
        assert!(!facts["kernel"].as_str().unwrap().is_empty());
        assert!(!facts["filesystem"]["type"].as_str().unwrap().is_empty());
    }

    #[test]
    fn samples_the_load() {
        let sampler = LoadSampler::start(std::time::Duration::from_millis(5));
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (record, summary) = sampler.finish();
        assert!(summary.starts_with("load average"), "{summary}");
        assert!(record["during_1m"]["samples"].as_array().unwrap().len() >= 2);
    }

    #[test]
    fn rfc3339_shape() {
        let now = utc_now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
