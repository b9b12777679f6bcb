//! The front end's account of the images: which rank saved which epoch, on how many nodes, and
//! when an epoch became complete (every rank saved it). Pure; the report and the `ImageComplete`
//! announcements come from here.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Epochs listed in the report, the newest: a long job saves many.
const REPORTED: usize = 1000;
/// Epochs this far behind the latest complete one are summed up: their copies have arrived by
/// then (or never will), and a long job would otherwise keep ranks × epochs of detail.
const DETAILED: u64 = 16;

#[derive(Debug, Default)]
struct Epoch {
    /// Each rank that saved it: the nodes that hold its image, and its size. Emptied into
    /// `sums` once it is [`DETAILED`] epochs behind the latest complete one.
    ranks: BTreeMap<u32, (BTreeSet<u32>, u64)>,
    sums: Option<Sums>,
    /// When the first image of it was stored (ms since rlaunch started).
    first_ms: f64,
    complete_ms: Option<f64>,
}

/// What the report says of an epoch.
#[derive(Debug, Clone, PartialEq)]
struct Sums {
    ranks: usize,
    bytes: u64,
    /// The fewest nodes any rank's image is on.
    copies: usize,
    nodes: BTreeSet<u32>,
}

impl Epoch {
    fn sums(&self) -> Sums {
        if let Some(s) = &self.sums {
            return s.clone();
        }
        Sums {
            ranks: self.ranks.len(),
            bytes: self.ranks.values().map(|(_, b)| b).sum(),
            copies: self.ranks.values().map(|(nodes, _)| nodes.len()).min().unwrap_or(0),
            nodes: self.ranks.values().flat_map(|(n, _)| n.iter().copied()).collect(),
        }
    }
}

#[derive(Debug)]
pub struct Epochs {
    size: u32,
    epochs: BTreeMap<u64, Epoch>,
    /// Refused saves (over `--image-max`) per rank.
    refused: BTreeMap<u32, u32>,
    /// Requests not answered in time per rank: how many, and the last round.
    timeouts: BTreeMap<u32, (u32, u64)>,
    /// Rounds of `--image-interval` requests sent.
    pub requests: u64,
}

impl Epochs {
    pub fn new(size: u32) -> Epochs {
        Epochs { size, epochs: BTreeMap::new(), refused: BTreeMap::new(), timeouts: BTreeMap::new(), requests: 0 }
    }

    /// `node` holds rank `rank`'s image of `epoch`. Returns the epoch when this made it complete.
    pub fn stored(&mut self, rank: u32, epoch: u64, node: u32, bytes: u64, at_ms: f64) -> Option<u64> {
        if rank >= self.size {
            return None;
        }
        let e = self.epochs.entry(epoch).or_insert_with(|| Epoch { first_ms: at_ms, ..Epoch::default() });
        if e.sums.is_some() {
            // Summed up already: a late copy of an old epoch changes nothing that matters.
            return None;
        }
        let r = e.ranks.entry(rank).or_default();
        r.0.insert(node);
        r.1 = bytes;
        if e.complete_ms.is_some() || e.ranks.len() as u32 != self.size {
            return None;
        }
        e.complete_ms = Some(at_ms);
        for old in self.epochs.range_mut(..epoch.saturating_sub(DETAILED)).map(|(_, e)| e).filter(|e| e.sums.is_none()) {
            old.sums = Some(old.sums());
            old.ranks = BTreeMap::new();
        }
        Some(epoch)
    }

