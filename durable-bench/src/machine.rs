//! How much of the machine the benchmark had: the share of CPU time the hypervisor
//! gave to other guests ("steal" in `/proc/stat`) while a scenario ran. On a shared
//! virtual machine a vCPU taken away for milliseconds at a time stretches latency tails
//! and swings throughput by multiples between runs of the same code; a row measured
//! while much was stolen says more about the neighbours than about durable.

/// At this share of stolen CPU time or more, a scenario's figures are flagged as
/// unreliable.
pub const STEAL_WARN_PCT: f64 = 5.0;

/// The machine's cumulative CPU times (all CPUs, in clock ticks), from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// The ticks the CPUs wanted to run: user, nice, system, irq, softirq and steal
    /// (idle and iowait left out, so that an idle CPU does not dilute the share).
    wanted: u64,
    /// Ticks a vCPU wanted to run but the hypervisor ran something else.
    steal: u64,
}

impl CpuTimes {
    /// Now, or `None` where `/proc/stat` is missing or has no steal column.
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Between `self` and a later reading `after`: the percentage of the time the CPUs
    /// wanted to run that the hypervisor gave to someone else.
    pub fn stolen_pct(&self, after: &CpuTimes) -> Option<f64> {
        let wanted = after.wanted.checked_sub(self.wanted)?;
        let steal = after.steal.checked_sub(self.steal)?;
        (wanted > 0).then(|| 100.0 * steal as f64 / wanted as f64)
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
    // user nice system idle iowait irq softirq steal
    Some(CpuTimes {
        wanted: ticks.iter().sum::<u64>() - ticks[3] - ticks[4],
        steal: ticks[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_column_as_a_share_of_the_ticks_not_idle() {
        let before = parse("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n").unwrap();
        // 300 more ticks wanted (user 100, system 100, steal 100); idle and iowait
        // grew too and do not count.
        let after = parse("cpu  200 0 150 1550 30 0 0 140 0 0\n").unwrap();
        assert_eq!(before.stolen_pct(&after), Some(100.0 / 3.0));
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
