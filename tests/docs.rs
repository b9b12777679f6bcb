//! The documents generated from, or copied from, the one flag table must match the binary:
//! `man/rlaunch.1` (committed, generated), the shell completions, and the exit/signal contract in
//! README.md (the same text `rlaunch --help` prints).

mod common;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rlaunch(args: &[&str]) -> String {
    let out = Command::new(common::bin()).args(args).env_remove("COLUMNS").output().expect("running rlaunch");
    assert!(out.status.success(), "rlaunch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn committed_man_page_matches_the_binary() {
    let generated = rlaunch(&["--generate", "man"]);
    let path = root().join("man/rlaunch.1");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is out of date (first difference at line {}); refresh it with:\n    \
             cargo run -q -- --generate man > man/rlaunch.1",
            path.display(),
            line + 1
        );
    }
    for needle in [".TH rlaunch 1", "\\-\\-tag\\-output", "EXIT STATUS"] {
        assert!(generated.contains(needle), "the man page lacks {needle}");
    }
}

#[test]
fn shell_completions_are_generated_from_the_same_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let text = rlaunch(&["--generate", shell]);
        for flag in ["tag-output", "output-dir", "stdin", "timeout"] {
            assert!(text.contains(flag), "{shell} completions lack --{flag}");
        }
    }
    let out = Command::new(common::bin()).args(["--generate", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--generate tcsh"));
}

/// The `HEADER:` block (up to the next blank line) from `--help`'s contract text.
fn section<'a>(help: &'a str, header: &str) -> &'a str {
    let start = help.find(&format!("\n{header}\n")).unwrap_or_else(|| panic!("--help lacks the {header} section")) + 1;
    let rest = &help[start..];
    let end = rest.find("\n\n").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn readme_carries_the_exit_and_signal_contract_of_help() {
    let help = rlaunch(&["--help"]);
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md exists");
    for header in ["EXIT STATUS:", "FAILURES:", "SIGNALS:"] {
        let block = section(&help, header);
        assert!(
            readme.contains(block),
            "README.md must contain the {header} section exactly as `rlaunch --help` prints it \
             (src/cli.rs CONTRACT); expected:\n{block}"
        );
    }
    // The two set-up commands.
    assert!(readme.contains("cargo run --release -- -np 4 hostname"));
    assert!(readme.contains("scripts/test"));
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run exists");
    let cmd = ci.lines().map(str::trim).find(|l| l.starts_with("exec ")).expect(".ci/run has an exec line");
    assert_eq!(cmd, "exec scripts/test", ".ci/run must run the README's test command");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(readme.contains("\nscripts/test\n"), "README must give `scripts/test` as the test command");
}
