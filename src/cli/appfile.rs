//! Open MPI's `--app FILE` and Hydra's / Intel MPI's `-configfile FILE`: a file of application
//! contexts, one per line (`-np 2 ./a x`; `#` comments, blank lines skipped, a trailing `\` continues
//! a line; a line may itself hold `:`). Given last on the command line, in place of the program, the option becomes the file's
//! contexts joined by `:`, after the global options before it. The only step of the command line
//! that reads a file before [`super::parse`].

use super::error::{usage, UsageError};
use std::path::Path;

/// The spellings, as the last two words of the command line.
const OPTIONS: &[&str] = &["--app", "-app", "--configfile", "-configfile"];

/// How deep files may name further files (a file ending in `--app FILE`).
const MAX_DEPTH: usize = 8;

/// `args` with a trailing `--app FILE` / `-configfile FILE` replaced by the file's contexts (again
/// when those end in one).
pub fn expand(args: &[String], cwd: &Path) -> Result<Vec<String>, UsageError> {
    let mut words = args.to_vec();
    for _ in 0..MAX_DEPTH {
        match expand_once(&words, cwd)? {
            Some(next) => words = next,
            None => return Ok(words),
        }
    }
    Err(usage(format!("--app/-configfile: files name further files more than {MAX_DEPTH} deep; is one naming itself?")))
}

fn expand_once(args: &[String], cwd: &Path) -> Result<Option<Vec<String>>, UsageError> {
    let last = args.last().map(String::as_str).unwrap_or_default();
    let (opt, file, kept) = match (args, last.split_once('=')) {
        (_, Some((opt, file))) if OPTIONS.contains(&opt) => (opt, file, args.len() - 1),
        ([.., opt, file], _) if OPTIONS.contains(&opt.as_str()) => (opt.as_str(), file.as_str(), args.len() - 2),
        _ => return Ok(None),
    };
    let text = std::fs::read_to_string(cwd.join(file)).map_err(|e| usage(format!("{opt} {file}: cannot read it: {e}")))?;
    let mut out = args[..kept].to_vec();
    let mut contexts = 0;
    let mut pending = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        // Hydra: a line ending in a backslash continues on the next.
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        let joined = std::mem::take(&mut pending) + line;
        let line = joined.trim();
        if line.is_empty() {
            continue;
        }
        if contexts > 0 {
            out.push(":".into());
        }
        out.extend(split(line).map_err(|e| usage(format!("{opt} {file}: line {}: {e}", n + 1)))?);
        contexts += 1;
    }
    if contexts == 0 {
        return Err(usage(format!("{opt} {file}: no application context in it (one per line, like `-np 2 ./app`)")));
    }
    Ok(Some(out))
}

/// Open MPI's `--tune FILE[,FILE]`: the files' `-x` and `--mca` words go in front of the command
/// line, so that its own values win (for both, the last given wins). Found through the flag
/// table, so a program's own `-tune` argument is left alone.
pub fn expand_tune(args: &[String], cwd: &Path) -> Result<Vec<String>, UsageError> {
    let mut cmd = <super::flags::Cli as clap::CommandFactory>::command();
    cmd.build();
    let segments = super::normalize::normalize(&cmd, args)?;
    let global = segments.first().map(Vec::as_slice).unwrap_or_default();
    let options = global.split(|w| w == "--").next().unwrap_or_default();
    let mut files = Vec::new();
    let mut am = Vec::new();
    for (i, w) in options.iter().enumerate() {
        if w == "--tune" {
            files.extend(options.get(i + 1).cloned());
        } else if let Some(f) = w.strip_prefix("--tune=") {
            files.push(f.to_string());
        } else if w == "--am" {
            am.extend(options.get(i + 1).cloned());
        } else if let Some(f) = w.strip_prefix("--am=") {
            am.push(f.to_string());
        }
    }
    let mut front = Vec::new();
    for file in am.iter().flat_map(|f| f.split(',')).filter(|f| !f.is_empty()) {
        let text = std::fs::read_to_string(cwd.join(file)).map_err(|e| usage(format!("-am {file}: cannot read it: {e}")))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| usage(format!("-am {file}: line {}: '{line}': expected name = value", n + 1)))?;
            front.extend(["--mca".to_string(), k.trim().to_string(), v.trim().to_string()]);
        }
    }
    for file in files.iter().flat_map(|f| f.split(',')).filter(|f| !f.is_empty()) {
        let text = std::fs::read_to_string(cwd.join(file)).map_err(|e| usage(format!("--tune {file}: cannot read it: {e}")))?;
        for (n, line) in text.lines().enumerate() {
            let at = |what: String| usage(format!("--tune {file}: line {}: {what}", n + 1));
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let words = split(line).map_err(at)?;
            let mut i = 0;
            while i < words.len() {
                let takes = match words[i].as_str() {
                    "-x" => 1,
                    "-mca" | "--mca" | "-gmca" | "--gmca" => 2,
                    w => return Err(at(format!("'{w}': only -x VAR[=VALUE] and --mca KEY VALUE may appear in a tune file"))),
                };
                if i + takes >= words.len() {
                    return Err(at(format!("{} needs {}", words[i], if takes == 1 { "VAR or VAR=VALUE" } else { "KEY VALUE" })));
                }
                front.extend_from_slice(&words[i..=i + takes]);
                i += takes + 1;
            }
        }
    }
    Ok(front.into_iter().chain(args.iter().cloned()).collect())
}