    /// Counts a refused save; true for the rank's first (the one said).
    pub fn refused(&mut self, rank: u32) -> bool {
        let n = self.refused.entry(rank).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Counts a request not answered in time; true for the rank's first (the one said).
    pub fn timed_out(&mut self, rank: u32, round: u64) -> bool {
        let t = self.timeouts.entry(rank).or_insert((0, round));
        *t = (t.0 + 1, round);
        t.0 == 1
    }

    /// The `-v` line for `epoch` once complete.
    pub fn complete_line(&self, epoch: u64) -> Option<String> {
        let e = self.epochs.get(&epoch)?;
        let s = e.sums();
        let took = e.complete_ms? - e.first_ms;
        Some(format!("rlaunch: image epoch {epoch} is complete: {} ranks, {}, {took:.1} ms from its first image to its last", s.ranks, super::size(s.bytes)))
    }

    /// A job-scope restart (see `Store::new_generation`): the epochs after the latest complete
    /// one are saved again from scratch.
    pub fn new_generation(&mut self) {
        let keep = self.latest_complete();
        self.epochs.retain(|&e, _| keep.is_some_and(|c| e <= c));
    }

    /// The latest complete epoch.
    pub fn latest_complete(&self) -> Option<u64> {
        self.epochs.iter().rev().find(|(_, e)| e.complete_ms.is_some()).map(|(k, _)| *k)
    }

    /// The `images` object of the report.
    pub fn report(&self, spec: &crate::spec::ImageSpec) -> Value {
        let epochs: Vec<Value> = self
            .epochs
            .iter()
            .skip(self.epochs.len().saturating_sub(REPORTED))
            .map(|(k, e)| {
                let s = e.sums();
                json!({
                    "epoch": k,
                    "complete": e.complete_ms.is_some(),
                    "ranks": s.ranks,
                    "bytes": s.bytes,
                    "copies": s.copies,
                    "nodes": s.nodes,
                    "first_ms": e.first_ms,
                    "complete_ms": e.complete_ms,
                })
            })
            .collect();
        json!({
            "copies": spec.copies,
            "max_bytes": spec.max,
            "dir": spec.dir,
            "interval_ms": spec.interval_ms,
            "timeout_ms": spec.timeout_ms,
            "requests": self.requests,
            "latest_complete": self.latest_complete(),
            "epochs_total": self.epochs.len(),
            "epochs": epochs,
            "refused": self.refused.iter().map(|(r, n)| json!({"rank": r, "count": n})).collect::<Vec<_>>(),
            "timeouts": self.timeouts.iter().map(|(r, (n, last))| json!({"rank": r, "count": n, "last_round": last})).collect::<Vec<_>>(),
        })
    }

    /// `-v` at the end: a line for the images as a whole, then one per epoch for the last few.
    pub fn summary(&self) -> Vec<String> {
        const LAST: usize = 3;
        if self.epochs.is_empty() {
            return Vec::new();
        }
        let complete = self.epochs.values().filter(|e| e.complete_ms.is_some()).count();
        let latest = self.latest_complete().map_or_else(|| "none".to_string(), |e| e.to_string());
        let head = format!("rlaunch: images: {} epochs, {complete} complete, latest complete {latest}", self.epochs.len());
        let tail = self.epochs.iter().skip(self.epochs.len().saturating_sub(LAST)).map(|(k, e)| {
            let s = e.sums();
            let state = if e.complete_ms.is_some() { "complete" } else { "incomplete" };
            format!("rlaunch: image epoch {k}: {state}, {} of {} ranks, {}, copies {}", s.ranks, self.size, super::size(s.bytes), s.copies)
        });
        std::iter::once(head).chain(tail).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_complete_once_every_rank_saved_it() {
        let mut e = Epochs::new(2);
        assert_eq!(e.stored(0, 1, 0, 10, 1.0), None);
        assert_eq!(e.stored(0, 1, 1, 10, 1.5), None, "a partner's copy is no new rank");
        assert_eq!(e.stored(1, 2, 1, 10, 2.0), None);
        assert_eq!(e.stored(1, 1, 1, 10, 3.0), Some(1));
        assert_eq!(e.stored(1, 1, 0, 10, 3.5), None, "complete once");
        assert_eq!(e.latest_complete(), Some(1));
        assert_eq!(e.stored(7, 1, 0, 10, 4.0), None, "a rank outside the job");
        let r = e.report(&crate::spec::ImageSpec::default());
        assert_eq!(r["epochs"][0]["copies"], 2);
        assert_eq!(r["epochs"][0]["nodes"], json!([0, 1]));
        assert_eq!(r["epochs"][1]["complete"], false);
        assert!(e.refused(1) && !e.refused(1), "said once per rank");
        assert!(e.timed_out(0, 4) && !e.timed_out(0, 5) && e.timed_out(1, 5), "said once per rank");
        assert_eq!(e.report(&crate::spec::ImageSpec::default())["timeouts"][0], json!({"rank": 0, "count": 2, "last_round": 5}));
    }

    #[test]
    fn a_new_generation_counts_the_later_epochs_afresh() {
        let mut e = Epochs::new(2);
        e.stored(0, 1, 0, 1, 0.0);
        e.stored(1, 1, 0, 1, 0.0);
        e.stored(0, 2, 0, 1, 0.0);
        e.new_generation();
        assert_eq!(e.stored(1, 2, 0, 1, 1.0), None, "rank 0's epoch 2 was of the past generation");
        assert_eq!(e.stored(0, 2, 0, 1, 1.0), Some(2));
    }

    #[test]
    fn older_epochs_are_summed_up_once_a_newer_one_is_complete() {
        let mut e = Epochs::new(2);
        for (rank, node) in [(0, 0), (1, 1), (0, 1)] {
            e.stored(rank, 1, node, 5, 1.0);
        }
        e.stored(0, 0, 0, 7, 0.5);
        let before = e.report(&crate::spec::ImageSpec::default());
        e.stored(0, 2, 0, 5, 2.0);
        assert_eq!(e.stored(1, 2, 1, 5, 2.0), Some(2));
        assert!(!e.epochs[&1].ranks.is_empty(), "a recent epoch keeps its detail: copies may still come");
        let far = 2 + DETAILED;
        e.stored(0, far, 0, 5, 2.0);
        assert_eq!(e.stored(1, far, 1, 5, 2.0), Some(far));
        assert!(e.epochs[&1].ranks.is_empty() && e.epochs[&0].ranks.is_empty(), "the detail of older epochs is gone");
        let after = e.report(&crate::spec::ImageSpec::default());
        assert_eq!(before["epochs"][0], after["epochs"][0], "and the report says the same of them");
        assert_eq!(before["epochs"][1], after["epochs"][1]);
        assert_eq!(e.stored(1, 0, 0, 7, 3.0), None, "a summed-up epoch no longer completes");
    }
}
