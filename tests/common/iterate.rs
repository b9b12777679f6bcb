//! tests/programs/iterate.c (issue 17's recovery images): built with gcc against
//! librlaunch_image, its checksums, and those of an undisturbed run. Used by the image and the
//! restart tests.

use super::Output;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The C side's library, as the build of rlaunch leaves it (a dependency's artifacts are in
/// deps/; `cargo build -p rlaunch-image` puts them next to the binary).
pub fn static_lib() -> PathBuf {
    let profile = Path::new(super::bin()).parent().expect("the binary's directory");
    [profile.join("deps/librlaunch_image.a"), profile.join("librlaunch_image.a")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("librlaunch_image.a is in neither {0}/deps nor {0}: build the workspace", profile.display()))
}

/// iterate.c, compiled once per test run, on the tree the cluster's nodes share.
pub fn iterate() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("images");
        std::fs::create_dir_all(&dir).unwrap();
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("fabrics/image/include");
        let lib = static_lib();
        let extra = ["-Wall", "-Werror", "-I", include.to_str().unwrap(), lib.to_str().unwrap(), "-lpthread", "-ldl", "-lm"];
        super::mpi::compile_with("gcc", &extra, &dir, "iterate", "gcc").unwrap_or_else(|e| panic!("{e}"));
        dir.join("iterate")
    })
}

/// `rank R checksum X iterations N` lines: rank → checksum.
pub fn checksums(o: &Output) -> BTreeMap<u32, String> {
    o.stdout_lines()
        .iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                ["rank", r, "checksum", x, "iterations", _] => Some((r.parse().ok()?, x.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// The checksums of an undisturbed run of `iterations`, from the program alone.
pub fn undisturbed(ranks: u32, args: &[&str]) -> BTreeMap<u32, String> {
    (0..ranks)
        .map(|r| {
            let out = Command::new(iterate()).args(args).env("RLAUNCH_RANK", r.to_string()).env_remove("RLAUNCH_IMAGE_FD").output().unwrap();
            assert!(out.status.success(), "{out:?}");
            let o = Output { code: out.status.code(), signal: None, stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::new(), elapsed: Default::default() };
            (r, checksums(&o)[&r].clone())
        })
        .collect()
}
