//! Lost nodes at the front end (issue 17): what losing a node means for the job. A node is lost
//! when its link closes (its daemon died), when its heartbeat probes go unanswered for
//! `--heartbeat-timeout` (the node or its network is down), when a node below it reconnected above it, or when its
//! parent was lost and it did not reconnect in time. Its children reconnect to their nearest
//! live ancestor (tree repair; every daemon is told `Msg::NodeGone` and routes around it).
//!
//! A lost node whose ranks were still running ends the job, with a line naming the node and
//! why; a node without ranks (a spare, or one whose ranks had all ended) is one line and the job
//! goes on. No I/O: the loop carries out the effects.

use super::daemons::Daemons;
use super::effect::Effect;
use super::ranks::Ranks;
use super::verdict::Failure;
use crate::heartbeat;
use crate::job::JobView;
use crate::tree::Router;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How a node was found lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// Its link (to the front end or to its parent daemon) closed: the daemon died.
    LinkClosed,
    /// Its link to the front end failed otherwise (a read error, a rejected frame): why.
    LinkBroken(String),
    /// Its link's heartbeat probes went unanswered for this many milliseconds.
    Silent { ms: u32 },
    /// Node `child`, below it, lost its link to it and reconnected above it.
    Bypassed { child: u32 },
    /// Its parent `parent` was lost and it did not reconnect within the grace time.
    NotReconnected { parent: u32 },
}

impl How {
    /// Why, for the line about the loss (`name`: a node's name in the node list).
    pub fn why(&self, name: impl Fn(u32) -> String) -> String {
        match self {
            How::LinkClosed => "daemon lost: link closed".into(),
            How::LinkBroken(why) => format!("link lost: {why}"),
            How::Silent { ms } => heartbeat::silent_why(*ms),
            How::Bypassed { child } => format!("node {} lost its link to it", name(*child)),
            How::NotReconnected { parent } => format!("did not reconnect after node {} was lost", name(*parent)),
        }
    }

    /// How it was detected, for the report.
    pub fn name(&self) -> &'static str {
        match self {
            How::LinkClosed | How::LinkBroken(_) => "link_closed",
            How::Silent { .. } => "heartbeat",
            How::Bypassed { .. } => "child_reconnected_above",
            How::NotReconnected { .. } => "not_reconnected",
        }
    }
}

/// Where a lost node's running ranks go when they are restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// This spare takes the node's place.
    Spare(u32),
    /// The other nodes' free slots take them; these nodes (every lost one) take none.
    Relocate(Vec<u32>),
}

/// One lost node, for the report.
#[derive(Clone, Debug)]
pub struct LostNode {
    pub node: u32,
    pub at_ms: f64,
    pub how: How,
    pub why: String,
    pub had_ranks: bool,
    pub ended_job: bool,
    pub replaced_by: Option<u32>,
}

/// One tree repair: `node` reconnected to `at` (None: the front end).
#[derive(Clone, Debug)]
pub struct Rejoin {
    pub node: u32,
    pub at: Option<u32>,
    pub at_ms: f64,
    /// The nodes it found gone on the way.
    pub lost: Vec<u32>,
}

/// What the service looks at, lent by the loop for one call.
pub struct Ctx<'a> {
    pub job: &'a JobView,
    pub ranks: &'a Ranks,
    pub daemons: &'a mut Daemons,
    /// The front end's router: who is lost already.
    pub router: &'a Router,
    /// The job is ending: losses are no news.
    pub terminating: bool,
    /// Ranks may be restarted (`--max-restarts`): a spare replaces a lost node.
    pub restarts: bool,
    pub now: Instant,
    pub t0: Instant,
}

impl Ctx<'_> {
    fn ms(&self) -> f64 {
        self.now.saturating_duration_since(self.t0).as_secs_f64() * 1000.0
    }
}

#[derive(Debug)]
pub struct NodeLoss {
    /// The spare nodes (`--spare`): the last ones of the node list.
    spares: std::ops::Range<u32>,
    pub lost: Vec<LostNode>,
    pub rejoins: Vec<Rejoin>,
    /// Children of lost nodes that have not reconnected yet: until when they may, and whose
    /// loss cut them off.
    awaiting: BTreeMap<u32, (Instant, u32)>,
    /// How long a cut-off node gets to reconnect.
    grace: Duration,
    /// The node list's names as the job began: a replaced node's entry names its spare's host
    /// later, but what was lost is said by its own name.
    names: Vec<String>,
}

