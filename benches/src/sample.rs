//! What one child process measured (the `RESULT` line it prints and the parent parses), and
//! the statistics the parent computes over rounds: median and nearest-rank percentiles.

use std::fmt;
use std::time::Duration;

/// One measurement of one workload on one engine, by one child process.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Engine name, e.g. `txheap` or `lmdb-writemap-nosync`.
    pub engine: String,
    /// Workload name, e.g. `W1`.
    pub workload: String,
    /// Operations in the timed region (commits, allocations, copies, opens).
    pub ops: u64,
    /// Seconds of the timed region.
    pub secs: f64,
    /// Median per-operation latency in microseconds, when operations were timed one by one.
    pub p50_us: Option<f64>,
    /// 99th-percentile per-operation latency in microseconds, when timed one by one.
    pub p99_us: Option<f64>,
    /// 99.9th-percentile per-operation latency in microseconds, when reported (R-start).
    pub p999_us: Option<f64>,
    /// Bytes processed in the timed region (copied, replayed), 0 when not meaningful.
    pub bytes: u64,
    /// Bytes the child read from the block device in the timed region (`read_bytes` of
    /// `/proc/self/io`), when measured (W7).
    pub disk_read: Option<u64>,
    /// Bytes the child caused to be written to the block device in the timed region
    /// (`write_bytes` of `/proc/self/io`), when measured (W7).
    pub disk_write: Option<u64>,
    /// Length of the store's file after the timed region, when reported (W7).
    pub file_len: Option<u64>,
    /// Bytes allocated to the store's file on disk (`st_blocks` × 512), when reported (W7,
    /// space).
    pub file_alloc: Option<u64>,
    /// The child's peak resident memory (`VmHWM` of `/proc/self/status`) in bytes, at its end.
    pub hwm: Option<u64>,
    /// Barriers per commit (msync and fdatasync calls ÷ commits), when reported (W6).
    pub barriers: Option<f64>,
}

impl Sample {
    /// Build a sample from the timed region's length and, if operations were timed one by one,
    /// their latencies (in any order).
    pub fn new(
        engine: &str,
        workload: &str,
        ops: u64,
        elapsed: Duration,
        latencies: Option<&mut [Duration]>,
    ) -> Sample {
        let (p50_us, p99_us) = match latencies {
            Some(l) if !l.is_empty() => {
                l.sort_unstable();
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                (
                    Some(us(percentile_sorted(l, 50.0))),
                    Some(us(percentile_sorted(l, 99.0))),
                )
            }
            _ => (None, None),
        };
        Sample {
            engine: engine.to_string(),
            workload: workload.to_string(),
            ops,
            secs: elapsed.as_secs_f64(),
            p50_us,
            p99_us,
            p999_us: None,
            bytes: 0,
            disk_read: None,
            disk_write: None,
            file_len: None,
            file_alloc: None,
            hwm: None,
            barriers: None,
        }
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// Bytes per second.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.secs
    }

    /// Parse a line printed by [`fmt::Display`]: `RESULT engine=.. workload=.. ops=.. secs=..
    /// p50_us=.. p99_us=.. bytes=..` (latencies may be `-`), optionally followed by `disk_read=..
    /// disk_write=.. file_len=.. file_alloc=.. hwm=..`. Returns `None` for any other line.
    pub fn parse(line: &str) -> Option<Sample> {
        let rest = line.trim().strip_prefix("RESULT ")?;
        let mut s = Sample {
            engine: String::new(),
            workload: String::new(),
            ops: 0,
            secs: f64::NAN,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            bytes: 0,
            disk_read: None,
            disk_write: None,
            file_len: None,
            file_alloc: None,
            hwm: None,
            barriers: None,
        };
        let opt = |v: &str| -> Option<Option<f64>> {
            if v == "-" {
                Some(None)
            } else {
                v.parse().ok().map(Some)
            }
        };
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "engine" => s.engine = v.to_string(),
                "workload" => s.workload = v.to_string(),
                "ops" => s.ops = v.parse().ok()?,
                "secs" => s.secs = v.parse().ok()?,
                "p50_us" => s.p50_us = opt(v)?,
                "p99_us" => s.p99_us = opt(v)?,
                "p999_us" => s.p999_us = Some(v.parse().ok()?),
                "bytes" => s.bytes = v.parse().ok()?,
                "disk_read" => s.disk_read = Some(v.parse().ok()?),
                "disk_write" => s.disk_write = Some(v.parse().ok()?),
                "file_len" => s.file_len = Some(v.parse().ok()?),
                "file_alloc" => s.file_alloc = Some(v.parse().ok()?),
                "hwm" => s.hwm = Some(v.parse().ok()?),
                "barriers" => s.barriers = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        let valid = !s.engine.is_empty()
            && !s.workload.is_empty()
            && s.ops > 0
            && s.secs.is_finite()
            && s.secs > 0.0;
        valid.then_some(s)
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
        write!(
            f,
            "RESULT engine={} workload={} ops={} secs={:.9} p50_us={} p99_us={} bytes={}",
            self.engine,
            self.workload,
            self.ops,
            self.secs,
            opt(self.p50_us),
            opt(self.p99_us),
            self.bytes
        )?;
        let extra = [
            ("disk_read", self.disk_read),
            ("disk_write", self.disk_write),
            ("file_len", self.file_len),
            ("file_alloc", self.file_alloc),
            ("hwm", self.hwm),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                write!(f, " {k}={v}")?;
            }
        }
        if let Some(x) = self.p999_us {
            write!(f, " p999_us={x:.3}")?;
        }
        if let Some(x) = self.barriers {
            write!(f, " barriers={x:.4}")?;
        }
        Ok(())
    }
}

