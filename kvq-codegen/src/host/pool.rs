//! The worker threads host kernels run on: one pool per process, made at the first launch, so
//! that a launch spawns no thread (a spawn costs tens of microseconds, as much as a small
//! kernel's whole run).

use std::sync::OnceLock;

/// Stack of each pool thread (reserved, committed only as used). A kernel whose frame needs
/// more runs on threads of its own.
pub(super) const STACK: usize = 64 << 20;

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// The cores this process may run on, asked once: `std::thread::available_parallelism` reads
/// the cgroup's CPU quota from `/sys` at every call (about 28 microseconds on the development
/// machine, as much as a small kernel's launch).
pub fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The shared pool, one thread per core, when a worker needs at most `stack` bytes of stack
/// and the pool could be made.
pub(super) fn shared(stack: usize) -> Option<&'static rayon::ThreadPool> {
    if stack > STACK {
        return None;
    }
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores())
            .stack_size(STACK)
            .thread_name(|i| format!("kvq-host-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}
