//! Port numbers for a task on an agent: the lowest free numbers of the agent's ranges.
//!
//! Pure: the home shard keeps which numbers its agent's tasks hold and asks here for the next
//! ones, so the rule is the same in the runtime and the simulation and is tested alone.

use std::collections::BTreeSet;

/// The `count` lowest port numbers of `ranges` (inclusive `(begin, end)` pairs, in the agent's
/// order) not in `used`; `None` when the ranges do not hold that many free numbers. Ranges with
/// `begin > end` hold nothing.
pub fn assign_ports(ranges: &[(u16, u16)], used: &BTreeSet<u16>, count: usize) -> Option<Vec<u16>> {
    let mut assigned = Vec::with_capacity(count);
    if count == 0 {
        return Some(assigned);
    }
    for &(begin, end) in ranges {
        for port in begin..=end {
            if !used.contains(&port) && !assigned.contains(&port) {
                assigned.push(port);
                if assigned.len() == count {
                    return Some(assigned);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ranges: &[(u16, u16)], used: &[u16], count: usize, expected: Option<&[u16]>) {
        let used: BTreeSet<u16> = used.iter().copied().collect();
        assert_eq!(
            assign_ports(ranges, &used, count).as_deref(),
            expected,
            "ranges {ranges:?}, used {used:?}, count {count}"
        );
    }

    #[test]
    fn lowest_free_numbers_of_the_ranges_in_order() {
        check(&[(31000, 31002)], &[], 2, Some(&[31000, 31001]));
        check(&[(31000, 31002)], &[31000], 2, Some(&[31001, 31002]));
        check(
            &[(31000, 31001), (32000, 32001)],
            &[31001],
            2,
            Some(&[31000, 32000]),
        );
        check(&[(31000, 31001)], &[31000], 2, None);
        check(&[(31000, 31001)], &[], 0, Some(&[]));
        check(&[], &[], 1, None);
        // An empty (reversed) range holds nothing; overlapping ranges never repeat a number.
        check(&[(5, 4), (10, 10)], &[], 1, Some(&[10]));
        check(&[(10, 11), (10, 12)], &[], 3, Some(&[10, 11, 12]));
        check(&[(u16::MAX, u16::MAX)], &[], 1, Some(&[u16::MAX]));
    }
}
