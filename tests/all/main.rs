//! kvq's integration tests, one binary (see STYLE.md: link once).

mod attention;
mod cli;
mod fixtures;
mod properties;
mod reference_figures;
