//! The results file: one entry per metric, the machine it ran on, and the
//! readable table printed at the end of a run.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::util::Stats;

/// Whether a metric has a value, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured in this run.
    Ok,
    /// The engine or feature it measures is not in this build. Never reported
    /// as zero: a missing engine has no speed.
    Absent,
    /// The metric does not apply (e.g. fsync durability on the memory engine).
    #[serde(rename = "n/a")]
    NotApplicable,
    /// The measurement was attempted and failed; `params.error` says why.
    Failed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Absent => "ABSENT",
            Status::NotApplicable => "n/a",
            Status::Failed => "FAILED",
        }
    }
}

/// A comparison printed beside a metric: its value as a fraction of another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Versus {
    pub metric: String,
    pub ratio: f64,
    /// What is being compared, e.g. "payload GB/s vs memcpy GB/s".
    pub basis: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    /// `null` unless `status` is `ok`.
    pub value: Option<f64>,
    pub unit: String,
    pub status: Status,
    pub params: Map<String, Value>,
    pub quick: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs: Option<Versus>,
}

/// Collects metrics as the run proceeds.
pub struct Results {
    pub quick: bool,
    pub metrics: Vec<Metric>,
}

/// Turns `json!({...})` into the params map (anything else becomes empty).
pub fn params(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Results {
    pub fn new(quick: bool) -> Self {
        Results {
            quick,
            metrics: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, value: Option<f64>, unit: &str, status: Status, p: Value) {
        let metric = Metric {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            status,
            params: params(p),
            quick: self.quick,
            vs: None,
        };
        println!("  {}", one_line(&metric));
        self.metrics.push(metric);
    }

    /// A single measured value.
    pub fn value(&mut self, name: &str, value: f64, unit: &str, p: Value) {
        self.push(name, Some(value), unit, Status::Ok, p);
    }

    /// The median of repetitions; samples, min and max go into params.
    pub fn stats(&mut self, name: &str, stats: &Stats, unit: &str, p: Value) {
        let mut map = params(p);
        map.insert("reps".into(), json!(stats.samples.len()));
        map.insert("min".into(), json!(stats.min()));
        map.insert("max".into(), json!(stats.max()));
        map.insert("samples".into(), json!(stats.samples));
        self.push(
            name,
            Some(stats.median()),
            unit,
            Status::Ok,
            Value::Object(map),
        );
    }

    /// Adds metrics measured by a child process (already printed by it).
    pub fn extend(&mut self, metrics: Vec<Metric>) {
        self.metrics.extend(metrics);
    }

    pub fn absent(&mut self, name: &str, unit: &str, reason: &str) {
        self.push(
            name,
            None,
            unit,
            Status::Absent,
            json!({ "reason": reason }),
        );
    }

    pub fn not_applicable(&mut self, name: &str, unit: &str, reason: &str) {
        self.push(
            name,
            None,
            unit,
            Status::NotApplicable,
            json!({ "reason": reason }),
        );
    }

    pub fn failed(&mut self, name: &str, unit: &str, error: &str) {
        self.push(name, None, unit, Status::Failed, json!({ "error": error }));
    }

    /// Records `result` as a median metric, or as failed with its error.
    pub fn stats_or_failed(
        &mut self,
        name: &str,
        result: std::io::Result<Stats>,
        unit: &str,
        p: Value,
    ) {
        match result {
            Ok(stats) => self.stats(name, &stats, unit, p),
            Err(e) => self.failed(name, unit, &e.to_string()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    pub fn value_of(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(|m| m.value)
    }

    /// Attaches `name / other` (after converting `name` with `scale`) to
    /// `name`, when both have values.
    pub fn compare(&mut self, name: &str, other: &str, scale: f64, basis: &str) {
        let Some(denominator) = self.value_of(other).filter(|v| *v > 0.0) else {
            return;
        };
        if let Some(metric) = self.metrics.iter_mut().find(|m| m.name == name) {
            if let Some(value) = metric.value {
                metric.vs = Some(Versus {
                    metric: other.to_string(),
                    ratio: value * scale / denominator,
                    basis: basis.to_string(),
                });
            }
        }
    }

    /// The whole results document.
    pub fn to_json(&self, machine: Value, started_at: &str, elapsed_s: f64) -> Value {
        json!({
            "schema": 1,
            "quick": self.quick,
            "started_at": started_at,
            "elapsed_s": elapsed_s,
            "mqstore_version": mqstore::VERSION,
            "machine": machine,
            "metrics": self.metrics,
        })
    }

    /// The table printed at the end of a run (and saved beside the JSON).
    pub fn table(&self) -> String {
        let width = self
            .metrics
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(10);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>14}  {:<9}  vs / note",
            "metric", "value", "unit"
        );
        let _ = writeln!(out, "{}", "-".repeat(width + 60));
        for metric in &self.metrics {
            let _ = writeln!(out, "{}", table_row(metric, width));
        }
        out
    }
}

/// Formats a number for the table: thousands separators for large values,
/// three significant digits for small ones.
pub fn human(value: f64) -> String {
    if value.abs() >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if rounded < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn note(metric: &Metric) -> String {
    match metric.status {
        Status::Ok => {
            let mut parts = Vec::new();
            // What the figure must be read with (e.g. the offered rate of a
            // latency, the configuration that gave the write ceiling).
            if let Some(note) = metric.params.get("note").and_then(Value::as_str) {
                parts.push(note.to_string());
            }
            if let Some(vs) = &metric.vs {
                parts.push(format!(
                    "{:.1}% of {} ({})",
                    vs.ratio * 100.0,
                    vs.metric,
                    vs.basis
                ));
            }
            if let (Some(min), Some(max)) = (
                metric.params.get("min").and_then(Value::as_f64),
                metric.params.get("max").and_then(Value::as_f64),
            ) {
                parts.push(format!("range {}..{}", human(min), human(max)));
            }
            parts.join("; ")
        }
        _ => metric
            .params
            .get("reason")
            .or_else(|| metric.params.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("")
            // One row per metric: multi-line compiler or driver errors are
            // folded (the JSON keeps them as they were).
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" | "),
    }
}

fn table_row(metric: &Metric, width: usize) -> String {
    let value = match metric.value {
        Some(v) => human(v),
        None => metric.status.label().to_string(),
    };
    format!(
        "{:<width$}  {:>14}  {:<9}  {}",
        metric.name,
        value,
        metric.unit,
        note(metric)
    )
}

/// The progress line printed as each metric is recorded.
fn one_line(metric: &Metric) -> String {
    let value = match metric.value {
        Some(v) => format!("{} {}", human(v), metric.unit),
        None => metric.status.label().to_string(),
    };
    let detail = note(metric);
    if detail.is_empty() {
        format!("{} = {value}", metric.name)
    } else {
        format!("{} = {value}  [{detail}]", metric.name)
    }
}

/// Writes the JSON document and the table next to it (`results.txt`).
pub fn write_files(path: &Path, document: &Value, table: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_string_pretty(document).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")?;
    std::fs::write(path.with_extension("txt"), table)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers() {
        assert_eq!(human(10_234_567.8), "10,234,568");
        assert_eq!(human(999.4), "999");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(0.01234), "0.012");
    }

    #[test]
    fn absent_metrics_have_no_value() {
        let mut results = Results::new(true);
        results.absent("journal.x", "msgs/s", "not built");
        let doc = results.to_json(json!({}), "now", 0.0);
        let metric = &doc["metrics"][0];
        assert!(metric["value"].is_null());
        assert_eq!(metric["status"], "absent");
        assert_eq!(metric["quick"], true);
        assert_eq!(metric["params"]["reason"], "not built");
    }

    #[test]
    fn comparisons_need_both_values() {
        let mut results = Results::new(false);
        results.value("a", 50.0, "x", json!({}));
        results.value("b", 200.0, "x", json!({}));
        results.absent("c", "x", "no");
        results.compare("a", "b", 1.0, "test");
        results.compare("a", "c", 1.0, "test");
        let vs = results.get("a").unwrap().vs.as_ref().unwrap();
        assert_eq!(vs.metric, "b");
        assert!((vs.ratio - 0.25).abs() < 1e-12);
    }
}
