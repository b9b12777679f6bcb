//! Fixture trees are plain files in git; the symlinks sysfs relies on (`device`, and the PCI
//! function's `infiniband/<dev>` child) are listed in each fixture's `symlinks` file and created here
//! in a temporary copy.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A temporary sysfs root built from fixture `name`; keep the TempDir alive while using the path.
pub fn sysfs(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sys");
    copy_tree(&fixture_dir(name), &root);
    let links = fs::read_to_string(root.join("symlinks")).unwrap();
    for line in links.lines().filter(|l| !l.trim().is_empty()) {
        let (link, target) = line
            .split_once('\t')
            .expect("symlinks lines are `link<TAB>target`");
        let link = root.join(link);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &link).unwrap();
        assert!(
            link.exists(),
            "fixture {name}: symlink {} -> {target} dangles",
            link.display()
        );
    }
    (tmp, root)
}
