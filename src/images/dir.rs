//! The layout of `--image-dir DIR`, which a later job with the same directory starts from:
//!
//! ```text
//! DIR/NAME/rank<R>.epoch<E>.img    rank R's image of epoch E, written by R's daemon
//! DIR/NAME/epoch<E>.complete       every rank saved epoch E (empty; written by every daemon)
//! ```
//!
//! NAME is the job's name: the file name of the first program. Files are written under a
//! temporary name and renamed, so a reader never sees half an image. Pure: names and choices;
//! the daemon reads and writes.

use std::path::{Path, PathBuf};

/// The job's folder in `dir`, named after the first program (`./a.out` → `a.out`).
pub fn job_dir(dir: &Path, program: &str) -> PathBuf {
    let name = Path::new(program).file_name().map_or_else(|| "job".to_string(), |n| n.to_string_lossy().into_owned());
    dir.join(name)
}

pub fn image_file(rank: u32, epoch: u64) -> String {
    format!("rank{rank}.epoch{epoch}.img")
}

pub fn complete_file(epoch: u64) -> String {
    format!("epoch{epoch}.complete")
}

/// What a file of the folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Image { rank: u32, epoch: u64 },
    Complete(u64),
}

pub fn parse(name: &str) -> Option<Entry> {
    if let Some(e) = name.strip_prefix("epoch").and_then(|s| s.strip_suffix(".complete")) {
        return e.parse().ok().map(Entry::Complete);
    }
    let rest = name.strip_prefix("rank")?.strip_suffix(".img")?;
    let (r, e) = rest.split_once(".epoch")?;
    Some(Entry::Image { rank: r.parse().ok()?, epoch: e.parse().ok()? })
}

/// The epoch of rank `rank`'s image to load from the folder's `entries`: the latest complete
/// epoch it has an image of (`job`), else its latest.
pub fn pick(entries: &[Entry], rank: u32, job: bool) -> Option<u64> {
    let has = |e: u64| entries.contains(&Entry::Image { rank, epoch: e });
    if job {
        entries.iter().filter_map(|e| if let Entry::Complete(c) = e { Some(*c) } else { None }).filter(|&c| has(c)).max()
    } else {
        entries.iter().filter_map(|e| if let Entry::Image { rank: r, epoch } = e { (*r == rank).then_some(*epoch) } else { None }).max()
    }
}

/// Files to delete once `complete` is complete: rank `ranks`' images of older epochs and older
/// markers.
pub fn stale(entries: &[Entry], ranks: &[u32], complete: u64) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match *e {
            Entry::Image { rank, epoch } if epoch < complete && ranks.contains(&rank) => Some(image_file(rank, epoch)),
            Entry::Complete(epoch) if epoch < complete => Some(complete_file(epoch)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse(&image_file(3, 17)), Some(Entry::Image { rank: 3, epoch: 17 }));
        assert_eq!(parse(&complete_file(4)), Some(Entry::Complete(4)));
        for other in ["rank3.epoch4.img.tmp", "notes.txt", "rankx.epoch1.img", "epoch.complete"] {
            assert_eq!(parse(other), None, "{other}");
        }
        assert_eq!(job_dir(Path::new("/d"), "./bin/iterate"), PathBuf::from("/d/iterate"));
    }

    #[test]
    fn job_scope_needs_a_marker_and_rank_scope_takes_the_latest() {
        let e = [Entry::Image { rank: 0, epoch: 1 }, Entry::Image { rank: 0, epoch: 2 }, Entry::Complete(1), Entry::Complete(3), Entry::Image { rank: 1, epoch: 3 }];
        assert_eq!(pick(&e, 0, true), Some(1), "3 is complete but rank 0 has no image of it");
        assert_eq!(pick(&e, 0, false), Some(2));
        assert_eq!(pick(&e, 1, true), Some(3));
        assert_eq!(pick(&e, 2, false), None);
        assert_eq!(stale(&e, &[0], 2), vec!["rank0.epoch1.img".to_string(), "epoch1.complete".to_string()]);
    }
}
