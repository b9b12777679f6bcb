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

/// man/rlaunch_image.3 is the C contract: it names every function and return code of
/// fabrics/image/include/rlaunch_image.h (with the code's value), and its example builds against
/// the library and runs (alone: loads find nothing, saves do nothing).
#[test]
fn image_man_page_covers_the_header_and_its_example_runs() {
    let man = std::fs::read_to_string(root().join("man/rlaunch_image.3")).expect("man/rlaunch_image.3");
    let header = std::fs::read_to_string(root().join("fabrics/image/include/rlaunch_image.h")).unwrap();
    let unescaped = man.replace("\\-", "-").replace("\\e", "\\");
    let mut functions = 0;
    for line in header.lines() {
        if let Some(name) = line.split('(').next().and_then(|d| d.split_whitespace().last()).map(|n| n.trim_start_matches('*')).filter(|n| n.starts_with("rli_") && line.ends_with(");")) {
            functions += 1;
            assert!(man.contains(&format!(".B {name}")), "the man page has no entry for {name}");
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if let ["#define", name, value, ..] = w[..] {
            if name.starts_with("RLI_E") || name == "RLI_STANDALONE" {
                let v = value.trim_matches(|c| c == '(' || c == ')');
                assert!(unescaped.contains(&format!(".B {name} ({v})")), "the man page lacks {name} ({v})");
            } else if name.starts_with("RLI_") {
                assert!(man.contains(name), "the man page lacks {name}");
            }
        }
    }
    assert!(functions >= 10, "found {functions} functions in the header");
    let example = unescaped.split(".SH EXAMPLE").nth(1).and_then(|s| s.split(".ft CW\n").nth(1)).and_then(|s| s.split("\n.ft").next()).expect("an EXAMPLE in CW");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs-image");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("example.c"), example).unwrap();
    let profile = Path::new(common::bin()).parent().unwrap();
    let lib = [profile.join("deps/librlaunch_image.a"), profile.join("librlaunch_image.a")].into_iter().find(|p| p.exists()).expect("librlaunch_image.a built with rlaunch");
    let cc = Command::new("gcc")
        .args(["-Wall", "-Werror", "-o"])
        .arg(dir.join("example"))
        .arg(dir.join("example.c"))
        .arg("-I")
        .arg(root().join("fabrics/image/include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .expect("gcc (scripts/install-deps)");
    assert!(cc.status.success(), "the example does not build:\n{}\n{example}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(dir.join("example")).env_remove("RLAUNCH_IMAGE_FD").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "sum 4950 after 0 restarts\n");
}
