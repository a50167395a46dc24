//! Shared by the benchmarks: ratios against the baseline timed in the same run. Each bench
//! binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;

/// Mean time in ns of a finished criterion benchmark `group/id`, from criterion's own estimates.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let path = dir
        .join("criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

/// Calls `report(id, baseline_ns, id_ns)` for each of `others` that has an estimate, all of one
/// group and one run; says so when an estimate is missing.
fn against_baseline(group: &str, baseline: &str, others: &[&str], report: impl Fn(&str, f64, f64)) {
    let Some(base) = mean_ns(group, baseline) else {
        eprintln!("{group}: no estimate for {baseline}; run the whole group");
        return;
    };
    for id in others {
        match mean_ns(group, id) {
            Some(t) => report(id, base, t),
            None => println!("{group}: no estimate for {id}"),
        }
    }
}

/// Prints each benchmark's time as a multiple of `baseline`'s, all of one group and one run.
pub fn print_ratios(group: &str, baseline: &str, others: &[&str]) {
    against_baseline(group, baseline, others, |id, base, t| {
        println!(
            "{group}: {id} takes {:.2}x the time of {baseline}",
            t / base
        )
    });
}

/// Prints each benchmark's bandwidth (same bytes per iteration) as a fraction of `baseline`'s.
pub fn print_bandwidth_fractions(group: &str, baseline: &str, others: &[&str]) {
    against_baseline(group, baseline, others, |id, base, t| {
        println!(
            "{group}: {id} runs at {:.1}% of {baseline}'s bandwidth",
            100.0 * base / t
        )
    });
}

/// Prints how many times faster `subject` ran than each of `baselines`, all of one group and run.
pub fn print_speedups(group: &str, baselines: &[&str], subject: &str) {
    let Some(t) = mean_ns(group, subject) else {
        eprintln!("{group}: no estimate for {subject}; run the whole group");
        return;
    };
    for base in baselines {
        match mean_ns(group, base) {
            Some(b) => println!("{group}: {subject} is {:.2}x faster than {base}", b / t),
            None => println!("{group}: no estimate for {base}"),
        }
    }
}