impl NodeLoss {
    pub fn new(job: &JobView) -> NodeLoss {
        let n = job.topology().nnodes();
        let spares = n.saturating_sub(job.launch().node_loss.spares)..n;
        // A child notices its parent's loss at most one heartbeat timeout after the front end,
        // then tries each ancestor for a few seconds.
        let grace = Duration::from_millis(job.launch().node_loss.silence_ms.into()) + Duration::from_secs(10);
        let names = (0..n).map(|i| job.node_name(i)).collect();
        NodeLoss { spares, lost: Vec::new(), rejoins: Vec::new(), awaiting: BTreeMap::new(), grace, names }
    }

    /// Node `n`'s name in the node list as the job began.
    pub fn name(&self, n: u32) -> String {
        self.names.get(n as usize).cloned().unwrap_or_else(|| format!("#{n}"))
    }

    pub fn is_spare(&self, node: u32) -> bool {
        self.spares.contains(&node)
    }

    /// The spares and what became of them, for the report: `(node, lost, replacing)`.
    pub fn spares(&self) -> Vec<(u32, bool, Option<u32>)> {
        self.spares
            .clone()
            .map(|s| (s, self.lost.iter().any(|l| l.node == s), self.lost.iter().find(|l| l.replaced_by == Some(s)).map(|l| l.node)))
            .collect()
    }

    /// Node `node` is lost (`how`): the tree routes around it, its children are given time to
    /// reconnect above it, and the job ends if ranks of it were still running.
    pub fn lose(&mut self, node: u32, how: How, cx: &mut Ctx) -> Vec<Effect> {
        let Some(d) = cx.daemons.get_mut(node).filter(|d| !d.lost) else { return Vec::new() };
        d.lost = true;
        let done = d.done;
        self.awaiting.remove(&node);
        let mut below = Router::new(*cx.job.topology(), Some(node));
        cx.router.lost().iter().for_each(|&l| _ = below.lose(l));
        for c in below.children() {
            if cx.daemons.get(c).is_some_and(|d| !d.done && !d.lost) {
                self.awaiting.insert(c, (cx.now + self.grace, node));
            }
        }
        let ranks = cx.job.map().ranks_on(cx.job.map_node_of(node).unwrap_or(node));
        let unfinished: Vec<u32> = ranks.iter().copied().filter(|&r| cx.ranks.status(r).is_none()).collect();
        let running = !done && !unfinished.is_empty();
        let why = how.why(|n| self.name(n));
        // With restarts, a free spare takes the node's place, else the others' free slots its
        // ranks; the policy decides the rest.
        let to = (running && !cx.terminating && cx.restarts).then(|| self.takeover(node, cx)).flatten();
        let by = match to {
            Some(Takeover::Spare(s)) => Some(s),
            _ => None,
        };
        let ended_job = running && !cx.terminating && to.is_none();
        self.lost.push(LostNode { node, at_ms: cx.ms(), how, why: why.clone(), had_ranks: !ranks.is_empty(), ended_job, replaced_by: by });
        let mut fx = vec![Effect::Lose(node)];
        if cx.terminating {
            return fx;
        }
        if running {
            let why = match to {
                None if cx.restarts => format!("{why}; no spare is free (--spare) and the other nodes have no free slot for its ranks"),
                _ => why,
            };
            let failure = Failure::LinkLost { node, why, more: Vec::new() };
            fx.push(match to {
                Some(to) => Effect::NodeLost { node, to, ranks: unfinished, failure },
                None => Effect::Fail(failure),
            });
        } else {
            let what = if self.is_spare(node) {
                "a spare"
            } else if ranks.is_empty() {
                "no ranks"
            } else {
                "its ranks had ended"
            };
            fx.push(Effect::Say(format!("rlaunch: node {} lost ({why}; {what}); the job goes on", self.name(node))));
        }
        fx
    }

