//! The worker's own CPU and memory use, as its heartbeat reports them:
//! read from `/proc` (Linux), `None` elsewhere.

use std::time::Instant;

/// Clock ticks per second of `/proc/self/stat` (USER_HZ, 100 on every
/// Linux architecture that matters here).
const TICKS: f64 = 100.0;

/// CPU use between two calls, in percent of the whole machine.
pub struct CpuMeter {
    last: Option<(u64, Instant)>,
    cpus: f64,
}

impl CpuMeter {
    pub fn new() -> CpuMeter {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut m = CpuMeter { last: None, cpus };
        m.last = ticks().map(|t| (t, Instant::now()));
        m
    }

    /// Percent (0-100) of all CPUs used by this process since the last call.
    pub fn sample(&mut self) -> Option<f64> {
        let now = (ticks()?, Instant::now());
        let (t0, i0) = self.last.replace(now)?;
        let wall = now.1.duration_since(i0).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let used = now.0.saturating_sub(t0) as f64 / TICKS;
        Some((used / wall / self.cpus * 100.0).clamp(0.0, 100.0))
    }
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter::new()
    }
}

/// utime + stime of this process, in ticks.
fn ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may contain spaces: ") S ppid ...".
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after ")".
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of this process in percent of the machine's memory.
pub fn memory_percent() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb = kb(&status, "VmRSS:")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kb = kb(&meminfo, "MemTotal:")?;
    (total_kb > 0.0).then(|| (rss_kb / total_kb * 100.0).clamp(0.0, 100.0))
}

fn kb(text: &str, field: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_figures_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let mut m = CpuMeter::new();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let cpu = m.sample().expect("cpu");
        assert!((0.0..=100.0).contains(&cpu));
        let mem = memory_percent().expect("memory");
        assert!(mem > 0.0 && mem < 100.0, "{mem}");
    }
}
