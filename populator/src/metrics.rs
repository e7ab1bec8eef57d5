//! The populator's metrics in the Prometheus text format, served with `/healthz` on a small
//! HTTP endpoint (`--metrics-addr`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the duration histogram.
const BUCKETS: [f64; 10] = [
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Counters the controller updates.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Restores that bound their claim.
    pub succeeded: AtomicU64,
    /// Restores given up.
    pub failed: AtomicU64,
    /// Failed copies that were retried.
    pub retries: AtomicU64,
    /// Bytes written onto volumes.
    pub bytes: AtomicU64,
    /// Whether this replica holds the lease.
    pub leader: AtomicBool,
    in_flight: Mutex<BTreeSet<String>>,
    durations: Mutex<Durations>,
}

#[derive(Debug, Default)]
struct Durations {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// A restore (by claim uid) started; idempotent.
    pub fn started(&self, uid: &str) {
        self.in_flight.lock().unwrap().insert(uid.to_string());
    }

    /// A restore (by claim uid) ended; idempotent.
    pub fn ended(&self, uid: &str) {
        self.in_flight.lock().unwrap().remove(uid);
    }

    /// A restore took this long from claim creation to bound.
    pub fn observe_duration(&self, seconds: f64) {
        let mut d = self.durations.lock().unwrap();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                d.counts[i] += 1;
            }
        }
        d.count += 1;
        d.sum += seconds;
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let _ = writeln!(
            out,
            "# HELP volbackup_populator_operations_total Restores by result.\n# TYPE volbackup_populator_operations_total counter"
        );
        let _ = writeln!(
            out,
            "volbackup_populator_operations_total{{result=\"succeeded\"}} {}",
            self.succeeded.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "volbackup_populator_operations_total{{result=\"failed\"}} {}",
            self.failed.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "volbackup_populator_retries_total",
            "Failed populate pods that were retried.",
            self.retries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "volbackup_populator_bytes_total",
            "Bytes written onto restored volumes.",
            self.bytes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP volbackup_populator_in_flight Restores under way.\n# TYPE volbackup_populator_in_flight gauge\nvolbackup_populator_in_flight {}",
            self.in_flight.lock().unwrap().len()
        );
        let _ = writeln!(
            out,
            "# HELP volbackup_populator_leader Whether this replica holds the lease.\n# TYPE volbackup_populator_leader gauge\nvolbackup_populator_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let d = self.durations.lock().unwrap();
        let name = "volbackup_populator_operation_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from claim creation to bound.\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", d.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", d.count);
        let _ = writeln!(out, "{name}_sum {}", d.sum);
        let _ = writeln!(out, "{name}_count {}", d.count);
        out
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read up to the end of the request head (requests here carry no body).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, kind) = match path {
                "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                "/healthz" | "/readyz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_with_its_values() {
        let m = Metrics::default();
        m.succeeded.fetch_add(2, Ordering::Relaxed);
        m.bytes.fetch_add(4096, Ordering::Relaxed);
        m.started("a");
        m.started("b");
        m.started("a");
        m.ended("b");
        m.observe_duration(7.0);
        let text = m.render();
        assert!(text.contains("volbackup_populator_operations_total{result=\"succeeded\"} 2"));
        assert!(text.contains("volbackup_populator_operations_total{result=\"failed\"} 0"));
        assert!(text.contains("volbackup_populator_bytes_total 4096"));
        assert!(text.contains("volbackup_populator_in_flight 1"));
        assert!(text.contains("volbackup_populator_operation_duration_seconds_bucket{le=\"5\"} 0"));
        assert!(
            text.contains("volbackup_populator_operation_duration_seconds_bucket{le=\"10\"} 1")
        );
        assert!(text.contains("volbackup_populator_operation_duration_seconds_count 1"));
    }
}
