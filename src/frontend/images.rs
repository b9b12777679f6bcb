//! The front end's part of recovery images (issue 17): the account of epochs (which rank saved
//! which, on how many nodes; `crate::images::epochs`), announcing complete epochs to every
//! daemon, `--image-interval` requests, the lines for refused and late images, and routing
//! image traffic between subtrees. Returns effects; the loop carries them out.

use super::effect::Effect;
use super::verdict::fmt_secs;
use crate::images::epochs::Epochs;
use crate::images::{self, size};
use crate::job::JobView;
use crate::wire::Msg;
use std::time::{Duration, Instant};

pub struct RootImages {
    epochs: Epochs,
    spec: crate::spec::ImageSpec,
    next_request: Option<Instant>,
}

impl RootImages {
    pub fn new(job: &JobView, now: Instant) -> RootImages {
        let spec = job.launch().image.clone();
        let next_request = spec.interval_ms.map(|ms| now + Duration::from_millis(ms));
        RootImages { epochs: Epochs::new(job.map().size()), spec, next_request }
    }

    /// An image message from a daemon; `at_ms` since rlaunch started.
    pub fn on_msg(&mut self, job: &JobView, m: Msg, at_ms: f64) -> Vec<Effect> {
        if let Some(to) = images::is_routed(&m) {
            // Between subtrees.
            return vec![Effect::Towards(to, m)];
        }
        match m {
            Msg::ImageStored { rank, epoch, node, bytes } => match self.epochs.stored(rank, epoch, node, bytes, at_ms) {
                Some(e) => std::iter::once(Effect::Down(Msg::ImageComplete { epoch: e }))
                    .chain(self.epochs.complete_line(e).map(|l| Effect::Detail(1, l)))
                    .collect(),
                None => Vec::new(),
            },
            Msg::ImageRefused { rank, node, bytes, limit } if self.epochs.refused(rank) => vec![Effect::Say(format!(
                "rlaunch: rank {rank} on {}: an image of {} exceeds --image-max {}; not saved (rli_save returns RLI_ETOOBIG; a larger --image-max keeps it), the job goes on",
                job.node_name(node),
                size(bytes),
                size(limit)
            ))],
            Msg::ImageTimedOut { rank, node, epoch } => {
                let first = self.epochs.timed_out(rank, epoch);
                let keeps = self.epochs.latest_complete().map_or_else(|| "no complete epoch yet".to_string(), |e| format!("epoch {e}"));
                let line = format!(
                    "rlaunch: rank {rank} on {} did not answer image request {epoch} within {} (--image-timeout; does it call rli_poll?); the job keeps {keeps}",
                    job.node_name(node),
                    fmt_secs(Duration::from_millis(self.spec.timeout_ms))
                );
                // Said once per rank; the later ones at -v and in the report.
                vec![if first { Effect::Say(line) } else { Effect::Detail(1, line) }]
            }
            _ => Vec::new(),
        }
    }

    /// A job-scope restart, when `RestartJob` goes down once restarts is merged (the
    /// images-with-restarts branch shows where): the epochs after the latest complete one will
    /// be saved again by the new processes.
    pub fn new_generation(&mut self) {
        self.epochs.new_generation();
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.next_request
    }

    /// `--image-interval`: a round of requests when one is due.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let (Some(at), Some(ms)) = (self.next_request, self.spec.interval_ms) else { return Vec::new() };
        if now < at {
            return Vec::new();
        }
        self.next_request = Some(now + Duration::from_millis(ms));
        self.epochs.requests += 1;
        vec![Effect::Down(Msg::ImageRequest { epoch: self.epochs.requests })]
    }

    pub fn report(&self) -> serde_json::Value {
        self.epochs.report(&self.spec)
    }

    pub fn summary(&self) -> Vec<String> {
        self.epochs.summary()
    }
}
