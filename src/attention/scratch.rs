//! The launch buffers of the cache's attention path (`HostAttention::attend_view`), kept between
//! calls.

use std::sync::{Arc, Mutex};

/// The buffers one sequence's `stats`, `partial` and `combine` launches write and read (all but
/// the output), kept between calls so that a decode step neither allocates them nor has the
/// system fault their pages in again: the saved logits alone are 8 MB at a 64k-token span of 8
/// kv heads, group 4. The kernels write every element they read before reading it (as
/// `HostAttention::run` over prepared arguments relies on too), so earlier contents never reach
/// a result.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub stats: Vec<f32>,
    pub saved_logits: Vec<f32>,
    pub ml: Vec<f32>,
    pub acc: Vec<f32>,
}

impl Scratch {
    /// Gives the buffers these lengths.
    pub fn size(&mut self, [stats, saved_logits, ml, acc]: [usize; 4]) {
        fit(&mut self.stats, stats);
        fit(&mut self.saved_logits, saved_logits);
        fit(&mut self.ml, ml);
        fit(&mut self.acc, acc);
    }
}

/// Sets `v`'s length to `n`: a new zeroed allocation when it needs more room (for a large one,
/// the system's zero pages, touched only as the kernels write them; growing in place would
/// write every element first), else the same memory (elements beyond the old length 0).
fn fit(v: &mut Vec<f32>, n: usize) {
    if v.capacity() < n {
        *v = vec![0.0; n];
    } else {
        v.resize(n, 0.0);
    }
}

/// One [`Scratch`] shared by a `HostAttention` and its clones.
#[derive(Debug, Default, Clone)]
pub(super) struct SharedScratch(Arc<Mutex<Scratch>>);

impl SharedScratch {
    /// Runs `f` on the shared buffers, or on fresh ones while another thread's call holds them
    /// (or after a call panicked with them): a call never waits for another.
    pub fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        match self.0.try_lock() {
            Ok(mut shared) => f(&mut shared),
            Err(_) => f(&mut Scratch::default()),
        }
    }
}
