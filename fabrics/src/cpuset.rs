//! A set of CPU ids with the kernel's list syntax (`0-3,8-11`), as sysfs and `Cpus_allowed_list`
//! print it. On the wire it travels as ranges, so a whole 256-CPU node costs a few bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sorted, without duplicates.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuSet(Vec<u32>);

impl CpuSet {
    pub fn new() -> Self {
        CpuSet(Vec::new())
    }

    /// Parses the kernel's list format (`0-3,8,10-11`, an empty string or `\n` is the empty set).
    pub fn parse_list(s: &str) -> Option<CpuSet> {
        let s = s.trim();
        let mut out = Vec::new();
        if s.is_empty() {
            return Some(CpuSet(out));
        }
        for part in s.split(',') {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                    // A reversed or absurd range is a corrupt file, not a million CPUs.
                    if b < a || b - a > 1 << 20 {
                        return None;
                    }
                    out.extend(a..=b);
                }
                None => out.push(part.parse().ok()?),
            }
        }
        Some(CpuSet::from_iter(out))
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.binary_search(&cpu).is_ok()
    }

    pub fn insert(&mut self, cpu: u32) {
        if let Err(i) = self.0.binary_search(&cpu) {
            self.0.insert(i, cpu);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn first(&self) -> Option<u32> {
        self.0.first().copied()
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.iter().copied().filter(|c| other.contains(*c)).collect())
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet::from_iter(self.iter().chain(other.iter()))
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.iter().copied().filter(|c| !other.contains(*c)).collect())
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.iter().all(|c| other.contains(c))
    }

    pub fn intersects(&self, other: &CpuSet) -> bool {
        self.iter().any(|c| other.contains(c))
    }

    /// Inclusive runs of consecutive ids.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for c in self.iter() {
            match out.last_mut() {
                Some((_, hi)) if *hi + 1 == c => *hi = c,
                _ => out.push((c, c)),
            }
        }
        out
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut v: Vec<u32> = iter.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        CpuSet(v)
    }
}

/// The kernel's list syntax, so what `--report-bindings` prints compares equal to
/// `Cpus_allowed_list` in `/proc/PID/status`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.ranges().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ranges = Vec::<(u32, u32)>::deserialize(d)?;
        let mut out = Vec::new();
        for (lo, hi) in ranges {
            if hi < lo || hi - lo > 1 << 20 {
                return Err(serde::de::Error::custom(format!("bad CPU range {lo}-{hi}")));
            }
            out.extend(lo..=hi);
        }
        Ok(CpuSet::from_iter(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kernel_list_syntax() {
        let s = CpuSet::parse_list("0-3,8,10-11\n").unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s.to_string(), "0-3,8,10-11");
        assert_eq!(CpuSet::parse_list("\n").unwrap(), CpuSet::new());
        assert_eq!(CpuSet::parse_list("3-1"), None);
        assert_eq!(CpuSet::parse_list("a"), None);
        assert_eq!(CpuSet::parse_list("1,,2"), None);
    }

    proptest! {
        #[test]
        fn display_parses_back_and_wire_round_trips(v in proptest::collection::vec(0u32..300, 0..64)) {
            let s = CpuSet::from_iter(v);
            prop_assert_eq!(CpuSet::parse_list(&s.to_string()), Some(s.clone()));
            let bytes = postcard::to_allocvec(&s).unwrap();
            prop_assert_eq!(postcard::from_bytes::<CpuSet>(&bytes).unwrap(), s);
        }
    }
}
