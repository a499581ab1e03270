//! A run's figures as one JSON object (`--json`) or a small text table. Both load clients print
//! this, so a comparison script reads the same fields from each.

use std::time::Duration;

use serde_json::{Value, json};

use super::driver::Shape;
use super::procfs::CpuUsage;
use super::summary::Summary;

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was driven (`ringzero`, `etcd`).
    pub target: String,
    pub clients: usize,
    pub shape: Shape,
    pub summary: Summary,
    pub cpu: CpuUsage,
    /// The cluster's Raft term before and after the run, when the target tells it: a change
    /// means an election happened during the run.
    pub terms: Option<(u64, u64)>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Report {
    /// CPU microseconds per successful write, when both are known.
    fn us_per_write(&self, cpu: Option<Duration>) -> Option<f64> {
        let cpu = cpu?;
        (self.summary.calls > 0).then(|| cpu.as_secs_f64() * 1e6 / self.summary.calls as f64)
    }

    /// One JSON object: rate, latencies in ms, errors by class, CPU seconds and µs per write
    /// (`null` where unknown), clients, warmup and duration in seconds.
    pub fn to_json(&self) -> Value {
        let s = &self.summary;
        let nodes: Vec<Value> = self
            .cpu
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "address": n.address,
                    "pid": n.pid,
                    "cpu_seconds": n.cpu.map(|c| c.as_secs_f64()),
                    "cpu_us_per_write": self.us_per_write(n.cpu),
                })
            })
            .collect();
        json!({
            "target": self.target,
            "clients": self.clients,
            "warmup_seconds": self.shape.warmup.as_secs_f64(),
            "duration_seconds": s.window.as_secs_f64(),
            "writes": s.calls,
            "writes_per_second": s.rate(),
            "latency_ms": {
                "p50": ms(s.p50),
                "p99": ms(s.p99),
                "p99_9": ms(s.p999),
                "max": ms(s.max),
            },
            "errors": {
                "total": s.error_count(),
                "by_code": s.errors,
            },
            "cpu": {
                "bench": {
                    "cpu_seconds": self.cpu.own.map(|c| c.as_secs_f64()),
                    "cpu_us_per_write": self.us_per_write(self.cpu.own),
                },
                "nodes": nodes,
            },
            "raft_term": self.terms.map(|(before, after)| json!({
                "before": before,
                "after": after,
                "changes": after.saturating_sub(before),
            })),
        })
    }

    /// The text table: one `label  value` line per figure.
    pub fn render_text(&self) -> String {
        let s = &self.summary;
        let cpu = |c: Option<Duration>| match (c, self.us_per_write(c)) {
            (Some(c), Some(us)) => format!("{:.2} s CPU ({us:.0} µs/write)", c.as_secs_f64()),
            (Some(c), None) => format!("{:.2} s CPU", c.as_secs_f64()),
            (None, _) => "n/a".to_owned(),
        };
        let errors = if s.errors.is_empty() {
            "0".to_owned()
        } else {
            let by: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{} ({})", s.error_count(), by.join(", "))
        };
        let mut rows = vec![
            ("target".to_owned(), self.target.clone()),
            ("clients".to_owned(), self.clients.to_string()),
            (
                "window".to_owned(),
                format!(
                    "{:.1} s (after a {:.1} s warmup)",
                    s.window.as_secs_f64(),
                    self.shape.warmup.as_secs_f64()
                ),
            ),
            (
                "writes/s".to_owned(),
                format!("{:.0} ({} writes)", s.rate(), s.calls),
            ),
            (
                "latency".to_owned(),
                format!(
                    "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.p999),
                    ms(s.max)
                ),
            ),
            ("errors".to_owned(), errors),
            ("cpu (this client)".to_owned(), cpu(self.cpu.own)),
        ];
        if let Some((before, after)) = self.terms {
            rows.push((
                "raft term".to_owned(),
                format!(
                    "{before} → {after} ({} elections during the run)",
                    after.saturating_sub(before)
                ),
            ));
        }
        for n in &self.cpu.nodes {
            let pid = n.pid.map_or_else(String::new, |p| format!(" pid {p}"));
            rows.push((format!("cpu {}{pid}", n.address), cpu(n.cpu)));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::load::NodeCpu;

    fn report() -> Report {
        let lat = (1..=100).map(Duration::from_millis).collect();
        let errors = BTreeMap::from([("Unavailable".to_owned(), 2)]);
        Report {
            target: "ringzero".into(),
            clients: 4,
            shape: Shape {
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(2),
            },
            summary: Summary::new(lat, errors, Duration::from_secs(2)),
            terms: Some((3, 4)),
            cpu: CpuUsage {
                own: Some(Duration::from_millis(500)),
                nodes: vec![
                    NodeCpu {
                        address: "127.0.0.1:7000".into(),
                        pid: Some(42),
                        cpu: Some(Duration::from_secs(1)),
                    },
                    NodeCpu {
                        address: "10.0.0.2:7000".into(),
                        pid: None,
                        cpu: None,
                    },
                ],
            },
        }
    }

    #[test]
    fn json_has_every_figure() {
        let j = report().to_json();
        assert_eq!(j["writes"], 100);
        assert_eq!(j["writes_per_second"], 50.0);
        assert_eq!(j["clients"], 4);
        assert_eq!(j["duration_seconds"], 2.0);
        assert_eq!(j["latency_ms"]["p50"], 50.0);
        assert_eq!(j["latency_ms"]["p99"], 99.0);
        assert_eq!(j["latency_ms"]["max"], 100.0);
        assert_eq!(j["errors"]["total"], 2);
        assert_eq!(j["errors"]["by_code"]["Unavailable"], 2);
        assert_eq!(j["cpu"]["bench"]["cpu_us_per_write"], 5000.0);
        assert_eq!(j["cpu"]["nodes"][0]["pid"], 42);
        assert_eq!(j["cpu"]["nodes"][0]["cpu_us_per_write"], 10000.0);
        assert_eq!(j["cpu"]["nodes"][1]["pid"], Value::Null);
        assert_eq!(j["cpu"]["nodes"][1]["cpu_seconds"], Value::Null);
        assert_eq!(j["raft_term"]["changes"], 1);
    }

    #[test]
    fn text_says_na_for_unknown_cpu() {
        let t = report().render_text();
        assert!(t.contains("writes/s"), "{t}");
        assert!(t.contains("Unavailable 2"), "{t}");
        assert!(t.contains("cpu 127.0.0.1:7000 pid 42"), "{t}");
        assert!(t.contains("raft term"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("cpu 10.0.0.2:7000") && l.ends_with("n/a")),
            "{t}"
        );
    }
}
