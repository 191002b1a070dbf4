//! A set of byte ranges of one stream, merged where they overlap or touch.
//!
//! The send buffer keeps the ranges it must send again in one, reassembly
//! the pieces that arrived beyond the in-order prefix in another: the one
//! place range merging is written (quinn-proto's `RangeSet` plays the same
//! part).

use std::collections::BTreeMap;

/// Disjoint, non-touching half-open ranges `start..end`, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    pub fn first(&self) -> Option<(u64, u64)> {
        self.0.first_key_value().map(|(&s, &e)| (s, e))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }

    /// True if `start..end` would overlap or touch a range already held
    /// (so inserting it adds no new range).
    pub fn touches(&self, start: u64, end: u64) -> bool {
        self.0
            .range(..=end)
            .next_back()
            .is_some_and(|(_, &e)| e >= start)
    }

    /// Adds `start..end`, merging it with every range it overlaps or
    /// touches; returns the merged range that now holds it.
    pub fn insert(&mut self, mut start: u64, mut end: u64) -> (u64, u64) {
        if start >= end {
            return (start, start);
        }
        while let Some((&s, &e)) = self.0.range(..=end).next_back() {
            if e < start {
                break;
            }
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
        (start, end)
    }

    /// Removes the range that starts at `start` (as returned by
    /// [`RangeSet::insert`] or [`RangeSet::first`]).
    pub fn remove_range(&mut self, start: u64) -> Option<u64> {
        self.0.remove(&start)
    }

    /// Takes up to `max` bytes from the front of the first range.
    pub fn pop_front(&mut self, max: u64) -> Option<(u64, u64)> {
        let (s, e) = self.first()?;
        self.0.remove(&s);
        let end = e.min(s + max);
        if end < e {
            self.0.insert(end, e);
        }
        Some((s, end))
    }

    /// Forgets everything below `at`.
    pub fn remove_below(&mut self, at: u64) {
        while let Some((s, e)) = self.first() {
            if s >= at {
                break;
            }
            self.0.remove(&s);
            if e > at {
                self.0.insert(at, e);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_overlapping_and_touching() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.len(), 2);
        assert!(r.touches(20, 25) && r.touches(25, 30) && !r.touches(21, 29));
        assert_eq!(r.insert(20, 30), (10, 40));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(r.insert(0, 5), (0, 5));
        assert_eq!(r.insert(3, 100), (0, 100));
        assert_eq!(r.total(), 100);
        assert_eq!(r.insert(7, 7), (7, 7), "empty ranges add nothing");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn pops_and_trims() {
        let mut r = RangeSet::new();
        r.insert(0, 10);
        r.insert(20, 30);
        assert_eq!(r.pop_front(4), Some((0, 4)));
        assert_eq!(r.first(), Some((4, 10)));
        r.remove_below(25);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(25, 30)]);
        assert_eq!(r.pop_front(100), Some((25, 30)));
        assert_eq!(r.pop_front(1), None);
    }

    /// Against a bitmap model, with random ranges.
    #[test]
    fn agrees_with_a_bitmap() {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let mut r = RangeSet::new();
            let mut bits = [false; 128];
            for _ in 0..20 {
                let s = rng.random_range(0..120u64);
                let e = s + rng.random_range(0..9u64);
                r.insert(s, e);
                (s..e).for_each(|i| bits[i as usize] = true);
                if rng.random_range(0..5) == 0 {
                    let at = rng.random_range(0..128u64);
                    r.remove_below(at);
                    (0..at).for_each(|i| bits[i as usize] = false);
                }
            }
            let mut want = Vec::new();
            let mut i = 0;
            while i < 128 {
                if bits[i] {
                    let s = i;
                    while i < 128 && bits[i] {
                        i += 1;
                    }
                    want.push((s as u64, i as u64));
                }
                i += 1;
            }
            assert_eq!(r.iter().collect::<Vec<_>>(), want);
        }
    }
}
