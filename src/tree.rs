//! The daemon overlay tree, computed from node rank alone so that every daemon and the front end
//! agree without talking. Tree index 0 is the front end; node rank `n` has tree index `n + 1`; the
//! parent of index `t` is `(t - 1) / k`. The front end therefore has nodes `0..k` as direct children.

pub fn parent_of(node: u32, fanout: u32) -> Option<u32> {
    let t = node as u64 + 1;
    let p = (t - 1) / fanout.max(1) as u64;
    if p == 0 {
        None
    } else {
        Some((p - 1) as u32)
    }
}

/// Children of `parent` (None = the front end) among `nnodes` nodes.
pub fn children_of(parent: Option<u32>, fanout: u32, nnodes: u32) -> std::ops::Range<u32> {
    let k = fanout.max(1) as u64;
    let t = parent.map_or(0, |n| n as u64 + 1);
    let first_t = t * k + 1;
    let last_t = (first_t + k).min(nnodes as u64 + 1);
    let lo = (first_t - 1).min(nnodes as u64) as u32;
    let hi = (last_t.max(first_t) - 1).min(nnodes as u64) as u32;
    lo..hi
}

/// Whether `node` is `ancestor` or lies below it.
pub fn in_subtree(ancestor: u32, node: u32, fanout: u32) -> bool {
    let mut cur = Some(node);
    while let Some(n) = cur {
        if n == ancestor {
            return true;
        }
        if n < ancestor {
            return false;
        }
        cur = parent_of(n, fanout);
    }
    false
}

/// Depth of the tree below the front end (1 = every daemon is a direct child).
pub fn depth(nnodes: u32, fanout: u32) -> u32 {
    (0..nnodes).map(|n| {
        let mut d = 1;
        let mut cur = parent_of(n, fanout);
        while let Some(p) = cur {
            d += 1;
            cur = parent_of(p, fanout);
        }
        d
    }).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_trees() {
        assert_eq!(children_of(None, 2, 7), 0..2);
        assert_eq!(children_of(Some(0), 2, 7), 2..4);
        assert_eq!(children_of(Some(1), 2, 7), 4..6);
        assert_eq!(children_of(Some(2), 2, 7), 6..7);
        assert_eq!(children_of(Some(3), 2, 7), 7..7);
        assert_eq!(parent_of(0, 2), None);
        assert_eq!(parent_of(5, 2), Some(1));
        assert_eq!(depth(8, 2), 3);
        assert_eq!(depth(256, 4), 4);
        assert_eq!(depth(1, 32), 1);
        assert!(in_subtree(0, 6, 2) && !in_subtree(1, 6, 2) && in_subtree(2, 6, 2));
    }

    proptest! {
        #[test]
        fn every_node_is_child_of_its_parent(n in 1u32..2000, k in 1u32..40) {
            let mut seen = vec![0u32; n as usize];
            for p in std::iter::once(None).chain((0..n).map(Some)) {
                for c in children_of(p, k, n) {
                    prop_assert_eq!(parent_of(c, k), p);
                    seen[c as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&s| s == 1));
        }
    }
}
