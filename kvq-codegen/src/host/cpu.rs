//! The host CPU as compiled code depends on it, read with CPUID directly, where asking LLVM for
//! its host CPU name and features costs about 0.15 ms (kvq-codegen's compile cache keys, which
//! LLVM builds anyway, still use LLVM's). In a virtual machine each CPUID traps to the
//! hypervisor, so the values are read once per boot and remembered in the compile cache.

use std::sync::OnceLock;

/// A fingerprint of the CPU: on x86-64 the CPUID values LLVM derives its host CPU name and
/// features from (vendor, family and model, the feature leaves 1, 7.0, 7.1, 0xd.1, 0x14, 0x19,
/// 0x24, 0x80000001 and 0x80000008, the brand string) and the OS-enabled register state
/// (XCR0), the per-core APIC ID masked out; two CPUs with the same fingerprint get the same
/// host code from LLVM. Elsewhere, LLVM's own host CPU name and features.
pub fn fingerprint() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            x86::fingerprint()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            crate::llvm::host_target_id()
        }
    })
}

/// The CPU's brand string (CPUID leaves 0x80000002-4, read with [`fingerprint`]'s), whitespace
/// runs collapsed: what Linux reports as the "model name"; `None` where the CPU has none.
pub fn brand() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        x86::brand()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid_count, CpuidResult};
    use std::fmt::Write;
    use std::sync::OnceLock;

    use crate::cache::{CacheKey, CompileCache};

    /// Basic leaves (leaf, subleaf) LLVM's host detection reads, besides leaf 0.
    const BASIC: [(u32, u32); 7] = [
        (1, 0),
        (7, 0),
        (7, 1),
        (0xd, 1),
        (0x14, 0),
        (0x19, 0),
        (0x24, 0),
    ];
    /// Extended leaves, besides 0x80000000: features, the brand string, address sizes.
    const EXTENDED: [u32; 5] = [
        0x8000_0001,
        0x8000_0002,
        0x8000_0003,
        0x8000_0004,
        0x8000_0008,
    ];
    /// The brand string's leaves.
    const BRAND: std::ops::RangeInclusive<u32> = 0x8000_0002..=0x8000_0004;

    /// The leaves read, once per boot ([`snapshot_in`]): in a virtual machine each CPUID traps
    /// to the hypervisor (6-12 us on the development machines, 14 leaves).
    #[derive(Debug, PartialEq, Eq)]
    struct Snapshot {
        /// (leaf, subleaf, values), leaves above the CPU's maxima left out.
        leaves: Vec<(u32, u32, CpuidResult)>,
        /// XCR0, when the OS has enabled XGETBV.
        xcr0: Option<u64>,
    }

    impl Snapshot {
        fn get(&self, leaf: u32, subleaf: u32) -> Option<CpuidResult> {
            self.leaves
                .iter()
                .find(|&&(l, s, _)| (l, s) == (leaf, subleaf))
                .map(|&(_, _, r)| r)
        }
    }

    impl Snapshot {
        /// The leaves, read with CPUID.
        fn read() -> Snapshot {
            let top = __cpuid_count(0, 0);
            let top_ext = __cpuid_count(0x8000_0000, 0);
            let mut leaves = vec![(0, 0, top), (0x8000_0000, 0, top_ext)];
            let basic = BASIC.into_iter().filter(|&(l, _)| l <= top.eax);
            let extended = EXTENDED.into_iter().filter(|&l| l <= top_ext.eax);
            for (leaf, sub) in basic.chain(extended.map(|l| (l, 0))) {
                leaves.push((leaf, sub, __cpuid_count(leaf, sub)));
            }
            const OSXSAVE: u32 = 1 << 27;
            let osxsave = leaves
                .iter()
                .any(|&(l, _, r)| l == 1 && r.ecx & OSXSAVE != 0);
            Snapshot {
                leaves,
                xcr0: osxsave.then(|| {
                    #[target_feature(enable = "xsave")]
                    unsafe fn read() -> u64 {
                        // SAFETY: the caller checked that XGETBV is enabled.
                        unsafe { std::arch::x86_64::_xgetbv(0) }
                    }
                    // SAFETY: CPUID.1:ECX.OSXSAVE says XGETBV is enabled (XCR0 always exists).
                    unsafe { read() }
                }),
            }
        }

        /// The memo's text: a line `leaf subleaf eax ebx ecx edx` (hex) per leaf, then
        /// `xcr0 <hex>` or `xcr0 -`.
        fn to_text(&self) -> String {
            let mut text = String::new();
            for (leaf, sub, r) in &self.leaves {
                let _ = writeln!(
                    text,
                    "{leaf:x} {sub:x} {:x} {:x} {:x} {:x}",
                    r.eax, r.ebx, r.ecx, r.edx
                );
            }
            match self.xcr0 {
                Some(x) => format!("{text}xcr0 {x:x}\n"),
                None => format!("{text}xcr0 -\n"),
            }
        }

        /// [`Snapshot::to_text`]'s inverse; `None` unless `text` is well formed.
        fn from_text(text: &str) -> Option<Snapshot> {
            let mut lines: Vec<&str> = text.lines().collect();
            let xcr0 = match lines.pop()?.strip_prefix("xcr0 ")? {
                "-" => None,
                x => Some(u64::from_str_radix(x, 16).ok()?),
            };
            let leaves = lines
                .into_iter()
                .map(|line| {
                    let words: Vec<u32> = line
                        .split(' ')
                        .map(|w| u32::from_str_radix(w, 16).ok())
                        .collect::<Option<_>>()?;
                    let &[leaf, sub, eax, ebx, ecx, edx] = words.as_slice() else {
                        return None;
                    };
                    Some((leaf, sub, CpuidResult { eax, ebx, ecx, edx }))
                })
                .collect::<Option<Vec<_>>>()?;
            let has_top = leaves.first().is_some_and(|&(l, s, _)| (l, s) == (0, 0));
            has_top.then_some(Snapshot { leaves, xcr0 })
        }
    }

    /// The extension of the snapshot's memo in the compile cache.
    const MEMO_EXT: &str = "cpuid";

    /// The key of this boot's memo: every process of a boot sees the same CPUID values (a
    /// virtual machine that migrates keeps its CPUID; a process whose CPUID is emulated, as
    /// under CPUID faulting, is the exception), so one process reads them and later ones read
    /// its memo, one small file instead of CPUID's traps. `None` where the kernel gives no
    /// boot id.
    fn memo_key() -> Option<CacheKey> {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| CacheKey::of(&["kvq cpuid snapshot 1", id]))
    }

    /// The snapshot, from this boot's memo in `cache` when it holds a valid one, else read
    /// with CPUID and remembered there (a cache that cannot be written is skipped: the next
    /// process reads CPUID again).
    fn snapshot_in(cache: Option<&CompileCache>) -> Snapshot {
        let memo = cache.zip(memo_key());
        let remembered = memo.as_ref().and_then(|(cache, key)| {
            let bytes = cache.read(key, MEMO_EXT)?;
            Snapshot::from_text(std::str::from_utf8(&bytes).ok()?)
        });
        remembered.unwrap_or_else(|| {
            let snapshot = Snapshot::read();
            if let Some((cache, key)) = &memo {
                let _ = cache.store(key, MEMO_EXT, snapshot.to_text().as_bytes());
            }
            snapshot
        })
    }

    /// The snapshot, once per process, through the environment's compile cache
    /// ([`CompileCache::from_env`]).
    fn snapshot() -> &'static Snapshot {
        static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
        SNAPSHOT.get_or_init(|| snapshot_in(CompileCache::from_env().as_ref()))
    }

    pub(super) fn fingerprint() -> String {
        fingerprint_of(snapshot())
    }

    fn fingerprint_of(snapshot: &Snapshot) -> String {
        let mut text = String::from("x86_64 ");
        for &(leaf, sub, mut r) in &snapshot.leaves {
            if leaf == 1 {
                // Bits 16-31: the initial APIC ID and the logical processor count, which
                // differ between the cores a process may run on.
                r.ebx &= 0xffff;
            }
            let _ = write!(
                text,
                "{leaf:x}.{sub:x}:{:x},{:x},{:x},{:x};",
                r.eax, r.ebx, r.ecx, r.edx
            );
        }
        match snapshot.xcr0 {
            Some(x) => format!("{text}xcr0:{x:x}"),
            None => format!("{text}xcr0:-"),
        }
    }

    pub(super) fn brand() -> Option<String> {
        brand_of(snapshot())
    }

    fn brand_of(snapshot: &Snapshot) -> Option<String> {
        let bytes: Vec<u8> = BRAND
            .map(|leaf| snapshot.get(leaf, 0))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .flat_map(|r| {
                [r.eax, r.ebx, r.ecx, r.edx]
                    .into_iter()
                    .flat_map(u32::to_le_bytes)
            })
            .take_while(|&b| b != 0)
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let name = text.split_whitespace().collect::<Vec<_>>().join(" ");
        (!name.is_empty()).then_some(name)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_snapshot_survives_its_memo_text() {
            let read = Snapshot::read();
            assert_eq!(Snapshot::from_text(&read.to_text()), Some(read));
            for bad in [
                "",
                "xcr0 -\n",
                "0 0 1 2 3\nxcr0 -\n",
                "0 0 1 2 3 4\nxcr0 z\n",
            ] {
                assert_eq!(Snapshot::from_text(bad), None, "{bad:?}");
            }
        }

        /// A process finds the memo the first one left, and the memo gives the fingerprint
        /// CPUID gives; a damaged memo is not used.
        #[test]
        fn the_boot_memo_is_read_back_and_a_damaged_one_is_not() {
            let dir = std::env::temp_dir().join(format!("kvq-cpu-memo-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let cache = CompileCache::new(&dir);
            let Some(key) = memo_key() else {
                return; // no boot id here: every process reads CPUID.
            };
            // Compared as fingerprints: leaf 1 holds the APIC ID of the core a read ran on.
            let first = snapshot_in(Some(&cache));
            assert_eq!(fingerprint_of(&first), fingerprint_of(&Snapshot::read()));
            assert!(
                cache.read(&key, MEMO_EXT).is_some(),
                "the memo was not written"
            );
            assert_eq!(
                fingerprint_of(&snapshot_in(Some(&cache))),
                fingerprint_of(&first)
            );

            // A memo of another CPU (the same boot id) is what a later process takes.
            let other = Snapshot {
                leaves: vec![(
                    0,
                    0,
                    CpuidResult {
                        eax: 1,
                        ebx: 2,
                        ecx: 3,
                        edx: 4,
                    },
                )],
                xcr0: None,
            };
            cache
                .store(&key, MEMO_EXT, other.to_text().as_bytes())
                .unwrap();
            assert_eq!(snapshot_in(Some(&cache)), other);

            // A payload that fails its checksum is ignored, and CPUID is read again.
            let payload = dir.join(format!("{}.{MEMO_EXT}", key.as_str()));
            std::fs::write(&payload, b"0 0 5 6 7 8\nxcr0 -\n").unwrap();
            let again = snapshot_in(Some(&cache));
            assert_eq!(fingerprint_of(&again), fingerprint_of(&Snapshot::read()));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_within_a_process_and_across_threads() {
        let here = fingerprint().to_string();
        let there = std::thread::spawn(|| fingerprint().to_string())
            .join()
            .unwrap();
        assert_eq!(here, there);
        assert!(!here.is_empty());
    }

    /// The brand string is what Linux's /proc/cpuinfo reports as the model name (the tuning
    /// tables are keyed by it).
    #[test]
    fn the_brand_is_the_model_name_linux_reports() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.split_whitespace().collect::<Vec<_>>().join(" "));
        if let Some(model) = model {
            assert_eq!(brand(), Some(model));
        }
    }
}
