//! Counters shared by the workers, latency histograms, the once-a-second
//! progress line and the final summary (text or JSON).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency recorded, in nanoseconds (one hour); above it values are clamped.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// Counters every worker adds to, in batches (one atomic add per read or write
/// batch, not per message).
#[derive(Default)]
pub struct Counters {
    /// PUBLISH packets written.
    pub sent: AtomicU64,
    /// PUBACKs / PUBCOMPs received by publishers.
    pub acked: AtomicU64,
    /// PUBLISH packets received by subscribers.
    pub received: AtomicU64,
    /// Errors: refused acknowledgements, lost connections, protocol errors.
    pub errors: AtomicU64,
    /// Connections currently open.
    pub connected: AtomicU64,
    /// Connections that failed to open (refused, timed out, I/O error).
    pub connect_errors: AtomicU64,
    /// When the last message was received, in nanoseconds since the run's start.
    pub last_recv_ns: AtomicU64,
    /// When the last publisher stopped sending, in nanoseconds since the run's start.
    pub last_sent_ns: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    /// Counts an error, keeping the first message for the summary.
    pub fn error(&self, msg: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }

    /// Counts a failed connection attempt.
    pub fn connect_error(&self, msg: impl std::fmt::Display) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.note(msg);
    }

    fn note(&self, msg: impl std::fmt::Display) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(msg.to_string());
        }
    }

    /// The first error seen, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A latency histogram (nanoseconds), sharded so that workers on different
/// threads rarely share a lock. Each worker locks its shard once per batch.
pub struct Latency {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl Latency {
    pub fn new(shards: usize) -> Latency {
        Latency {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// The shard for worker `index`.
    pub fn shard(&self, index: usize) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        self.shards[index % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Every shard added up.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            // Same bounds on both sides, so adding cannot fail.
            let _ = all.add(&*s);
        }
        all
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Records one latency in nanoseconds.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
}

/// Wall-clock nanoseconds since the Unix epoch: the timestamp embedded in
/// payloads, comparable between processes on one machine.
#[inline]
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Default)]
pub struct LatencySummary {
    pub samples: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            samples: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"samples\":{},\"min\":{},\"mean\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            self.samples,
            num(self.min),
            num(self.mean),
            num(self.p50),
            num(self.p90),
            num(self.p99),
            num(self.p999),
            num(self.max)
        )
    }

    fn text(&self) -> String {
        if self.samples == 0 {
            return "no samples".to_owned();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, {} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.mean),
            thousands(self.samples)
        )
    }
}

