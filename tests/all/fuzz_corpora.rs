//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/*`) through the fuzz targets'
//! bodies in `kvq::fuzzing`, so that every input the fuzzers kept (crash reproducers included,
//! once minimized into the corpus) stays a regression test on stable Rust.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use kvq::fuzzing::{seeds, Target, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, t)| t)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// Runs `input` through `run`, naming `what` if it panics.
fn replay(run: Target, what: &str, input: &[u8]) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(input))) {
        eprintln!("fuzz input {what} panicked");
        resume_unwind(panic);
    }
}

/// Replays every file of `name`'s corpus; the corpus must not be empty.
fn replay_corpus(name: &str) {
    let run = target(name);
    let dir = corpus_dir(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the corpus of {name} ({}) is empty",
        dir.display()
    );
    for file in &files {
        let input = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        replay(run, &file.display().to_string(), &input);
    }
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay_corpus(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_replay_test() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "no corpus replay test for {name}");
            }
        }
    };
}

corpus_tests!(
    scheme_text,
    scheme_builder,
    kv_safetensors,
    gguf_metadata,
    span_import,
    ir_verifier,
    differential,
);

#[test]
fn seeds_replay() {
    for (name, inputs) in seeds() {
        let run = target(name);
        assert!(!inputs.is_empty(), "no seeds for {name}");
        for (file, input) in inputs {
            replay(run, &format!("seed {name}/{file}"), &input);
        }
    }
}

/// Writes the hand-made seeds into the corpus directories (`cargo test --test all --
/// --ignored write_seed_corpora`), for a fresh start of the fuzzers.
#[test]
#[ignore = "writes into fuzz/corpus"]
fn write_seed_corpora() {
    for (name, inputs) in seeds() {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (file, input) in inputs {
            std::fs::write(dir.join(format!("seed-{file}")), input).expect("seed file");
        }
    }
}
