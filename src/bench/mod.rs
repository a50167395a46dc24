//! Same-process comparisons for `kvq bench` and the criterion benches: every baseline is timed
//! in the same run as kvq's kernels, as medians of interleaved rounds (or, on request, of each
//! contender's rounds back to back), and reported as ratios.

pub mod attention;
pub mod quantize;

use std::time::Instant;

/// One timed contender: a name and the work of one call.
pub struct Contender<'a> {
    /// Its name in tables.
    pub name: &'static str,
    /// One call.
    pub run: Box<dyn FnMut() -> anyhow::Result<()> + 'a>,
}

impl std::fmt::Debug for Contender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contender")
            .field("name", &self.name)
            .finish()
    }
}

/// How a comparison orders its timed calls (`kvq bench --order`; [`interleaved`],
/// [`back_to_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Each round calls every contender once, in turn: a contender's call follows the others',
    /// as an attention call follows a model's other work (the default).
    Interleaved,
    /// Each contender's calls one after another: a call follows a call of the same contender,
    /// as in a loop that runs it alone.
    BackToBack,
}

impl Order {
    /// The order's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Order::Interleaved => "interleaved",
            Order::BackToBack => "back-to-back",
        }
    }
}

/// How many timed calls a comparison makes of each contender, and in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// Timed calls of each contender.
    pub count: usize,
    /// Their order.
    pub order: Order,
}

/// The median seconds per call of each contender, over `rounds.count` calls in `rounds.order`.
pub fn timed(rounds: Rounds, contenders: &mut [Contender<'_>]) -> anyhow::Result<Vec<f64>> {
    match rounds.order {
        Order::Interleaved => interleaved(rounds.count, contenders),
        Order::BackToBack => back_to_back(rounds.count, contenders),
    }
}

/// The median seconds per call of each contender over `rounds` calls made one after another,
/// after one untimed warm-up call, contender by contender.
pub fn back_to_back(rounds: usize, contenders: &mut [Contender<'_>]) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(rounds > 0, "at least one round");
    let mut medians = Vec::with_capacity(contenders.len());
    for c in contenders.iter_mut() {
        let mut times = Vec::with_capacity(rounds);
        for round in 0..=rounds {
            let start = Instant::now();
            (c.run)()?;
            if round > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        medians.push(median(times));
    }
    Ok(medians)
}

/// The median seconds per call of each contender over `rounds` interleaved rounds (each round
/// calls every contender once, in order, so that a change of the machine's state during the run
/// reaches all of them alike), after one untimed warm-up round.
pub fn interleaved(rounds: usize, contenders: &mut [Contender<'_>]) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(rounds > 0, "at least one round");
    let mut times = vec![Vec::with_capacity(rounds); contenders.len()];
    for round in 0..=rounds {
        for (c, t) in contenders.iter_mut().zip(&mut times) {
            let start = Instant::now();
            (c.run)()?;
            if round > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// The median of `xs` (non-empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The machine's CPU model (from `/proc/cpuinfo`) and its logical cores, for result tables.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = kvq_codegen::host::cores();
    format!("{model}, {cores} logical cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn every_contender_runs_once_per_round_plus_warm_up() {
        let (mut a, mut b) = (0, 0);
        let mut cs = [
            Contender {
                name: "a",
                run: Box::new(|| {
                    a += 1;
                    Ok(())
                }),
            },
            Contender {
                name: "b",
                run: Box::new(|| {
                    b += 1;
                    Ok(())
                }),
            },
        ];
        let t = interleaved(5, &mut cs).unwrap();
        assert_eq!(t.len(), 2);
        drop(cs);
        assert_eq!((a, b), (6, 6));
    }

    /// The calls each order makes, as the contenders' names in call order.
    fn calls(order: Order) -> Vec<&'static str> {
        let log = std::cell::RefCell::new(Vec::new());
        let mut cs: Vec<Contender<'_>> = ["a", "b"]
            .into_iter()
            .map(|name| Contender {
                name,
                run: Box::new({
                    let log = &log;
                    move || {
                        log.borrow_mut().push(name);
                        Ok(())
                    }
                }),
            })
            .collect();
        let t = timed(Rounds { count: 2, order }, &mut cs).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|&s| s >= 0.0));
        drop(cs);
        log.into_inner()
    }

    #[test]
    fn interleaved_rounds_alternate_and_back_to_back_rounds_do_not() {
        assert_eq!(calls(Order::Interleaved), ["a", "b", "a", "b", "a", "b"]);
        assert_eq!(calls(Order::BackToBack), ["a", "a", "a", "b", "b", "b"]);
    }

    #[test]
    fn no_rounds_is_an_error_in_either_order() {
        for order in [Order::Interleaved, Order::BackToBack] {
            let rounds = Rounds { count: 0, order };
            assert!(timed(rounds, &mut []).is_err());
        }
    }
}
