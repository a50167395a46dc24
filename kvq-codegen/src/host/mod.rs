//! Native code for the host CPU: "threads and blocks become loops".
//!
//! [`compile`] lowers a kernel to an x86-64 object for the running CPU (its name and features,
//! position-independent, `default<O3>`), links it into a shared library with the system C
//! compiler and loads it ([`compile_all`]: several kernels, built at once on the cores). The
//! exported entry
//! `void kvq_<name>(const uint64_t *args, uint32_t block_begin, uint32_t block_end,
//! uint32_t grid_size)` runs blocks `block_begin..block_end`; within a block each region
//! between sync points (barriers, warp collectives) is a loop over the block's threads, which
//! gives the GPU's semantics because only uniform values cross a sync point (the verifier's
//! rule): what else does goes through per-thread locals or shared memory.
//!
//! [`HostKernel::launch`] checks every argument against the kernel's parameters (count, kind,
//! element type, and `&mut` for parameters the kernel may write), then runs the grid on one
//! worker per available core, each claiming short runs of blocks from a shared counter until
//! none is left.

mod args;
mod blocks;
pub mod cpu;
mod link;
mod pool;
mod record;

pub use args::{BufferMut, BufferRef, HostArg};
pub use pool::cores;
pub use record::{load_records, KernelRecord};

use kvq_ir::ir::{check_launch, ArgSize, Kernel, Len, Param, PlanSizes, Signature};

use crate::cache::{CacheKey, CompileCache, Lookup};
use crate::{CodegenError, Passes};
use blocks::BlockQueue;
use link::Loaded;

/// A kernel compiled for and loaded into this process.
pub struct HostKernel {
    name: String,
    params: Vec<Param>,
    /// The grid bound the kernel states.
    max_grid: Option<Len>,
    /// The base alignment each buffer argument needs, in bytes (aligned vector accesses).
    align: Vec<u32>,
    /// Stack bytes one launch thread needs: shared arrays and all threads' locals are allocas.
    stack: usize,
    /// Blocks per cluster: a worker runs whole clusters.
    cluster_size: u32,
    /// The compile cache entry the library is (`None`: a temporary file).
    library: Option<CacheKey>,
    loaded: Loaded,
}

impl std::fmt::Debug for HostKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKernel")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("stack", &self.stack)
            .field("library", &self.loaded.path)
            .finish()
    }
}

/// Compiles `kernel` to native code and loads it, through the compile cache the environment
/// names ([`CompileCache::from_env`]).
pub fn compile(kernel: &Kernel) -> Result<HostKernel, CodegenError> {
    compile_with(kernel, CompileCache::from_env().as_ref())
}

/// Compiles `kernel` to native code and loads it; with a `cache`, a valid entry is loaded
/// without compiling, and a fresh build is stored there (a corrupt entry is rebuilt; a cache
/// that cannot be written is skipped with a warning). See [`compile_all`] for when the kernel
/// is verified.
pub fn compile_with(
    kernel: &Kernel,
    cache: Option<&CompileCache>,
) -> Result<HostKernel, CodegenError> {
    compile_printed(kernel, &kvq_ir::ir::print(kernel), cache)
}

/// [`compile_with`] for a caller that already holds the kernel's text (`ir` must be
/// `kvq_ir::ir::print(kernel)`: it is the compile cache's key): printing a large kernel costs
/// about as much as loading it from the cache, so a caller that keys its own memo by the text
/// prints it once.
pub fn compile_printed(
    kernel: &Kernel,
    ir: &str,
    cache: Option<&CompileCache>,
) -> Result<HostKernel, CodegenError> {
    let job = Job { kernel, ir };
    let mut compiled = compile_all(&[job], cache, Passes::default())?;
    compiled.pop().ok_or_else(|| missing(kernel))
}

/// One kernel for [`compile_all`]: the kernel and its text (`kvq_ir::ir::print(kernel)`, the
/// compile cache's key).
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The kernel.
    pub kernel: &'a Kernel,
    /// Its printed text.
    pub ir: &'a str,
}

