//! Every rank's pid and exit status as the front end learns them, and the facts the verdict words
//! its lines with.

use super::verdict::Facts;
use crate::job::JobView;
use crate::spec::RankStatus;

pub struct Ranks {
    pid: Vec<u32>,
    status: Vec<Option<RankStatus>>,
    exited: usize,
}

impl Ranks {
    pub fn new(size: usize) -> Ranks {
        Ranks { pid: vec![0; size], status: vec![None; size], exited: 0 }
    }

    pub fn len(&self) -> usize {
        self.pid.len()
    }

    pub fn pid(&self, rank: u32) -> u32 {
        self.pid.get(rank as usize).copied().unwrap_or(0)
    }

    pub fn status(&self, rank: u32) -> Option<RankStatus> {
        self.status.get(rank as usize).copied().flatten()
    }

    pub fn started(&mut self, pids: &[(u32, u32)]) {
        for &(r, p) in pids {
            if let Some(slot) = self.pid.get_mut(r as usize) {
                *slot = p;
            }
        }
    }

    /// Records `rank`'s exit; false for a rank out of range or already reported.
    pub fn exited(&mut self, rank: u32, status: RankStatus) -> bool {
        match self.status.get_mut(rank as usize) {
            Some(slot @ None) => {
                *slot = Some(status);
                self.exited += 1;
                true
            }
            _ => false,
        }
    }

    /// `rank` is started again: no exit status and no pid until its `Started`.
    pub fn restarting(&mut self, rank: u32) {
        if let Some(slot) = self.status.get_mut(rank as usize) {
            if slot.take().is_some() {
                self.exited -= 1;
            }
            self.pid[rank as usize] = 0;
        }
    }

    /// Every rank is started again (a job restart).
    pub fn restarting_all(&mut self) {
        (0..self.len() as u32).for_each(|r| self.restarting(r));
    }

    pub fn all_running(&self) -> bool {
        self.pid.iter().all(|&p| p != 0)
    }

    pub fn running_count(&self) -> usize {
        self.pid.iter().filter(|&&p| p != 0).count()
    }

    pub fn all_reported(&self) -> bool {
        self.exited == self.status.len()
    }

    /// Ranks with no exit status yet.
    pub fn unreported(&self) -> usize {
        self.status.len() - self.exited
    }
}

/// The job's names and the ranks' pids, for the verdict's lines.
pub struct JobFacts<'a> {
    pub job: &'a JobView,
    pub ranks: &'a Ranks,
}

/// `-print-all-exitcodes`' lines.
pub fn all_exit_codes(job: &JobView, ranks: &Ranks) -> Vec<String> {
    let facts = JobFacts { job, ranks };
    super::verdict::all_exit_codes((0..ranks.len() as u32).map(|r| ranks.status(r)), &facts)
}

impl JobFacts<'_> {
    fn rank_node(&self, rank: u32) -> Option<u32> {
        self.job.node_of_rank(rank)
    }
}

impl Facts for JobFacts<'_> {
    fn rank_label(&self, rank: u32) -> String {
        format!("rank {rank} (pid {} on {})", self.ranks.pid(rank), self.rank_host(rank))
    }

    fn rank_host(&self, rank: u32) -> String {
        self.rank_node(rank).map_or_else(|| "?".into(), |n| self.node_name(n))
    }

    fn rank_program(&self, rank: u32) -> String {
        let app = self.job.map().get(rank).map_or(0, |p| p.app as usize);
        self.job.launch().apps.get(app).and_then(|a| a.argv.first()).cloned().unwrap_or_default()
    }

    fn rank_dir(&self, rank: u32) -> String {
        let app = self.job.map().get(rank).map_or(0, |p| p.app as usize);
        self.job.launch().apps.get(app).map(|a| a.cwd.clone()).unwrap_or_default()
    }

    fn node_name(&self, node: u32) -> String {
        self.job.node_name(node)
    }

    fn running(&self) -> usize {
        self.ranks.unreported()
    }
}
