//! kvq's integration tests, one binary (see STYLE.md: link once).

mod attention;
mod attention_case;
mod attention_host;
mod attention_index;
mod backends;
mod bench_cli;
mod borrowed_input;
mod cli;
mod compile_cli;
mod cuda_cache;
mod fixtures;
mod fuzz_corpora;
mod launch_safety;
mod line_info;
mod model;
mod profile_cli;
mod profile_measured;
mod properties;
mod reference_figures;
mod report;
mod robustness;
mod snapshots;
#[path = "../../kvq-ir/tests/common/scheme_strategy.rs"]
mod strategies;
mod tune;