/// Compiles and loads several kernels, in `jobs`' order, optimized with `passes`: the valid
/// entries of `cache` are loaded first, then the rest are verified ([`CodegenError::Invalid`]
/// if one is not valid) and built at once, one kernel per core (LLVM compiles one module on one
/// thread), and stored in `cache`: with a cache, kernels built at once (with distinct names)
/// are linked into one library, stored under each one's key and loaded from the first one's,
/// so that their [`KernelRecord`]s name one library and a later process opens it once. A
/// cache entry is loaded without verifying its kernel again:
/// entries are stored only after their kernel verified and built, under a key that covers the
/// kernel's whole text (about a fifth of a warm load of the three attention kernels was their
/// verification).
pub fn compile_all(
    jobs: &[Job<'_>],
    cache: Option<&CompileCache>,
    passes: Passes,
) -> Result<Vec<HostKernel>, CodegenError> {
    for job in jobs {
        crate::dump(job.kernel, "kvqir", job.ir.as_bytes());
    }
    let options = crate::llvm::host_options(passes);
    let keys: Vec<Option<CacheKey>> = jobs
        .iter()
        .map(|job| cache.map(|_| key(job.ir, &options)))
        .collect();
    let (mut loaded, mut libraries) = cached_all(jobs, &keys, cache);
    let misses: Vec<usize> = (0..jobs.len()).filter(|&i| loaded[i].is_none()).collect();
    let objects = |i: &usize| object(&jobs[*i], passes);
    let objects: Vec<Result<Vec<u8>, CodegenError>> = match pool::shared(pool::STACK) {
        Some(pool) if misses.len() > 1 => {
            use rayon::prelude::*;
            pool.install(|| misses.par_iter().map(objects).collect())
        }
        _ => misses.iter().map(objects).collect(),
    };
    let objects: Vec<Vec<u8>> = objects.into_iter().collect::<Result<_, _>>()?;
    let together = cache.and_then(|cache| {
        let keys: Vec<&CacheKey> = misses.iter().filter_map(|&i| keys[i].as_ref()).collect();
        let missed: Vec<&Job<'_>> = misses.iter().map(|&i| &jobs[i]).collect();
        store_together(&missed, &objects, &keys, cache)
    });
    match together {
        Some((library, path)) => {
            for &i in &misses {
                let symbol = crate::llvm::host_symbol(&jobs[i].kernel.name);
                loaded[i] = Some(link::open_kept(&jobs[i].kernel.name, &path, &symbol));
                libraries[i] = Some(library.clone());
            }
        }
        None => {
            for (&i, object) in misses.iter().zip(&objects) {
                loaded[i] = Some(store(&jobs[i], object, cache.zip(keys[i].as_ref())));
            }
        }
    }
    jobs.iter()
        .zip(loaded)
        .zip(libraries)
        .map(|((job, loaded), library)| {
            let loaded = loaded.ok_or_else(|| missing(job.kernel))??;
            let library = library.filter(|_| loaded.kept());
            Ok(host_kernel(job.kernel, loaded, library))
        })
        .collect()
}

/// The error of a kernel [`compile_all`] lost track of (not expected: every job is looked up
/// or built).
fn missing(kernel: &Kernel) -> CodegenError {
    CodegenError::Llvm {
        kernel: kernel.name.clone(),
        message: "no compiled kernel came back".into(),
    }
}

/// What determines a host kernel's code besides the kernel's text: kvq-codegen's version and
/// sources, the LLVM linked in, this machine's CPU ([`cpu::fingerprint`]) and `passes`. A
/// caller that keys its own cache entries over lowered kernels ([`KernelRecord`]s) includes
/// it.
pub fn build_id(passes: Passes) -> String {
    format!(
        "{} | {} | {} | {}",
        concat!("kvq-codegen ", env!("CARGO_PKG_VERSION")),
        crate::llvm::llvm_version(),
        cpu::fingerprint(),
        crate::llvm::host_options(passes)
    )
}

/// The compile cache key of the kernel text `ir` built with `options` for this machine.
fn key(ir: &str, options: &str) -> CacheKey {
    CacheKey::new(
        ir,
        &crate::llvm::host_target_id(),
        options,
        &crate::llvm::llvm_version(),
    )
}

/// Kernels loaded by [`cached_all`] (`None`: to build) and the cache entries they came from.
type Cached = (
    Vec<Option<Result<Loaded, CodegenError>>>,
    Vec<Option<CacheKey>>,
);

/// The cached builds of `jobs` (cached under `keys`) that the cache holds valid and that load.
/// Entries with one checksum hold one library (kernels built together, stored under each one's
/// key): it is checked and opened once, and each of its kernels is given the first entry's key,
/// so that their records name one library.
fn cached_all(jobs: &[Job<'_>], keys: &[Option<CacheKey>], cache: Option<&CompileCache>) -> Cached {
    let mut checked: Vec<(String, CacheKey, std::path::PathBuf)> = Vec::new();
    let mut libraries: Vec<Option<CacheKey>> = keys.to_vec();
    let loaded = jobs
        .iter()
        .zip(keys)
        .zip(&mut libraries)
        .map(|((job, key), library)| {
            let (cache, key) = cache.zip(key.as_ref())?;
            let sum = cache.stored_checksum(key, "so");
            let same = checked.iter().find(|(s, ..)| Some(s) == sum.as_ref());
            let (path, first) = match same {
                Some((_, first, path)) => (path.clone(), Some(first.clone())),
                None => {
                    let Lookup::Hit(path) = cache.lookup(key, "so") else {
                        return None;
                    };
                    if let Some(sum) = sum {
                        checked.push((sum, key.clone(), path.clone()));
                    }
                    (path, None)
                }
            };
            let loaded = open_cached(job, &path)?;
            // Only a kernel loaded from the first entry's library is recorded under its key
            // (one that does not load is built and stored under its own).
            if first.is_some() {
                *library = first;
            }
            Some(Ok(loaded))
        })
        .collect();
    (loaded, libraries)
}

/// `job`'s kernel from the checked cache entry at `path`, when it loads: an entry that passes
/// its checksum but does not load (a damaged or foreign file) is a miss, rebuilt and stored
/// again.
fn open_cached(job: &Job<'_>, path: &std::path::Path) -> Option<Loaded> {
    link::open_kept(
        &job.kernel.name,
        path,
        &crate::llvm::host_symbol(&job.kernel.name),
    )
    .inspect_err(|e| {
        eprintln!(
            "kvq-codegen: cached {} does not load ({e}); rebuilding",
            path.display()
        )
    })
    .ok()
}

/// The object of `job`, once its kernel verifies.
fn object(job: &Job<'_>, passes: Passes) -> Result<Vec<u8>, CodegenError> {
    let info = kvq_ir::ir::verify(job.kernel)?;
    crate::llvm::host_object(job.kernel, &info, passes)
}

/// Links `object` (of `job`) and loads it; with a cache, stores the library under its key and
/// loads the stored file (a cache that cannot be written is skipped with a warning, and the
/// library is loaded from a temporary file).
fn store(
    job: &Job<'_>,
    object: &[u8],
    cache: Option<(&CompileCache, &CacheKey)>,
) -> Result<Loaded, CodegenError> {
    let (kernel, symbol) = (job.kernel, crate::llvm::host_symbol(&job.kernel.name));
    let Some((cache, key)) = cache else {
        return link::load(&kernel.name, object, &symbol);
    };
    let bytes = link::link_bytes(&kernel.name, &[object])?;
    match cache.store(key, "so", &bytes) {
        Ok(path) => link::open_kept(&kernel.name, &path, &symbol),
        Err(e) => {
            eprintln!(
                "kvq-codegen: cannot write the compile cache {}: {e}",
                cache.dir().display()
            );
            link::load(&kernel.name, object, &symbol)
        }
    }
}

/// Several kernels built at once (`objects[i]` of `jobs[i]`, cached under `keys[i]`) linked
/// into one library, stored under each of their keys (a later lookup of any of them finds its
/// kernel there), so that the caller opens one library instead of one per kernel: returns the
/// key and path the caller loads them from. `None`, to link them one by one, for fewer than two
/// kernels, kernels sharing a name (their entries would clash), or a library that cannot be
/// linked or stored (warned about).
fn store_together(
    jobs: &[&Job<'_>],
    objects: &[Vec<u8>],
    keys: &[&CacheKey],
    cache: &CompileCache,
) -> Option<(CacheKey, std::path::PathBuf)> {
    let names: std::collections::BTreeSet<&str> =
        jobs.iter().map(|j| j.kernel.name.as_str()).collect();
    if jobs.len() < 2 || names.len() != jobs.len() || keys.len() != jobs.len() {
        return None;
    }
    let objects: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    let stored = link::link_bytes(&jobs[0].kernel.name, &objects)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let paths: Vec<_> = keys
                .iter()
                .map(|key| cache.store(key, "so", &bytes))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            paths.into_iter().next().ok_or_else(|| "no key".to_string())
        });
    match stored {
        Ok(path) => Some((keys[0].clone(), path)),
        Err(e) => {
            eprintln!("kvq-codegen: cannot store the kernels' library in {}: {e}; linking them one by one", cache.dir().display());
            None
        }
    }
}

/// The [`HostKernel`] of `kernel`, loaded (from the compile cache entry `library`, if any).
fn host_kernel(kernel: &Kernel, loaded: Loaded, library: Option<CacheKey>) -> HostKernel {
    let locals: usize = kernel
        .locals
        .iter()
        .map(|l| l.elem.size() * l.len as usize * kernel.block_size as usize)
        .sum();
    // A cluster's blocks keep their shared arrays and locals at once.
    let shared = usize::try_from(kernel.shared_bytes()).unwrap_or(usize::MAX);
    let frame = shared
        .saturating_add(locals)
        .saturating_mul(kernel.cluster_size.max(1) as usize);
    HostKernel {
        name: kernel.name.clone(),
        params: kernel.params.clone(),
        max_grid: kernel.max_grid.clone(),
        align: kvq_ir::ir::sync::buffer_alignment(kernel),
        stack: frame.saturating_add(1 << 20).max(2 << 20),
        cluster_size: kernel.cluster_size.max(1),
        library,
        loaded,
    }
}

/// Runs `f` on one of the threads host kernels run on (the process's pool, when it exists) and
/// returns its result: launches made within `f` then start their blocks from a worker, which
/// joins in, instead of waking the pool from outside and sleeping until it is done. A caller
/// that makes several launches in a row (decode attention: three) hands over to the pool once.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool::shared(pool::STACK) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// A compiled kernel launches through the same checks as its lowered form
/// (`kvq_ir::lower::attention::AttentionArgs::launch`).
impl Signature for HostKernel {
    fn name(&self) -> &str {
        &self.name
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn max_grid(&self) -> Option<&Len> {
        self.max_grid.as_ref()
    }
}

impl HostKernel {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared library the kernel runs from (a compile-cache entry, or a temporary file
    /// removed when the kernel is dropped).
    pub fn library_path(&self) -> &std::path::Path {
        &self.loaded.path
    }

    /// Checks a launch against the sizes the kernel states ([`kvq_ir::ir::length`]): every
    /// buffer at least its stated length for these scalar arguments (and `plan`, for the
    /// attention kernels), the grid within its bound. A size the kernel does not state, or
    /// one that needs a plan when `plan` is `None`, is an error. Safe callers of
    /// [`HostKernel::launch`] run this first.
    pub fn check_sizes(
        &self,
        args: &[HostArg<'_>],
        grid_size: u32,
        plan: Option<&dyn PlanSizes>,
    ) -> Result<(), CodegenError> {
        let sizes: Vec<ArgSize> = args.iter().map(HostArg::size).collect();
        check_launch(
            &self.name,
            &self.params,
            self.max_grid.as_ref(),
            &sizes,
            grid_size,
            plan,
        )?;
        Ok(())
    }

    /// Runs the kernel over `grid_size` blocks.
    ///
    /// Every argument is checked against its parameter first (count, kind, element type,
    /// writability, and the base alignment that aligned vector accesses need: 16 bytes at
    /// most), and the grid must be whole clusters; a mismatch is an error and runs nothing.
    ///
    /// # Safety
    /// As on a GPU, buffers are not bounds-checked: every buffer must hold at least the elements
    /// the kernel addresses when run over `grid_size` blocks with these scalar arguments. For
    /// kvq's lowered kernels that is what their stated sizes say, which
    /// [`HostKernel::check_sizes`] checks (and the interpreter enforces on every access in the
    /// tests); the attention kernels also need the batch plan's own `seqs` and `work_seq`
    /// tables.
    pub unsafe fn launch(
        &self,
        args: &mut [HostArg<'_>],
        grid_size: u32,
    ) -> Result<(), CodegenError> {
        args::check(&self.name, &self.params, args)?;
        let words: Vec<u64> = args.iter_mut().map(HostArg::word).collect();
        for (index, (&word, &align)) in words.iter().zip(&self.align).enumerate() {
            if word % u64::from(align.max(1)) != 0 {
                return Err(CodegenError::Misaligned {
                    kernel: self.name.clone(),
                    index,
                    align,
                });
            }
        }
        let n = self.cluster_size;
        if grid_size % n != 0 {
            return Err(CodegenError::ClusterGrid {
                kernel: self.name.clone(),
                grid_size,
                cluster_size: n,
            });
        }
        if grid_size == 0 {
            return Ok(());
        }
        let workers = u32::try_from(pool::cores())
            .unwrap_or(u32::MAX)
            .min(grid_size / n);
        let queue = BlockQueue::new(grid_size, n, workers);
        let entry = self.loaded.entry;
        let words = words.as_slice();
        let work = |begin: u32, end: u32| {
            // SAFETY: `entry` is the loaded kernel's entry (its library lives in `self`).
            // `words` holds one word per parameter, checked above against the kernel's
            // parameters: every buffer address comes from a live slice of the checked element
            // type, borrowed (`&mut` where the kernel writes) for this whole call, since `args`
            // is borrowed until every worker below has finished (both scopes join them).
            //
            // CONCURRENCY: several workers receive the same buffer addresses at once, each for
            // disjoint runs of blocks (the queue hands out every block once). This is sound only because kvq kernels have GPU
            // semantics: each element a launch writes is written by exactly one block and not
            // read by another block, so workers never touch the same bytes where one of them
            // writes (shared arrays and locals are per-worker stack memory, which the worker's
            // stack holds: the pool's threads have `pool::STACK` bytes, more than `self.stack`).
            // The one exception kvq makes is a status flag that any block may set to a nonzero
            // code: racing stores of whole aligned elements from LLVM-generated code (LLVM's
            // memory model gives racing accesses unspecified values, not undefined behaviour),
            // read only after the workers have joined, as on a GPU. A kernel breaking the rule
            // otherwise would race here just as it would on a GPU.
            unsafe { entry(words.as_ptr(), begin, end, grid_size) }
        };
        let drain = || {
            while let Some((begin, end)) = queue.claim() {
                work(begin, end);
            }
        };
        if let Some(pool) = pool::shared(self.stack) {
            let drain = &drain;
            pool.scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(move |_| drain());
                }
            });
            return Ok(());
        }
        // A frame larger than the pool's stacks: threads of the size it needs.
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let drain = &drain;
                std::thread::Builder::new()
                    .name(format!("kvq-{}", self.name))
                    .stack_size(self.stack)
                    .spawn_scoped(scope, drain)
                    .map_err(|source| CodegenError::Thread {
                        kernel: self.name.clone(),
                        source,
                    })?;
            }
            Ok(())
        })
    }
}
