//! One daemon's images in memory, by (rank, epoch): its own ranks' and the copies it keeps for
//! its partners. Kept across restarts of the ranks (job-scope restarts do not touch it).

use std::collections::BTreeMap;
use std::sync::Arc;

/// Images of a rank kept beyond the latest complete epoch: a rank that saves every iteration
/// while another lags must not fill the daemon's memory.
pub const KEEP_NEWER: usize = 8;

pub type Bytes = Arc<Vec<u8>>;

#[derive(Debug, Default)]
pub struct Store {
    images: BTreeMap<(u32, u64), Bytes>,
    /// The latest epoch every rank saved, as the front end said.
    complete: Option<u64>,
}

impl Store {
    /// Keeps rank `rank`'s image of `epoch` (a later save of the same epoch replaces it) and
    /// drops what no load can ask for any more.
    pub fn put(&mut self, rank: u32, epoch: u64, data: Bytes) {
        self.images.insert((rank, epoch), data);
        self.prune(rank);
    }

    /// Every rank saved `epoch` (a later announcement of an older epoch changes nothing).
    pub fn set_complete(&mut self, epoch: u64) {
        if self.complete.is_some_and(|c| c >= epoch) {
            return;
        }
        self.complete = Some(epoch);
        let ranks: Vec<u32> = self.images.keys().map(|(r, _)| *r).collect();
        for r in ranks {
            self.prune(r);
        }
    }

    /// A job-scope restart: every rank resumes from the latest complete epoch, so the images of
    /// later epochs belong to a past that will not happen again (the new processes save those
    /// epochs anew, perhaps differently); they go, and with them everything when no epoch was
    /// complete. Images are otherwise kept across restarts.
    pub fn new_generation(&mut self) {
        let complete = self.complete;
        self.images.retain(|&(_, e), _| complete.is_some_and(|c| e <= c));
    }

    pub fn complete(&self) -> Option<u64> {
        self.complete
    }

    /// Rank `rank`'s image: of the latest complete epoch (`job`), else its latest.
    pub fn get(&self, rank: u32, job: bool) -> Option<(u64, Bytes)> {
        if job {
            let e = self.complete?;
            return self.images.get(&(rank, e)).map(|d| (e, d.clone()));
        }
        self.images.range((rank, 0)..=(rank, u64::MAX)).next_back().map(|(&(_, e), d)| (e, d.clone()))
    }

    /// Keeps the image of the latest complete epoch and the newest [`KEEP_NEWER`] after it (or,
    /// before any epoch is complete, the newest `KEEP_NEWER + 1`); older ones go.
    fn prune(&mut self, rank: u32) {
        let epochs: Vec<u64> = self.images.range((rank, 0)..=(rank, u64::MAX)).map(|((_, e), _)| *e).collect();
        let newer: Vec<u64> = epochs.iter().copied().filter(|&e| self.complete.map_or(true, |c| e > c)).collect();
        let keep_newer = if self.complete.is_some() { KEEP_NEWER } else { KEEP_NEWER + 1 };
        let cut_newer = newer.len().saturating_sub(keep_newer);
        for &e in &epochs {
            let old = self.complete.is_some_and(|c| e < c);
            let crowded = newer[..cut_newer].contains(&e);
            if old || crowded {
                self.images.remove(&(rank, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn img(b: &[u8]) -> Bytes {
        Arc::new(b.to_vec())
    }

    #[test]
    fn job_scope_is_the_latest_complete_epoch_and_rank_scope_the_latest() {
        let mut s = Store::default();
        assert_eq!(s.get(0, false), None, "a first start finds nothing");
        s.put(0, 1, img(b"a1"));
        s.put(0, 2, img(b"a2"));
        assert_eq!(s.get(0, true), None, "nothing complete yet");
        assert_eq!(s.get(0, false).map(|(e, _)| e), Some(2));
        s.set_complete(1);
        assert_eq!(s.get(0, true), Some((1, img(b"a1"))));
        s.set_complete(0);
        assert_eq!(s.complete, Some(1), "an older announcement changes nothing");
        assert_eq!(s.get(1, true), None, "another rank's image is its own");
    }

    #[test]
    fn older_epochs_go_once_a_newer_one_is_complete() {
        let mut s = Store::default();
        for e in 0..10 {
            s.put(3, e, img(&[e as u8]));
        }
        assert_eq!(s.images.len(), KEEP_NEWER + 1, "bounded before anything is complete");
        s.set_complete(9);
        assert_eq!(s.images.keys().copied().collect::<Vec<_>>(), vec![(3, 9)]);
    }

    #[test]
    fn a_new_generation_forgets_the_epochs_after_the_complete_one() {
        let mut s = Store::default();
        for e in 1..=4 {
            s.put(0, e, img(&[e as u8]));
        }
        s.put(1, 2, img(b"b"));
        s.set_complete(2);
        s.new_generation();
        assert_eq!(s.get(0, false).map(|(e, _)| e), Some(2), "3 and 4 are gone");
        assert_eq!(s.get(1, true).map(|(e, _)| e), Some(2));
        let mut none = Store::default();
        none.put(0, 1, img(b"x"));
        none.new_generation();
        assert_eq!(none.get(0, false), None, "nothing complete: the job starts afresh");
    }

    proptest! {
        /// Whatever the order of saves and completions: a rank's newest image (unless older than
        /// the complete epoch) and the complete epoch's image while it is among the newest are
        /// kept, and memory stays bounded.
        #[test]
        fn the_newest_and_complete_images_stay_and_memory_is_bounded(ops in proptest::collection::vec((0u32..3, 0u64..30, any::<bool>()), 1..80)) {
            let mut s = Store::default();
            let mut newest = std::collections::BTreeMap::new();
            for (rank, epoch, complete) in ops {
                if complete {
                    s.set_complete(epoch);
                } else {
                    s.put(rank, epoch, img(&[rank as u8]));
                    let n = newest.entry(rank).or_insert(epoch);
                    *n = (*n).max(epoch);
                }
                for (&r, &e) in &newest {
                    if s.complete.map_or(true, |c| e >= c) {
                        prop_assert_eq!(s.get(r, false).map(|(got, _)| got), Some(e));
                    }
                    if s.complete == Some(e) {
                        prop_assert!(s.get(r, true).is_some(), "rank {} lost complete epoch {}", r, e);
                    }
                }
                for r in 0..3u32 {
                    prop_assert!(s.images.range((r, 0)..=(r, u64::MAX)).count() <= KEEP_NEWER + 1);
                }
            }
        }
    }
}
