//! How much of the machine the benchmark had: the share of CPU time the hypervisor
//! gave to other guests ("steal" in `/proc/stat`) while a scenario ran. On a shared
//! virtual machine a vCPU taken away for milliseconds at a time stretches latency tails
//! and swings throughput by multiples between runs of the same code; a row measured
//! while much was stolen says more about the neighbours than about durable.

/// Above this share of stolen CPU time, a scenario's figures are flagged as unreliable.
pub const STEAL_WARN_PCT: f64 = 5.0;

/// The machine's cumulative CPU times (all CPUs, in clock ticks), from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state's ticks summed (user, nice, system, idle, iowait, irq, softirq,
    /// steal).
    total: u64,
    /// Ticks a vCPU wanted to run but the hypervisor ran something else.
    steal: u64,
}

impl CpuTimes {
    /// Now, or `None` where `/proc/stat` is missing or has no steal column.
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// The percentage of CPU time stolen between `self` and a later reading `after`.
    pub fn stolen_pct(&self, after: &CpuTimes) -> Option<f64> {
        let total = after.total.checked_sub(self.total)?;
        let steal = after.steal.checked_sub(self.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

/// The aggregate `cpu ` line of a `/proc/stat` text.
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 8 {
        return None;
    }
    Some(CpuTimes {
        total: ticks.iter().sum(),
        steal: ticks[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_column_as_a_share_of_all_ticks() {
        let before = parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n").unwrap();
        let after = parse("cpu  200 0 100 1550 10 0 0 140 0 0\n").unwrap();
        // 1000 more ticks in all, 100 of them stolen.
        assert_eq!(before.stolen_pct(&after), Some(10.0));
        assert_eq!(before.stolen_pct(&before), None, "no time passed");
        assert_eq!(after.stolen_pct(&before), None, "not a later reading");
        assert_eq!(
            parse("cpu  1 2 3 4\n"),
            None,
            "no steal column (old kernels)"
        );
        assert_eq!(parse("intr 5\n"), None);
    }
}
