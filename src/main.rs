//! The `kvq` command line.

mod cli;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// The longest error line printed; longer text (an echoed input) is cut.
const MAX_ERROR_CHARS: usize = 2000;

fn main() -> ExitCode {
    restore_sigpipe();
    let parsed = match cli::Cli::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own wording, on one line ("error: invalid value ... for '--head-dim ...'",
            // "error: the following required arguments were not provided: --group <GROUP>"):
            // its lines before the usage, without tips.
            let text = e.render().to_string();
            let lines: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more"))
                .collect();
            let line = match lines.is_empty() {
                true => "error: invalid arguments".to_string(),
                false => lines.join(" "),
            };
            eprintln!("{}", cut(&line));
            return ExitCode::FAILURE;
        }
    };
    match cli::run(parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cut(&one_line(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so printing to a closed pipe (`kvq profile | head`) would panic in
/// `println!`; with the default action the process ends quietly, as other command-line tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any thread exists; `signal` with SIG_DFL installs no
    // handler code, it only restores the default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line, each cause once: a cause whose text the message so far
/// already contains (an error that prints its source as part of its own text) is skipped.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', "; ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `text` cut to [`MAX_ERROR_CHARS`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}... (cut)", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::IsADirectory, "Is a directory");
        let e = anyhow::Error::new(io).context("reading x: Is a directory");
        assert_eq!(one_line(&e), "reading x: Is a directory");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
        assert_eq!(
            cut(&"x".repeat(5000)).chars().count(),
            MAX_ERROR_CHARS + "... (cut)".len()
        );
    }
}
