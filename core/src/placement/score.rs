//! Scoring: among feasible candidates, prefer the agent left most fully used (bin-packing).
//!
//! Packing tasks tightly keeps whole agents free for the large tasks that arrive later and for
//! draining hosts; spreading is the job of limit constraints, not of the scorer.

use crate::model::Resources;

/// Fixed-point unit of one fully used dimension. Integers keep the score exact and therefore
/// deterministic across machines.
pub const SCORE_DIMENSION_FULL: u64 = 1 << 16;

/// Bin-packing score of an agent of capacity `total` that would have `free_after` left once the
/// task is placed: the sum over cpu, ram and disk of the used fraction (each in
/// `0..=SCORE_DIMENSION_FULL`). Higher is better. A dimension the agent does not have (total 0)
/// adds nothing, so it cannot favour or penalise anyone. Ports are left out: they are a count of
/// slots, not a quantity whose fragmentation matters.
#[inline]
pub fn score_binpack(total: &Resources, free_after: &Resources) -> u64 {
    used_fraction(total.cpu_millis, free_after.cpu_millis)
        + used_fraction(total.ram_mib, free_after.ram_mib)
        + used_fraction(total.disk_mib, free_after.disk_mib)
}

#[inline]
fn used_fraction(total: u32, free: u32) -> u64 {
    if total == 0 {
        return 0;
    }
    // `free` can exceed `total` only through a caller's inconsistent upsert; clamp rather than
    // wrap so the score stays in range.
    let used = u64::from(total.saturating_sub(free));
    used * SCORE_DIMENSION_FULL / u64::from(total)
}

/// True when a candidate with `score` and `id` beats the incumbent: higher score first, then the
/// lowest agent id, so the choice never depends on scan order among equals.
#[inline]
pub fn better(score: u64, id: u64, best_score: u64, best_id: u64) -> bool {
    score > best_score || (score == best_score && id < best_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu_millis: u32, ram_mib: u32, disk_mib: u32) -> Resources {
        Resources {
            cpu_millis,
            ram_mib,
            disk_mib,
            ports: 0,
        }
    }

    fn check(total: Resources, free_after: Resources, expected: u64) {
        assert_eq!(
            score_binpack(&total, &free_after),
            expected,
            "total {total:?} free_after {free_after:?}"
        );
    }

    const FULL: u64 = SCORE_DIMENSION_FULL;

    #[test]
    fn score_table() {
        // Empty agent after placement scores 0, a full one scores one unit per dimension.
        check(res(1000, 1000, 1000), res(1000, 1000, 1000), 0);
        check(res(1000, 1000, 1000), res(0, 0, 0), 3 * FULL);
        // Half of cpu used, nothing else.
        check(res(1000, 1000, 1000), res(500, 1000, 1000), FULL / 2);
        // A dimension the agent lacks contributes nothing.
        check(res(1000, 1000, 0), res(0, 0, 0), 2 * FULL);
        // Inconsistent free > total clamps to zero use.
        check(res(1000, 1000, 1000), res(2000, 1000, 1000), 0);
    }

    #[test]
    fn fuller_agent_scores_higher() {
        let small_left = score_binpack(&res(4000, 4096, 0), &res(500, 512, 0));
        let large_left = score_binpack(&res(4000, 4096, 0), &res(3000, 3072, 0));
        assert!(small_left > large_left);
    }

    #[test]
    fn ties_break_to_lowest_id() {
        assert!(better(10, 5, 9, 1));
        assert!(better(10, 1, 10, 5));
        assert!(!better(10, 5, 10, 1));
        assert!(!better(9, 0, 10, 5));
    }
}
