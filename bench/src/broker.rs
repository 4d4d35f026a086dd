//! The example Kafka broker (examples/kafka_broker/broker.py) driven by a
//! real client, confluent-kafka, on loopback: what a Kafka front end on
//! mqstore delivers end to end, beside the in-process figures of the same
//! store (bench/python/kafka_broker_bench.py does the measuring).

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::ffi::{self, Drivers};
use crate::util::Stats;
use crate::{Plan, Results};

pub const PRODUCE_METRIC: &str = "example_broker.produce_1k.msgs_per_s";
pub const FETCH_METRIC: &str = "example_broker.fetch_1k.mb_per_s";

pub fn run(base: &Path, plan: &Plan, drivers: &Drivers, results: &mut Results) {
    println!("== Example Kafka broker (confluent-kafka producer and consumer on loopback)");
    if let Err(reason) = ffi::release_extension(drivers) {
        results.absent(PRODUCE_METRIC, "msgs/s", &reason);
        results.absent(FETCH_METRIC, "MB/s", &reason);
        return;
    }
    let messages: u64 = if plan.quick { 50_000 } else { 300_000 };
    let dir = match tempfile::Builder::new().prefix("broker-").tempdir_in(base) {
        Ok(dir) => dir,
        Err(e) => {
            results.failed(PRODUCE_METRIC, "msgs/s", &e.to_string());
            return;
        }
    };
    let mut command = Command::new(&drivers.python);
    command
        .arg(drivers.root.join("bench/python/kafka_broker_bench.py"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--messages", &messages.to_string()])
        .args(["--reps", &plan.reps.to_string()]);
    let report = match ffi::run_driver(&mut command) {
        Ok(report) => report,
        Err(error) => {
            results.failed(PRODUCE_METRIC, "msgs/s", &error);
            results.failed(FETCH_METRIC, "MB/s", &error);
            return;
        }
    };
    let params = json!({
        "client": "confluent-kafka (librdkafka), one producer, one consumer, one partition",
        "messages": messages, "value_bytes": report["value_bytes"],
        "broker": "examples/kafka_broker/broker.py, journal engine, durability fsync, acks=all",
    });
    for (name, key, unit) in [
        (PRODUCE_METRIC, "produce_samples", "msgs/s"),
        (FETCH_METRIC, "fetch_samples", "MB/s"),
    ] {
        match samples(&report, key) {
            Some(samples) => results.stats(name, &Stats::new(samples), unit, params.clone()),
            None => results.failed(
                name,
                unit,
                &format!("the driver reported no {key}: {report}"),
            ),
        }
    }
}

fn samples(report: &Value, key: &str) -> Option<Vec<f64>> {
    let samples: Vec<f64> = report[key]
        .as_array()?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    (!samples.is_empty()).then_some(samples)
}

/// The broker beside the store it runs on, measured in the same run:
/// produce against the journal's raw appends (same value size, fsync),
/// fetch against the journal's zero-copy sendfile of 1 KiB records.
pub fn compare(results: &mut Results) {
    results.compare(
        PRODUCE_METRIC,
        "journal.append_raw_1k_batch64_fsync.msgs_per_s",
        1.0,
        "vs the store's own raw appends, in process",
    );
    results.compare(
        FETCH_METRIC,
        "journal.sendfile_1k.gbps",
        1e-3,
        "vs the store's sendfile, in process (MB/s vs GB/s)",
    );
}
