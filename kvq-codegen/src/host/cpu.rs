//! The host CPU as compiled code depends on it, read with CPUID directly: in a new process that
//! costs microseconds, where asking LLVM for its host CPU name and features costs about 0.15 ms
//! (kvq-codegen's compile cache keys, which LLVM builds anyway, still use LLVM's).

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

    /// The leaves read, once per process: in a virtual machine each CPUID traps to the
    /// hypervisor (about 6 us here).
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

    fn snapshot() -> &'static Snapshot {
        static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
        SNAPSHOT.get_or_init(|| {
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
        })
    }

    pub(super) fn fingerprint() -> String {
        let snapshot = snapshot();
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
        let snapshot = snapshot();
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
