//! The load client's own CPU time, read from /proc/self/stat, so benchmark readers can see
//! whether the client or the server was the limit on a shared machine.

use crate::report::Cpu;

/// Clock ticks per second of `utime`/`stime`: Linux's USER_HZ, 100 on every mainstream arch.
const USER_HZ: f64 = 100.0;

/// Parses the utime and stime fields (14 and 15) of a /proc/PID/stat line.
pub fn parse_stat(stat: &str) -> Option<Cpu> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse::<u64>().ok()? as f64 / USER_HZ;
    let system = fields.next()?.parse::<u64>().ok()? as f64 / USER_HZ;
    Some(Cpu { user_s: user, system_s: system, total_s: user + system })
}

/// This process's CPU so far; zeros where /proc is missing.
pub fn self_cpu() -> Cpu {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime() {
        let line = "4242 (load (test)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        let cpu = parse_stat(line).unwrap();
        assert!((cpu.user_s - 2.5).abs() < 1e-9);
        assert!((cpu.system_s - 0.5).abs() < 1e-9);
        assert!((cpu.total_s - 3.0).abs() < 1e-9);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn reads_this_process() {
        // Burn CPU until the kernel's tick-granular count moves (bounded by wall time): an
        // optimised build finishes a fixed loop before the first tick.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while self_cpu().total_s == 0.0 && start.elapsed() < std::time::Duration::from_secs(5) {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(self_cpu().total_s > 0.0, "no CPU time counted after {:?}", start.elapsed());
    }
}
