//! The low step of the command line, as ripgrep's low args: words in, [`Parsed`] out, no I/O.

use super::error::{usage, UsageError};
use super::flags::{BadValue, Cli, PER_APP};
use super::normalize::normalize;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;

/// What the words on the command line ask for.
#[derive(Debug)]
pub struct Parsed {
    pub global: Cli,
    /// One per MPMD context: its own -np, -x, --wdir and program.
    pub apps: Vec<Cli>,
    /// The command line as given (for the report).
    pub words: Vec<String>,
}

/// clap's error as one line. A value a choice flag's type rejects reads `--flag VALUE: reason`, as
/// every other bad value rlaunch reports; clap's other errors keep its own first line.
fn clap_error(e: clap::Error) -> UsageError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let bad_value = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<BadValue>());
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => UsageError::Display(e.render().to_string()),
        ErrorKind::ValueValidation if bad_value.is_some() => {
            // InvalidArg is the flag with its value name ("--fabric <auto|tcp|rdma|off>").
            let flag = context(ContextKind::InvalidArg).and_then(|a| a.split_whitespace().next()).unwrap_or("option");
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            usage(format!("{flag} {value}: {}", bad_value.map(|b| b.0.as_str()).unwrap_or_default()))
        }
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line").trim_start_matches("error: ").to_string();
            usage(format!("{first}; see 'rlaunch --help'"))
        }
    }
}

/// The low step: what the words on the command line ask for, checked only against each other.
pub fn parse(args: &[String]) -> Result<Parsed, UsageError> {
    let mut cmd = Cli::command();
    // Building adds the automatic --help/--version arguments, so that normalize knows them.
    cmd.build();
    let segments = normalize(&cmd, args)?;
    let mut apps = Vec::new();
    let mut global = None;
    for (i, seg) in segments.iter().enumerate() {
        let mut argv = vec!["rlaunch".to_string()];
        argv.extend(seg.iter().cloned());
        let matches = Cli::command().try_get_matches_from(argv).map_err(clap_error)?;
        let cli = Cli::from_arg_matches(&matches).map_err(clap_error)?;
        if i > 0 {
            for arg in Cli::command().get_arguments() {
                let id = arg.get_id().as_str();
                if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) && !PER_APP.contains(&id) {
                    let long = arg.get_long().unwrap_or(id);
                    return Err(usage(format!(
                        "option --{long} applies to the whole job; put it before the first program, not after ':'"
                    )));
                }
            }
        }
        if let Some(file) = &cli.app {
            return Err(usage(format!("--app {}: give it last, in place of the program", file.display())));
        }
        if cli.inventory && !cli.program.is_empty() {
            return Err(usage(format!("--inventory runs no program; drop '{}' or --inventory", cli.program.join(" "))));
        }
        if cli.generate.is_none() && !cli.inventory && cli.program.is_empty() {
            return Err(usage(if segments.len() > 1 {
                format!("no program given in application context {} (between ':' separators)", i + 1)
            } else {
                "no program given; usage: rlaunch [OPTIONS] PROGRAM [ARGS]...".to_string()
            }));
        }
        if global.is_none() {
            let mut g = cli.clone();
            open_mpi5_lists(&mut g)?;
            global = Some(g);
        }
        apps.push(cli);
    }
    Ok(Parsed { global: global.expect("at least one segment"), apps, words: args.to_vec() })
}

/// Open MPI 5's `--output LIST` and `--display LIST` as the options they stand for.
fn open_mpi5_lists(g: &mut Cli) -> Result<(), UsageError> {
    let mut nocopy = false;
    let mut dir = None;
    for item in g.output.iter().flat_map(|l| l.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key {
            "tag" | "tag-detailed" | "tag-fullname" => g.tag_output = true,
            "timestamp" => g.timestamp_output = true,
            "merge-stderr" | "merge" => g.merge_stderr_to_stdout = true,
            "dir" | "file" if !value.is_empty() => dir = Some(value.to_string()),
            "nocopy" => nocopy = true,
            _ => return Err(usage(format!("--output {item}: expected tag, timestamp, merge-stderr, dir=DIR, file=DIR or nocopy"))),
        }
    }
    match (dir, nocopy) {
        (Some(d), n) => g.output_filename = Some(if n { format!("{d}:nocopy") } else { d }),
        (None, true) => return Err(usage("--output nocopy: give dir=DIR too (nocopy keeps the output only in files)")),
        (None, false) => {}
    }
    for item in g.display.iter().flat_map(|l| l.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
        match item {
            "map" | "allocation" | "map-devel" | "alloc" => g.display_map = true,
            "bind" | "bindings" => g.report_bindings = true,
            _ => return Err(usage(format!("--display {item}: expected map, allocation or bind"))),
        }
    }
    Ok(())
}

