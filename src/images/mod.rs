//! Recovery images (issue 17), the parts that do no I/O: which daemons hold a node's images
//! ([`partners`]), a daemon's in-memory store ([`store::Store`]), the front end's account of the
//! epochs ([`epochs::Epochs`]), how images are put together from the pieces they travel in ([`Assembly`]) and the layout of
//! `--image-dir` ([`dir`]). The rank side and the rank ↔ daemon wire are the `rlaunch_image`
//! crate (fabrics/image); the daemon's sockets are `daemon::images`.

pub mod dir;
pub mod epochs;
pub mod store;

use crate::wire::Msg;

/// Image bytes per tree message: well under the wire's frame limit, small enough that other
/// traffic on a link (output, PMI) interleaves with a large image.
pub const CHUNK: usize = 1 << 20;

/// The daemons besides `node` that hold copies of its ranks' images: the next `copies - 1` nodes
/// after it, wrapping around, among the job's `nodes` (spare daemons, numbered after them, never
/// are partners). Every daemon and the front end compute the same answer from the map.
pub fn partners(node: u32, nodes: u32, copies: u32) -> Vec<u32> {
    if nodes == 0 || node >= nodes {
        return Vec::new();
    }
    let n = copies.saturating_sub(1).min(nodes - 1);
    (1..=n).map(|i| ((node as u64 + i as u64) % nodes as u64) as u32).collect()
}

/// The job's own nodes, the ones that hold images: spare daemons (`--spare`, the last nodes of
/// the list) are not among them.
pub fn job_nodes(launch: &crate::wire::Launch) -> u32 {
    (launch.nodes.len() as u32).saturating_sub(launch.node_loss.spares)
}

/// The nodes that hold images of `node`'s ranks, `node` first.
pub fn holders(node: u32, nodes: u32, copies: u32) -> Vec<u32> {
    std::iter::once(node).chain(partners(node, nodes, copies)).collect()
}

/// Pieces of one image as they arrive, in order (one tree path keeps them so).
#[derive(Debug, Default)]
pub struct Assembly {
    data: Vec<u8>,
    total: u64,
}

impl Assembly {
    /// Adds a piece; the whole image once the last one came. A piece out of place starts over
    /// (a sender that restarted its image).
    pub fn add(&mut self, total: u64, offset: u64, piece: &[u8]) -> Option<Vec<u8>> {
        if offset == 0 {
            self.data = Vec::with_capacity(total.min(1 << 32) as usize);
            self.total = total;
        } else if offset != self.data.len() as u64 || total != self.total {
            self.data.clear();
            self.total = u64::MAX;
            return None;
        }
        self.data.extend_from_slice(piece);
        (self.data.len() as u64 == self.total).then(|| std::mem::take(&mut self.data))
    }
}

/// Messages of the image service that travel between daemons: routed by node, passing the front
/// end between subtrees.
pub fn is_routed(m: &Msg) -> Option<u32> {
    match m {
        Msg::ImageCopy { to, .. } | Msg::ImageFetch { to, .. } | Msg::ImageFetched { to, .. } => Some(*to),
        _ => None,
    }
}

/// Every image message, for the loops' dispatch.
pub fn is_image_msg(m: &Msg) -> bool {
    matches!(
        m,
        Msg::ImageRequest { .. }
            | Msg::ImageComplete { .. }
            | Msg::ImageStored { .. }
            | Msg::ImageRefused { .. }
            | Msg::ImageTimedOut { .. }
            | Msg::ImageCopy { .. }
            | Msg::ImageFetch { .. }
            | Msg::ImageFetched { .. }
    )
}

/// `bytes` for people: 1.5 MiB, 300 B.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partners_are_the_next_nodes_wrapping_around() {
        assert_eq!(partners(0, 4, 2), vec![1]);
        assert_eq!(partners(3, 4, 2), vec![0]);
        assert_eq!(partners(2, 4, 3), vec![3, 0]);
        assert_eq!(partners(0, 1, 2), Vec::<u32>::new(), "one node: no partner");
        assert_eq!(partners(1, 3, 9), vec![2, 0], "never more than the other nodes");
        assert_eq!(partners(5, 4, 2), Vec::<u32>::new(), "a spare (after the job's nodes) is no holder");
    }

    #[test]
    fn pieces_reassemble_and_a_gap_starts_over() {
        let data: Vec<u8> = (0..(2 * CHUNK + 5)).map(|i| i as u8).collect();
        let mut a = Assembly::default();
        let mut whole = None;
        for (i, piece) in data.chunks(CHUNK).enumerate() {
            assert_eq!(whole, None, "whole only with the last piece");
            whole = a.add(data.len() as u64, (i * CHUNK) as u64, piece);
        }
        assert_eq!(whole.as_deref(), Some(&data[..]));
        let mut a = Assembly::default();
        assert_eq!(a.add(10, 0, b"abc"), None);
        assert_eq!(a.add(10, 5, b"fghij"), None, "a gap");
        assert_eq!(a.add(10, 8, b"ij"), None, "still nothing after the gap");
        assert_eq!(a.add(0, 0, b""), Some(Vec::new()), "an empty image is whole at once");
    }

    proptest! {
        #[test]
        fn partners_are_distinct_other_job_nodes(nodes in 1u32..50, copies in 1u32..8, node in 0u32..60) {
            let p = partners(node, nodes, copies);
            let mut seen = std::collections::BTreeSet::new();
            for &q in &p {
                prop_assert!(q < nodes && q != node && seen.insert(q));
            }
            if node < nodes {
                prop_assert_eq!(p.len() as u32, (copies.max(1) - 1).min(nodes - 1));
            }
        }
    }
}