/// Microseconds shown as milliseconds with three decimals.
fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// A finite number for JSON, with at most three decimals.
fn num(x: f64) -> String {
    if x.is_finite() {
        let s = format!("{x:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" {
            "0".to_owned()
        } else {
            s.to_owned()
        }
    } else {
        "0".to_owned()
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform Rust targets.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// What kind of progress line to print.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProgressKind {
    Conn,
    Pub,
    Sub,
    PubSub,
}

/// Prints one progress line a second on stderr until the task is aborted.
pub async fn progress(
    kind: ProgressKind,
    counters: std::sync::Arc<Counters>,
    target_conns: u64,
    started: Instant,
) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (mut sent0, mut recv0, mut conn0) = (0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let secs = started.elapsed().as_secs();
        let sent = get(&counters.sent);
        let acked = get(&counters.acked);
        let recv = get(&counters.received);
        let conns = get(&counters.connected);
        let errors = get(&counters.errors) + get(&counters.connect_errors);
        let mut line = format!("[{secs:>4}s]");
        match kind {
            ProgressKind::Conn => {
                let _ = write!(
                    line,
                    " conns {}/{}  +{}/s",
                    thousands(conns),
                    thousands(target_conns),
                    thousands(conns.saturating_sub(conn0))
                );
            }
            _ => {
                if kind != ProgressKind::Sub {
                    let _ = write!(
                        line,
                        " sent {}/s ({})  acked {}",
                        thousands(sent - sent0),
                        thousands(sent),
                        thousands(acked)
                    );
                }
                if kind != ProgressKind::Pub {
                    let _ = write!(
                        line,
                        " recv {}/s ({})",
                        thousands(recv - recv0),
                        thousands(recv)
                    );
                }
                let _ = write!(line, "  conns {}", thousands(conns));
            }
        }
        let _ = write!(line, "  errors {}", thousands(errors));
        eprintln!("{line}");
        (sent0, recv0, conn0) = (sent, recv, conns);
    }
}

/// The final figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub scenario: &'static str,
    pub mode: Option<&'static str>,
    pub version: String,
    pub qos: u8,
    pub payload_size: usize,
    pub publishers: u64,
    pub subscribers: u64,
    /// Connections asked for.
    pub connections: u64,
    /// Connections opened.
    pub connected: u64,
    pub connect_errors: u64,
    /// Seconds from the first connection attempt to the last CONNACK.
    pub connect_secs: f64,
    pub connect_latency: LatencySummary,
    /// Seconds of the measured phase (publishing, receiving or holding).
    pub duration_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// Deliveries expected (pubsub only).
    pub expected: Option<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub send_secs: f64,
    pub recv_secs: f64,
    pub latency: LatencySummary,
    pub ack_latency: LatencySummary,
    pub cpu_secs: f64,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl Summary {
    pub fn lost(&self) -> Option<u64> {
        self.expected.map(|e| e.saturating_sub(self.received))
    }

    pub fn send_rate(&self) -> f64 {
        rate(self.sent, self.send_secs)
    }

    pub fn ack_rate(&self) -> f64 {
        rate(self.acked, self.send_secs)
    }

    pub fn recv_rate(&self) -> f64 {
        rate(self.received, self.recv_secs)
    }

    pub fn connect_rate(&self) -> f64 {
        rate(self.connected, self.connect_secs)
    }

    /// CPU use of the load generator in percent of one core, over the whole run.
    pub fn cpu_percent(&self, wall: f64) -> f64 {
        if wall > 0.0 {
            100.0 * self.cpu_secs / wall
        } else {
            0.0
        }
    }

    /// One JSON object; every key is always present (`null` when not known).
    pub fn json(&self, wall: f64) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
        let mut s = String::with_capacity(1024);
        s.push('{');
        let _ = write!(
            s,
            "\"scenario\":{},",
            crate::cmd::json_string(self.scenario)
        );
        let _ = write!(
            s,
            "\"mode\":{},",
            self.mode.map_or("null".to_owned(), crate::cmd::json_string)
        );
        let _ = write!(
            s,
            "\"protocol_version\":{},",
            crate::cmd::json_string(&self.version)
        );
        let _ = write!(s, "\"qos\":{},", self.qos);
        let _ = write!(s, "\"payload_size\":{},", self.payload_size);
        let _ = write!(s, "\"publishers\":{},", self.publishers);
        let _ = write!(s, "\"subscribers\":{},", self.subscribers);
        let _ = write!(s, "\"connections\":{},", self.connections);
        let _ = write!(s, "\"connected\":{},", self.connected);
        let _ = write!(s, "\"connect_errors\":{},", self.connect_errors);
        let _ = write!(s, "\"connect_secs\":{},", num(self.connect_secs));
        let _ = write!(s, "\"connect_rate\":{},", num(self.connect_rate()));
        let _ = write!(s, "\"connect_latency_us\":{},", self.connect_latency.json());
        let _ = write!(s, "\"duration_secs\":{},", num(self.duration_secs));
        let _ = write!(s, "\"sent\":{},", self.sent);
        let _ = write!(s, "\"acked\":{},", self.acked);
        let _ = write!(s, "\"received\":{},", self.received);
        let _ = write!(s, "\"expected\":{},", opt(self.expected));
        let _ = write!(s, "\"lost\":{},", opt(self.lost()));
        let _ = write!(s, "\"errors\":{},", self.errors);
        let _ = write!(
            s,
            "\"first_error\":{},",
            self.first_error
                .as_deref()
                .map_or("null".to_owned(), crate::cmd::json_string)
        );
        let _ = write!(s, "\"send_rate\":{},", num(self.send_rate()));
        let _ = write!(s, "\"ack_rate\":{},", num(self.ack_rate()));
        let _ = write!(s, "\"recv_rate\":{},", num(self.recv_rate()));
        let _ = write!(s, "\"latency_us\":{},", self.latency.json());
        let _ = write!(s, "\"ack_latency_us\":{},", self.ack_latency.json());
        let _ = write!(s, "\"cpu_secs\":{},", num(self.cpu_secs));
        let _ = write!(s, "\"cpu_percent\":{}", num(self.cpu_percent(wall)));
        s.push('}');
        s
    }

    /// The human-readable summary.
    pub fn text(&self, wall: f64) -> String {
        let mut s = String::new();
        let mode = self.mode.map(|m| format!(" {m}")).unwrap_or_default();
        let _ = write!(
            s,
            "starling bench {}{mode}: MQTT {}",
            self.scenario, self.version
        );
        if self.publishers > 0 {
            let _ = write!(
                s,
                ", QoS {}, {} B payload, {} publishers",
                self.qos, self.payload_size, self.publishers
            );
        }
        if self.subscribers > 0 {
            if self.publishers == 0 {
                let _ = write!(s, ", QoS {}", self.qos);
            }
            let _ = write!(s, ", {} subscribers", self.subscribers);
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "  connections  {}/{} in {:.3} s ({:.0}/s), {} failed; connect {}",
            thousands(self.connected),
            thousands(self.connections),
            self.connect_secs,
            self.connect_rate(),
            thousands(self.connect_errors),
            self.connect_latency.text()
        );
        let _ = writeln!(s, "  duration     {:.3} s", self.duration_secs);
        if self.publishers > 0 {
            let _ = writeln!(
                s,
                "  sent         {} msg ({:.0} msg/s)",
                thousands(self.sent),
                self.send_rate()
            );
            if self.qos > 0 {
                let _ = writeln!(
                    s,
                    "  acked        {} msg ({:.0} msg/s); ack {}",
                    thousands(self.acked),
                    self.ack_rate(),
                    self.ack_latency.text()
                );
            }
        }
        if self.subscribers > 0 {
            let _ = writeln!(
                s,
                "  received     {} msg ({:.0} msg/s)",
                thousands(self.received),
                self.recv_rate()
            );
        }
        if let (Some(expected), Some(lost)) = (self.expected, self.lost()) {
            let pct = if expected > 0 {
                100.0 * lost as f64 / expected as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "  lost         {} of {} expected ({pct:.3}%)",
                thousands(lost),
                thousands(expected)
            );
        }
        if self.subscribers > 0 {
            let _ = writeln!(s, "  latency      {}", self.latency.text());
        }
        let _ = writeln!(s, "  errors       {}", thousands(self.errors));
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error  {e}");
        }
        let _ = write!(
            s,
            "  bench CPU    {:.2} s ({:.0}% of one core)",
            self.cpu_secs,
            self.cpu_percent(wall)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "0");
        assert_eq!(crate::cmd::json_string("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn latency_summary() {
        let l = Latency::new(3);
        for i in 1..=1000u64 {
            record(&mut l.shard(i as usize), i * 1000);
        }
        let s = LatencySummary::of(&l.merged());
        assert_eq!(s.samples, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
        assert!(s.json().contains("\"p999\":"));
    }

    #[test]
    fn summary_json_has_every_key() {
        let s = Summary {
            scenario: "pubsub",
            mode: Some("fan-in"),
            expected: Some(10),
            received: 9,
            ..Summary::default()
        };
        let j = s.json(1.0);
        for key in [
            "scenario",
            "mode",
            "lost\":1",
            "latency_us",
            "ack_latency_us",
            "cpu_percent",
        ] {
            assert!(j.contains(key), "{key} in {j}");
        }
        assert!(cpu_time().is_some());
    }
}