pub fn to_strings(args: Vec<OsString>) -> Result<Vec<String>, UsageError> {
    args.into_iter()
        .map(|a| a.into_string().map_err(|a| usage(format!("argument {a:?} is not valid UTF-8"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::StdinTarget;
    use std::path::PathBuf;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn single_dash_long_options_and_program_boundary() {
        let p = parse(&s(&["-np", "4", "-wdir", "/tmp", "-x", "A=1", "./app", "-np", "--x"])).unwrap();
        assert_eq!(p.global.np, Some(4));
        assert_eq!(p.global.wdir, Some(PathBuf::from("/tmp")));
        assert_eq!(p.global.export, vec!["A=1"]);
        assert_eq!(p.global.program, s(&["./app", "-np", "--x"]));
    }

    #[test]
    fn forms_of_np() {
        for argv in [&["-n", "3", "a"][..], &["-np", "3", "a"], &["--np", "3", "a"], &["--np=3", "a"], &["-n3", "a"], &["--n", "3", "a"]] {
            assert_eq!(parse(&s(argv)).unwrap().global.np, Some(3), "{argv:?}");
        }
    }

    #[test]
    fn mpmd_segments() {
        let p = parse(&s(&["-l", "-np", "2", "./a", ":", "-np", "3", "./b", "x", "y"])).unwrap();
        assert_eq!(p.apps.len(), 2);
        assert_eq!(p.apps[0].program, s(&["./a"]));
        assert_eq!(p.apps[1].np, Some(3));
        assert_eq!(p.apps[1].program, s(&["./b", "x", "y"]));
        assert!(p.global.tag_output);
    }

    #[test]
    fn global_option_after_colon_is_refused() {
        let e = parse(&s(&["-np", "1", "a", ":", "--timeout", "3", "b"])).unwrap_err().to_string();
        assert!(e.contains("--timeout applies to the whole job"), "{e}");
    }

    #[test]
    fn unknown_flag_is_one_line() {
        let e = parse(&s(&["--bogus", "a"])).unwrap_err().to_string();
        assert_eq!(e, "unknown option '--bogus'; see 'rlaunch --help'");
        let e = parse(&s(&["-j", "a"])).unwrap_err().to_string();
        assert_eq!(e, "unknown option '-j' in '-j'; see 'rlaunch --help'");
        let e = parse(&s(&["--np", "x", "a"])).unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("'x'"), "{e}");
    }

    #[test]
    fn stdin_targets() {
        let target = |v: &str| parse(&s(&["--stdin", v, "a"])).map(|p| p.global.stdin);
        assert_eq!(target("none").unwrap(), StdinTarget::None);
        assert_eq!(target("all").unwrap(), StdinTarget::All);
        assert_eq!(target("3").unwrap(), StdinTarget::Rank(3));
        assert!(target("x").is_err());
        assert_eq!(parse(&s(&["a"])).unwrap().global.stdin, StdinTarget::Rank(0));
    }

    #[test]
    fn rejected_choice_values_read_flag_value_reason() {
        let e = |argv: &[&str]| parse(&s(argv)).unwrap_err().to_string();
        assert_eq!(e(&["--fabric", "ib", "a"]), "--fabric ib: expected auto, tcp, rdma or off");
        assert_eq!(e(&["--fabric=ib", "a"]), "--fabric ib: expected auto, tcp, rdma or off");
        assert_eq!(e(&["--mpi", "x", "a"]), "--mpi x: expected pmi, pmix or auto");
        assert_eq!(e(&["--stdin", "some", "a"]), "--stdin some: expected a rank number, 'all' or 'none'");
        assert_eq!(e(&["--launcher", "rsh", "a"]), "--launcher rsh: expected local, ssh, agent, slurm, pbs, sge or lsf");
        assert_eq!(e(&["--map-by", "corner", "a"]), "--map-by corner: unknown --map-by object 'corner'; use slot, node, hwthread, core, l3cache, numa, package (socket) or ppr:N:OBJ");
        assert_eq!(e(&["--rank-by", "x", "a"]), "--rank-by x: unknown --rank-by value 'x'; use slot or node");
        assert_eq!(e(&["--generate", "tcsh"]), "--generate tcsh: expected man, bash, zsh, fish, elvish or powershell");
    }

    #[test]
    fn single_dash_long_options_of_both_families_are_one_word() {
        let p = parse(&s(&[
            "-genv", "A", "1", "-genv", "B=2", "-genvall", "-mca", "btl", "^openib", "-gmca", "x", "y", "-hosts", "a,b", "-ppn", "2",
            "-bind-to", "core", "-launcher", "rsh", "-launcher-exec", "/usr/bin/ssh", "-iface", "ib0", "-prepend-rank",
            "-allow-run-as-root", "-report-bindings", "./app", "-genv",
        ]))
        .unwrap();
        let g = &p.global;
        assert_eq!(g.genv, s(&["A=1", "B=2"]));
        assert_eq!(g.mca, s(&["btl=^openib", "x=y"]));
        assert!(g.genvall && g.tag_output && g.allow_run_as_root && g.report_bindings);
        assert!(parse(&s(&["-rr", "a"])).unwrap().global.rr);
        assert_eq!((g.hosts.as_deref(), g.perhost, g.bind_to.as_ref().map(|b| b.bind.to_string()).as_deref(), g.nic.as_deref()), (Some("a,b"), Some(2), Some("core"), Some("ib0")));
        assert_eq!((g.bootstrap, g.bootstrap_exec.as_deref()), (Some(super::super::flags::Bootstrap::Rsh), Some("/usr/bin/ssh")));
        assert_eq!(g.program, s(&["./app", "-genv"]));
        // Open MPI's -c is -np.
        assert_eq!(parse(&s(&["-c", "2", "a"])).unwrap().global.np, Some(2));
        for alias in ["-npernode", "--npernode", "--ppn", "-N"] {
            assert_eq!(parse(&s(&[alias, "3", "a"])).unwrap().global.ppn, Some(3), "{alias}");
        }
        // Hydra's -ppn is Hydra's: -perhost.
        for hydra in ["-ppn", "-perhost"] {
            assert_eq!(parse(&s(&[hydra, "3", "a"])).unwrap().global.perhost, Some(3), "{hydra}");
        }
    }

    #[test]
    fn env_is_per_context_and_pairs_need_two_words() {
        let p = parse(&s(&["-n", "1", "-env", "A", "1", "a", ":", "-n", "1", "-env", "B=2", "-envall", "b"])).unwrap();
        assert_eq!((p.apps[0].env.clone(), p.apps[1].env.clone()), (s(&["A=1"]), s(&["B=2"])));
        let e = |argv: &[&str]| parse(&s(argv)).unwrap_err().to_string();
        assert_eq!(e(&["-genv", "A"]), "-genv needs two words, KEY VALUE (or KEY=VALUE)");
        assert_eq!(e(&["--mca", "btl"]), "--mca needs two words, KEY VALUE");
    }

    #[test]
    fn unknown_single_dash_long_options_are_named_whole() {
        let e = |argv: &[&str]| parse(&s(argv)).unwrap_err().to_string();
        assert_eq!(e(&["-genvsome", "a"]), "unknown option '-genvsome'; see 'rlaunch --help'");
        // Another launcher's option that rlaunch will not carry out says why.
        assert_eq!(e(&["-enable-x", "a"]), "-enable-x: rlaunch does not forward X11 connections");
        assert_eq!(e(&["-ckpointlib", "blcr", "a"]), "-ckpointlib: BLCR checkpointing is gone; rlaunch does not checkpoint jobs");
        assert_eq!(e(&["-trace", "a"]), "-trace: Intel Trace Collector preloading is not supported; set LD_PRELOAD with -genv");
        assert_eq!(e(&["-nolocalhost", "a"]), "unknown option '-nolocalhost'; see 'rlaunch --help'");
        assert_eq!(e(&["-demuxx", "a"]), "unknown option '-demuxx'; see 'rlaunch --help'");
        // Not -l -o -c...: one word rlaunch does not know.
        assert_eq!(e(&["-localonly", "a"]), "unknown option '-localonly'; see 'rlaunch --help'");
        assert_eq!(e(&["-launcher", "ll", "a"]), "--bootstrap ll: expected ssh, rsh, fork, slurm, pbs, sge or lsf (the names of -launcher and -bootstrap)");
        // Short clusters still work.
        assert!(parse(&s(&["-lq", "-n4", "a"])).unwrap().global.quiet);
    }
}
