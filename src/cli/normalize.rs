//! mpirun-style words to clap's: `-np 4` and other single-dash long options, short-flag clusters,
//! `:` between application contexts, and the program boundary.

use super::error::{usage, UsageError};

struct OptInfo {
    takes_value: bool,
}

fn lookup_long(cmd: &clap::Command, name: &str) -> Option<OptInfo> {
    cmd.get_arguments().find_map(|a| {
        let matches = a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name));
        matches.then(|| OptInfo { takes_value: a.get_action().takes_values() })
    })
}

fn lookup_short(cmd: &clap::Command, c: char) -> Option<OptInfo> {
    cmd.get_arguments().find_map(|a| (a.get_short() == Some(c)).then(|| OptInfo { takes_value: a.get_action().takes_values() }))
}

/// Splits argv at ':' into application segments and rewrites each into a form clap parses: single-dash
/// long options become double-dash, and `--` goes before the program so that everything after it
/// belongs to the program.
pub fn normalize(cmd: &clap::Command, args: &[String]) -> Result<Vec<Vec<String>>, UsageError> {
    let mut segments = vec![Vec::new()];
    let mut i = 0;
    let mut in_program = false;
    while i < args.len() {
        let a = &args[i];
        let seg = segments.last_mut().unwrap();
        i += 1;
        if a == ":" {
            segments.push(Vec::new());
            in_program = false;
            continue;
        }
        if in_program {
            seg.push(a.clone());
            continue;
        }
        if a == "--" {
            seg.push(a.clone());
            in_program = true;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, has_eq) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let Some(o) = lookup_long(cmd, name) else {
                return Err(usage(format!("unknown option '--{name}'; see 'rlaunch --help'")));
            };
            seg.push(a.clone());
            if !has_eq && o.takes_value && i < args.len() {
                seg.push(args[i].clone());
                i += 1;
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            let (name, has_eq) = match body.split_once('=') {
                Some((n, _)) => (n, true),
                None => (body, false),
            };
            if name.chars().count() > 1 {
                if let Some(o) = lookup_long(cmd, name) {
                    seg.push(format!("-{a}"));
                    if !has_eq && o.takes_value && i < args.len() {
                        seg.push(args[i].clone());
                        i += 1;
                    }
                    continue;
                }
            }
            // A cluster of short flags; the first that takes a value swallows the rest or the next word.
            // Each flag goes to clap as a word of its own: given a cluster like `-n4` whose value
            // is not itself a flag letter, clap would take the whole word for the hyphen-allowing
            // PROGRAM.
            for (pos, c) in body.char_indices() {
                match lookup_short(cmd, c) {
                    Some(o) if o.takes_value => {
                        seg.push(format!("-{c}"));
                        let rest = &body[pos + c.len_utf8()..];
                        if !rest.is_empty() {
                            seg.push(rest.strip_prefix('=').unwrap_or(rest).to_string());
                        } else if i < args.len() {
                            seg.push(args[i].clone());
                            i += 1;
                        }
                        break;
                    }
                    Some(_) => seg.push(format!("-{c}")),
                    None => return Err(usage(format!("unknown option '-{c}' in '{a}'; see 'rlaunch --help'"))),
                }
            }
            continue;
        }
        // The first plain word is the program.
        seg.push("--".into());
        seg.push(a.clone());
        in_program = true;
    }
    Ok(segments)
}
