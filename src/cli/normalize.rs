//! mpirun-style words to clap's: `-np 4` and other single-dash long options, short-flag clusters,
//! `:` between application contexts, and the program boundary.

use super::error::{usage, UsageError};
use super::flags::{EXPANSIONS, MAP_BY_WITH_VALUE, PAIRS, SINGLE_DASH_RENAMES, WONT};

struct OptInfo {
    /// The long name clap knows it by.
    long: String,
    takes_value: bool,
    /// A `KEY VALUE` option (see [`PAIRS`]): whether `KEY=VALUE` as one word is accepted too.
    pair: Option<bool>,
}

fn info(a: &clap::Arg) -> OptInfo {
    let pair = PAIRS.iter().find(|(id, _)| a.get_id() == *id).map(|&(_, eq)| eq);
    OptInfo { long: a.get_long().unwrap_or_default().to_string(), takes_value: a.get_action().takes_values(), pair }
}

fn lookup_long(cmd: &clap::Command, name: &str) -> Option<OptInfo> {
    cmd.get_arguments().find_map(|a| {
        let matches = a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name));
        matches.then(|| info(a))
    })
}

fn lookup_short(cmd: &clap::Command, c: char) -> Option<OptInfo> {
    cmd.get_arguments()
        .find_map(|a| (a.get_short() == Some(c) || a.get_all_short_aliases().is_some_and(|v| v.contains(&c))).then(|| info(a)))
}

/// The line for an option rlaunch does not know: why, for another launcher's option it will not
/// carry out ([`WONT`]), else "unknown".
fn unknown(written: &str, name: &str) -> UsageError {
    match WONT.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => usage(format!("{written}: {why}")),
        None => usage(format!("unknown option '{written}'; see 'rlaunch --help'")),
    }
}

/// Pushes option `flag` (clap's spelling; `written` is the user's) and its value words from
/// `args[*i..]`: one word, or for a [`PAIRS`] option `KEY VALUE` joined as `--long=KEY=VALUE`.
fn push_option(seg: &mut Vec<String>, written: &str, flag: &str, o: &OptInfo, args: &[String], i: &mut usize) -> Result<(), UsageError> {
    let Some(eq_form) = o.pair else {
        seg.push(flag.to_string());
        if o.takes_value && *i < args.len() {
            seg.push(args[*i].clone());
            *i += 1;
        }
        return Ok(());
    };
    let missing = || usage(format!("{written} needs two words, KEY VALUE{}", if eq_form { " (or KEY=VALUE)" } else { "" }));
    let key = args.get(*i).ok_or_else(missing)?;
    if eq_form && key.contains('=') {
        seg.push(format!("--{}={key}", o.long));
        *i += 1;
        return Ok(());
    }
    let value = args.get(*i + 1).ok_or_else(missing)?;
    seg.push(format!("--{}={key}={value}", o.long));
    *i += 2;
    Ok(())
}

/// Splits argv at ':' into application segments and rewrites each into a form clap parses: single-dash
/// long options become double-dash, and `--` goes before the program so that everything after it
/// belongs to the program.
pub fn normalize(cmd: &clap::Command, args: &[String]) -> Result<Vec<Vec<String>>, UsageError> {
    let mut args = args.to_vec();
    let mut segments = vec![Vec::new()];
    let mut i = 0;
    let mut in_program = false;
    while i < args.len() {
        let word = args[i].clone();
        let a = &word;
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
        let bare = a.strip_prefix('-').map(|b| b.strip_prefix('-').unwrap_or(b));
        if let Some((_, pattern)) = MAP_BY_WITH_VALUE.iter().find(|(from, _)| bare == Some(from)) {
            let value = args.get(i).ok_or_else(|| usage(format!("{a} needs a number")))?;
            seg.push("--map-by".into());
            seg.push(pattern.replace("{}", value));
            i += 1;
            continue;
        }
        // Another launcher's old or short spelling of rlaunch's options: its words take its place
        // (they are rlaunch's own, never another expansion: see the flag table's test).
        if let Some((_, words)) = EXPANSIONS.iter().find(|(from, _)| a.strip_prefix('-').map(|b| b.strip_prefix('-').unwrap_or(b)) == Some(from)) {
            let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            args.splice(i - 1..i, words);
            i -= 1;
            continue;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, has_eq) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let Some(o) = lookup_long(cmd, name) else {
                return Err(unknown(&format!("--{name}"), name));
            };
            if has_eq {
                seg.push(a.clone());
            } else {
                push_option(seg, a, a, &o, &args, &mut i)?;
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let body = &a[1..];
            let (name, has_eq) = match body.split_once('=') {
                Some((n, _)) => (n, true),
                None => (body, false),
            };
            let long_word = name.chars().count() > 1;
            if long_word {
                let renamed = SINGLE_DASH_RENAMES.iter().find(|(from, _)| *from == name).map_or(name, |(_, to)| to);
                if let Some(o) = lookup_long(cmd, renamed) {
                    if has_eq {
                        seg.push(format!("--{renamed}{}", &body[name.len()..]));
                    } else {
                        push_option(seg, a, &format!("--{renamed}"), &o, &args, &mut i)?;
                    }
                    continue;
                }
            }
            // -nolocal is an unknown long option, not -n olocal: -n, -c and -N take numbers.
            // A known other launcher's option (-ckpointlib) is named whole too.
            // -nolocal, -demux, -silent-abort are long options, not -n olocal, -d emux or
            // -s ilent-abort: a short option's value written onto it (-n4, -d8, -sall, -xA=1)
            // is a number, for -s all/none, for -x VAR=VALUE; any other word is named whole.
            let first = body.chars().next().unwrap_or_default();
            let rest = body[first.len_utf8()..].trim_start_matches('=');
            let numeric = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
            let value_like = numeric || (first == 's' && ["all", "none"].contains(&rest)) || (first == 'x' && rest.contains('='));
            let attached = lookup_short(cmd, first).is_some_and(|o| o.takes_value) && !value_like;
            // Letters up to the first that takes a value must all be flags (-lq, -vvv, -ln4);
            // otherwise the word is one long option rlaunch does not know (-localonly).
            let letters_known = body
                .chars()
                .map(|c| lookup_short(cmd, c))
                .find(|o| o.as_ref().map_or(true, |o| o.takes_value))
                .map_or(true, |o| o.is_some());
            if long_word && (attached || !letters_known || WONT.iter().any(|(n, _)| *n == name)) {
                return Err(unknown(&format!("-{name}"), name));
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
                    // A word like -envnone is an unknown long option, not a cluster of letters.
                    None if pos == 0 && long_word => return Err(unknown(&format!("-{name}"), name)),
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
