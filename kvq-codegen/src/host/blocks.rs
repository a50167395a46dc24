//! How a launch hands its blocks to the workers: from a shared counter, a few whole clusters at
//! a time, so that a worker that finishes early (cheaper blocks, or a core the machine gave to
//! something else for a while) takes more instead of waiting for the slowest worker's fixed share.

use std::sync::atomic::{AtomicU32, Ordering};

/// Claims handed out per worker, about: enough that the last claims are small against a
/// worker's whole share, few enough that claiming costs nothing next to a block's work.
const CLAIMS_PER_WORKER: u32 = 16;

/// The blocks `0..grid` of a launch, claimed in runs of whole clusters.
pub(super) struct BlockQueue {
    next: AtomicU32,
    grid: u32,
    /// Blocks per claim: a multiple of the cluster size.
    run: u32,
}

impl BlockQueue {
    /// A queue over `grid` blocks (a multiple of `cluster`, which is at least 1) for `workers`
    /// workers (at least 1).
    pub(super) fn new(grid: u32, cluster: u32, workers: u32) -> BlockQueue {
        let cluster = cluster.max(1);
        let clusters = grid / cluster;
        let claims = workers.max(1).saturating_mul(CLAIMS_PER_WORKER);
        let run = (clusters / claims).max(1).saturating_mul(cluster);
        BlockQueue {
            next: AtomicU32::new(0),
            grid,
            run,
        }
    }

    /// The next unclaimed run of blocks `begin..end`, or `None` when every block is claimed.
    /// Each block is handed out exactly once, whichever threads call it.
    pub(super) fn claim(&self) -> Option<(u32, u32)> {
        // Relaxed: the counter only divides the blocks; the launch's join orders their work.
        let begin = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b < self.grid).then(|| b.saturating_add(self.run).min(self.grid))
            })
            .ok()?;
        Some((begin, begin.saturating_add(self.run).min(self.grid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims every block from `threads` threads at once and counts how often each was handed out.
    fn claimed_counts(grid: u32, cluster: u32, threads: u32) -> Vec<u32> {
        let queue = BlockQueue::new(grid, cluster, threads);
        let runs: Vec<Vec<(u32, u32)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(r) = queue.claim() {
                            mine.push(r);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut counts = vec![0u32; grid as usize];
        for (begin, end) in runs.into_iter().flatten() {
            assert!(begin < end && end <= grid, "run {begin}..{end} of {grid}");
            assert_eq!(begin % cluster, 0, "a run starts inside a cluster");
            assert_eq!(end % cluster, 0, "a run ends inside a cluster");
            for b in begin..end {
                counts[b as usize] += 1;
            }
        }
        counts
    }

    #[test]
    fn every_block_is_claimed_exactly_once() {
        for (grid, cluster) in [
            (1, 1),
            (7, 1),
            (24, 1),
            (33, 1),
            (1000, 1),
            (12, 4),
            (96, 8),
        ] {
            for threads in [1, 2, 3, 8] {
                let counts = claimed_counts(grid, cluster, threads);
                assert!(
                    counts.iter().all(|&c| c == 1),
                    "grid {grid}, cluster {cluster}, {threads} threads: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn claims_are_small_runs_and_stop_at_the_grid() {
        let queue = BlockQueue::new(24, 1, 2);
        let runs: Vec<_> = std::iter::from_fn(|| queue.claim()).collect();
        assert_eq!(runs.len(), 24, "24 blocks for 2 workers: one block a claim");
        let queue = BlockQueue::new(10_000, 1, 2);
        let first = queue.claim();
        assert_eq!(first, Some((0, 312)));
        let queue = BlockQueue::new(u32::MAX, 1, 1);
        assert_eq!(queue.claim(), Some((0, u32::MAX / 16)));
        let empty = BlockQueue::new(0, 1, 2);
        assert_eq!(empty.claim(), None);
    }
}