/// Nearest-rank percentile `p` (0 < p <= 100) of an ascending, non-empty slice: the smallest
/// value such that at least p% of the values are at or below it.
pub fn percentile_sorted<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (the mean of the two middle values for an even count); `None` if empty.
/// NaNs are not expected and sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_unsorted() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[10.0, -1.0, 7.0, 7.0, 2.0]), Some(7.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), 50);
        assert_eq!(percentile_sorted(&v, 99.0), 99);
        assert_eq!(percentile_sorted(&v, 100.0), 100);
        assert_eq!(percentile_sorted(&v, 0.1), 1);
        let w = [7u32];
        assert_eq!(percentile_sorted(&w, 99.0), 7);
        // 5 values: p99 is the largest, the median the third.
        let x = [1u32, 2, 3, 4, 1000];
        assert_eq!(percentile_sorted(&x, 99.0), 1000);
        assert_eq!(percentile_sorted(&x, 50.0), 3);
        // 1000 values with 11 outliers: p99 is an outlier, 12 would not be.
        let mut y = vec![1u32; 989];
        y.extend([50u32; 11]);
        assert_eq!(percentile_sorted(&y, 99.0), 50);
    }

    #[test]
    fn sample_latencies_from_unsorted_durations() {
        let mut l: Vec<Duration> = (0..200u64).rev().map(Duration::from_micros).collect();
        let s = Sample::new("e", "W1", 200, Duration::from_millis(20), Some(&mut l));
        assert_eq!(s.p50_us, Some(99.0));
        assert_eq!(s.p99_us, Some(197.0));
        assert!((s.rate() - 10_000.0).abs() < 1e-6);
    }

    #[test]
    fn result_line_round_trip() {
        let mut s = Sample::new(
            "lmdb-writemap-nosync",
            "W2",
            12345,
            Duration::from_nanos(987_654_321),
            Some(&mut [Duration::from_nanos(1500), Duration::from_nanos(2500)]),
        );
        s.bytes = 1 << 26;
        let line = s.to_string();
        assert!(line.starts_with("RESULT engine=lmdb-writemap-nosync workload=W2 ops=12345 "));
        let back = Sample::parse(&line).expect("parses");
        assert_eq!(back.engine, s.engine);
        assert_eq!(back.workload, s.workload);
        assert_eq!(back.ops, s.ops);
        assert_eq!(back.bytes, s.bytes);
        assert!((back.secs - s.secs).abs() < 1e-9);
        assert_eq!(back.p50_us, Some(1.5));
        assert_eq!(back.p99_us, Some(2.5));

        let none = Sample::new("limit-malloc", "W3", 1, Duration::from_millis(3), None);
        let back = Sample::parse(&none.to_string()).expect("parses");
        assert_eq!(back.p50_us, None);
        assert_eq!(back.p99_us, None);
        assert_eq!(back.disk_read, None);
        assert!(!none.to_string().contains("disk_read"));
    }

    #[test]
    fn result_line_round_trip_with_disk_fields() {
        let mut s = Sample::new("txheap", "W7-open", 1, Duration::from_millis(5), None);
        s.disk_read = Some(4096);
        s.file_len = Some(1 << 30);
        let back = Sample::parse(&s.to_string()).expect("parses");
        assert_eq!(back.disk_read, Some(4096));
        assert_eq!(back.disk_write, None);
        assert_eq!(back.file_len, Some(1 << 30));
        assert_eq!(back.file_alloc, None);
        assert!(Sample::parse("RESULT engine=x workload=W7 ops=1 secs=1 disk_read=x").is_none());
    }

    #[test]
    fn parse_rejects_other_and_broken_lines() {
        assert!(Sample::parse("hello").is_none());
        assert!(Sample::parse("RESULT engine=x workload=W1 ops=0 secs=1").is_none());
        assert!(Sample::parse("RESULT engine=x workload=W1 ops=5 secs=abc").is_none());
        assert!(Sample::parse("RESULT engine=x workload=W1 ops=5 secs=1 color=red").is_none());
        assert!(Sample::parse("RESULT workload=W1 ops=5 secs=1").is_none());
        assert!(Sample::parse("  RESULT engine=x workload=W1 ops=5 secs=0.5  ").is_some());
    }
}