    /// Where lost `node`'s ranks go: the first spare that is neither lost nor replacing a node
    /// already, else the other nodes' free slots when they fit.
    fn takeover(&self, node: u32, cx: &Ctx) -> Option<Takeover> {
        let spare = self.spares.clone().find(|&s| !cx.router.is_lost(s) && cx.daemons.get(s).is_some_and(|d| d.joined && !d.lost) && !self.lost.iter().any(|l| l.replaced_by == Some(s) || l.node == s));
        if let Some(s) = spare {
            return Some(Takeover::Spare(s));
        }
        let mut closed: Vec<u32> = cx.router.lost().iter().copied().chain(self.lost.iter().map(|l| l.node)).collect();
        closed.sort_unstable();
        closed.dedup();
        let slots: Vec<(u32, Option<u32>)> = cx.job.launch().nodes.iter().map(|n| (n.slots, n.max_slots)).collect();
        launchers::map::relocate(cx.job.map(), &slots, &[node], &closed, cx.job.launch().node_loss.spares).map(|_| Takeover::Relocate(closed))
    }

    /// `node` reconnected to `at` (None: the front end), finding `lost` gone on the way.
    pub fn rejoined(&mut self, node: u32, at: Option<u32>, lost: Vec<u32>, cx: &mut Ctx) -> Vec<Effect> {
        let cut_by = self.awaiting.remove(&node).map(|(_, p)| p);
        let mut fx = Vec::new();
        for &b in &lost {
            fx.extend(self.lose(b, How::Bypassed { child: node }, cx));
        }
        let name = |n: Option<u32>| n.map_or_else(|| "the front end".to_string(), |n| format!("node {}", self.name(n)));
        let gone: Vec<String> = lost.iter().copied().chain(cut_by).map(|n| self.name(n)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let line = format!("rlaunch: node {} reconnected to {} after losing {} (tree repair)", self.name(node), name(at), gone.join(", "));
        fx.push(Effect::Detail(1, line));
        self.rejoins.push(Rejoin { node, at, at_ms: cx.ms(), lost });
        // The job began to end while it was cut off: it missed the word.
        if cx.terminating {
            fx.push(Effect::Towards(node, crate::wire::Msg::Terminate));
        }
        fx
    }

    /// Cut-off nodes whose time to reconnect ran out are lost.
    pub fn check(&mut self, cx: &mut Ctx) -> Vec<Effect> {
        let mut fx = Vec::new();
        let late: Vec<(u32, u32)> = self.awaiting.iter().filter(|(_, (at, _))| cx.now >= *at).map(|(&n, &(_, p))| (n, p)).collect();
        for (n, parent) in late {
            self.awaiting.remove(&n);
            fx.extend(self.lose(n, How::NotReconnected { parent }, cx));
        }
        fx
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.awaiting.values().map(|(at, _)| *at).min()
    }
}

/// Lost `node`'s running `ranks` go where `to` says, in the front end's map and every daemon's
/// (each recomputes it from one message): "node k is now host X" for a spare, or the others'
/// free slots. Returns the line to say and the ranks by the node that now runs them, for the
/// restart policy.
pub fn take_over(node: u32, to: Takeover, ranks: Vec<u32>, job: &mut JobView, links: &mut crate::links::Links, daemons: &Daemons) -> (Vec<Effect>, Vec<(u32, Vec<u32>)>) {
    match to {
        Takeover::Spare(by) => {
            let host = daemons.get(by).map(|d| d.hostname.clone()).filter(|h| !h.is_empty()).unwrap_or_else(|| job.node_name(by));
            let line = format!("rlaunch: node {} is now host {host} (spare {})", job.node_name(node), job.node_name(by));
            job.replace(node, by, &host);
            links.down(&crate::wire::Msg::Replace { node, by, host });
            (vec![Effect::Say(line)], vec![(by, ranks)])
        }
        Takeover::Relocate(closed) => {
            let name = job.node_name(node);
            job.relocate(node, &closed);
            links.down(&crate::wire::Msg::NodeRelocate { node, closed });
            let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            for r in ranks {
                groups.entry(job.node_of_rank(r).unwrap_or(node)).or_default().push(r);
            }
            let to: Vec<String> = groups.iter().map(|(n, rs)| format!("{} on {}", rs.len(), job.node_name(*n))).collect();
            let line = format!("rlaunch: node {name}'s ranks go to free slots of other nodes: {}", to.join(", "));
            (vec![Effect::Say(line)], groups.into_iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AppContext, RankStatus};

    fn job(nnodes: u32, np: u32, spares: u32) -> JobView {
        let app = AppContext { argv: vec!["x".into()], env: Vec::new(), cwd: "/".into(), np: Some(np), nodes: None, without_job_env: false };
        let mut l = crate::job::fixture::launch("rl-t", nnodes, 2, vec![app]);
        l.node_loss.spares = spares;
        let map = crate::job::compute_map(&l).unwrap();
        JobView::for_front_end(Box::new(l), map)
    }

    fn lines(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Say(l) | Effect::Detail(_, l) => Some(l.clone()),
                Effect::Fail(f) => Some(format!("fail: {f:?}")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_spare_is_one_line_and_a_node_with_ranks_ends_the_job() {
        // 5 nodes of 2 slots, fan-out 2 (FE -> 0,1; 0 -> 2,3; 1 -> 4), node 4 a spare, 8 ranks.
        let j = job(5, 8, 1);
        let ranks = Ranks::new(8);
        let mut daemons = Daemons::new(*j.topology(), (0..5).map(|i| format!("n{i}")).collect());
        let router = Router::new(*j.topology(), None);
        let t0 = Instant::now();
        let mut l = NodeLoss::new(&j);
        let cx = &mut Ctx { job: &j, ranks: &ranks, daemons: &mut daemons, router: &router, terminating: false, restarts: false, now: t0, t0 };
        let fx = l.lose(4, How::Silent { ms: 5000 }, cx);
        assert!(matches!(fx[0], Effect::Lose(4)));
        assert_eq!(lines(&fx), ["rlaunch: node n4 lost (no heartbeat for 5 s; a spare); the job goes on"]);
        assert!(l.lose(4, How::LinkClosed, cx).is_empty(), "once");
        let fx = l.lose(3, How::LinkClosed, cx);
        assert_eq!(lines(&fx), ["fail: LinkLost { node: 3, why: \"daemon lost: link closed\", more: [] }"]);
        assert_eq!(l.spares(), [(4, true, None)]);
        assert_eq!(l.lost.iter().map(|x| (x.node, x.how.name(), x.ended_job)).collect::<Vec<_>>(), [(4, "heartbeat", false), (3, "link_closed", true)]);
    }

    #[test]
    fn children_of_a_lost_node_reconnect_or_are_lost_in_time() {
        let j = job(5, 10, 0);
        let mut ranks = Ranks::new(10);
        ranks.started(&(0..10).map(|r| (r, 100 + r)).collect::<Vec<_>>());
        // Node 0's ranks (0, 1) ended: losing it ends nothing.
        ranks.exited(0, RankStatus::Exited(0));
        ranks.exited(1, RankStatus::Exited(0));
        let mut daemons = Daemons::new(*j.topology(), (0..5).map(|i| format!("n{i}")).collect());
        daemons.get_mut(0).unwrap().done = true;
        let mut router = Router::new(*j.topology(), None);
        let t0 = Instant::now();
        let mut l = NodeLoss::new(&j);
        let cx = &mut Ctx { job: &j, ranks: &ranks, daemons: &mut daemons, router: &router, terminating: false, restarts: false, now: t0, t0 };
        assert_eq!(lines(&l.lose(0, How::LinkClosed, cx)), ["rlaunch: node n0 lost (daemon lost: link closed; its ranks had ended); the job goes on"]);
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(15)));
        assert_eq!(lines(&l.rejoined(2, None, Vec::new(), cx)), ["rlaunch: node n2 reconnected to the front end after losing n0 (tree repair)"]);
        router.lose(0);
        let later = t0 + Duration::from_secs(16);
        let cx = &mut Ctx { job: &j, ranks: &ranks, daemons: &mut daemons, router: &router, terminating: false, restarts: false, now: later, t0 };
        let fx = l.check(cx);
        assert_eq!(lines(&fx), ["fail: LinkLost { node: 3, why: \"did not reconnect after node n0 was lost\", more: [] }"]);
        assert_eq!(l.next_deadline(), None);
        assert_eq!(l.rejoins.len(), 1);
    }
}