/// A line's words: blanks separate, single and double quotes group.
fn split(line: &str) -> Result<Vec<String>, String> {
    let (mut words, mut cur, mut quote, mut open) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, open) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if open {
                    words.push(std::mem::take(&mut cur));
                }
                open = false;
            }
            (_, c) => {
                cur.push(c);
                open = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q}"));
    }
    if open {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_trailing_app_file_becomes_its_contexts() {
        let dir = std::env::temp_dir().join(format!("rlaunch-appfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app"), "# two programs\n-np 2 ./a x\n\n-np 1 \\\n ./b 'y z'\n").unwrap();
        assert_eq!(expand(&s(&["-x", "A=1", "--app", "app"]), &dir).unwrap(), s(&["-x", "A=1", "-np", "2", "./a", "x", ":", "-np", "1", "./b", "y z"]));
        assert_eq!(expand(&s(&["-configfile", "app"]), &dir).unwrap()[..3], s(&["-np", "2", "./a"]));
        assert_eq!(expand(&s(&["-l", "--app=app"]), &dir).unwrap()[..4], s(&["-l", "-np", "2", "./a"]));
        // Not last: left to the flag table, which refuses it.
        assert_eq!(expand(&s(&["--app", "app", "x"]), &dir).unwrap(), s(&["--app", "app", "x"]));
        std::fs::write(dir.join("empty"), "# nothing\n").unwrap();
        assert_eq!(expand(&s(&["--app", "empty"]), &dir).unwrap_err().to_string(), "--app empty: no application context in it (one per line, like `-np 2 ./app`)");
        std::fs::write(dir.join("outer"), "-x B=2 --app app\n").unwrap();
        assert_eq!(expand(&s(&["--app", "outer"]), &dir).unwrap()[..5], s(&["-x", "B=2", "-np", "2", "./a"]));
        std::fs::write(dir.join("self"), "--app self\n").unwrap();
        assert!(expand(&s(&["--app", "self"]), &dir).unwrap_err().to_string().contains("is one naming itself?"));
        std::fs::write(dir.join("bad"), "-np 1 'a\n").unwrap();
        assert_eq!(expand(&s(&["--app", "bad"]), &dir).unwrap_err().to_string(), "--app bad: line 1: unclosed '");
        assert!(expand(&s(&["--app", "missing"]), &dir).unwrap_err().to_string().starts_with("--app missing: cannot read it: "));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tune_files_go_in_front_of_the_command_line() {
        let dir = std::env::temp_dir().join(format!("rlaunch-tune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t1"), "# site defaults
-x A=1 -mca btl self,tcp
--mca pml ob1 -x B
").unwrap();
        std::fs::write(dir.join("t2"), "-x C=3\n").unwrap();
        let got = expand_tune(&s(&["-np", "2", "--tune", "t1,t2", "./a", "--tune", "x"]), &dir).unwrap();
        assert_eq!(got, s(&["-x", "A=1", "-mca", "btl", "self,tcp", "--mca", "pml", "ob1", "-x", "B", "-x", "C=3", "-np", "2", "--tune", "t1,t2", "./a", "--tune", "x"]));
        // The program's own --tune is its argument, not a file.
        assert_eq!(expand_tune(&s(&["./a", "--tune", "nope"]), &dir).unwrap(), s(&["./a", "--tune", "nope"]));
        std::fs::write(dir.join("bad"), "-x A=1 --np 4
").unwrap();
        assert_eq!(
            expand_tune(&s(&["-tune", "bad", "./a"]), &dir).unwrap_err().to_string(),
            "--tune bad: line 1: '--np': only -x VAR[=VALUE] and --mca KEY VALUE may appear in a tune file"
        );
        std::fs::write(dir.join("short"), "--mca btl
").unwrap();
        assert_eq!(expand_tune(&s(&["--tune=short", "./a"]), &dir).unwrap_err().to_string(), "--tune short: line 1: --mca needs KEY VALUE");
        assert!(expand_tune(&s(&["--tune", "missing", "./a"]), &dir).unwrap_err().to_string().starts_with("--tune missing: cannot read it: "));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
