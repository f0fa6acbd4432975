//! The placement chain: candidate source (pool, then buckets tightest first) → feasibility
//! filters → bin-packing score over a bounded candidate set → consume on the winner.

use crate::model::Constraint;
use crate::model::{Resources, TaskConfig};

use super::filters::{fits_resources, limit_ok, satisfies_constraints, CompiledTask, JobSpread};
use super::index::SHARED_POOL;
use super::index::{cpu_class, ram_class, AgentId, ColumnView, PlacementIndex, CLASS_COUNT};
use super::score::{better, score_binpack};

/// Feasible candidates scored per placement. Buckets are visited tightest first, so the first
/// few feasible agents are already near the best fit; scoring more buys little packing and
/// costs linear time.
pub const CANDIDATES_MAX: u32 = 8;

/// Agents examined before the search settles for the best feasible one found so far. Bounds the
/// cost of a placement when constraints reject most agents. When nothing feasible has been found
/// yet the search goes on to exhaustion, so `place` answers `None` only when no agent in the
/// index can take the task.
pub const EXAMINED_SOFT_MAX: u32 = 64;

/// Search state of one placement.
struct Scan<'a> {
    rejected: Option<&'a mut Vec<u32>>,
    found: u32,
    examined: u32,
    best_score: u64,
    best_id: u64,
    best_slot: u32,
}

impl Scan<'_> {
    fn new(rejected: Option<&mut Vec<u32>>) -> Scan<'_> {
        Scan {
            rejected,
            found: 0,
            examined: 0,
            best_score: 0,
            best_id: u64::MAX,
            best_slot: u32::MAX,
        }
    }

    #[inline]
    fn reject(&mut self, slot: u32) {
        if let Some(rejected) = self.rejected.as_deref_mut() {
            rejected.push(slot);
        }
    }

    #[inline]
    fn done(&self) -> bool {
        self.found >= CANDIDATES_MAX || (self.found > 0 && self.examined >= EXAMINED_SOFT_MAX)
    }
}

impl PlacementIndex {
    /// Compiles a task configuration against this index's interner. Do it once per job, not
    /// per instance.
    pub fn compile(&mut self, config: &TaskConfig) -> CompiledTask {
        self.compile_parts(&config.resources, &config.constraints)
    }

    /// [`compile`](PlacementIndex::compile) from the two fields placement reads.
    pub fn compile_parts(
        &mut self,
        resources: &Resources,
        constraints: &[Constraint],
    ) -> CompiledTask {
        let task = CompiledTask::compile(&mut self.names, &mut self.values, resources, constraints);
        // Constraints may name attributes no agent has yet: give them (empty) columns so the
        // scan can index every compiled attribute without a bounds branch failing.
        let attr_count = self.names.len();
        while self.columns.len() < attr_count {
            self.columns.push(vec![u32::MAX; self.slots.len()]);
        }
        task
    }

    /// The agent `place` would choose, without consuming anything: the best-scoring feasible
    /// agent among a bounded set of candidates, ties to the lowest id.
    pub fn pick(&self, task: &CompiledTask, spread: &JobSpread) -> Option<AgentId> {
        self.search(task, spread, None)
            .map(|slot| self.slots[slot as usize].id)
    }

    /// Places one instance: picks an agent (see [`pick`](PlacementIndex::pick)) and consumes
    /// the task's resources there. Does not touch `spread`: the caller adds the task to it when
    /// it commits the assignment (or uses [`place_batch`](PlacementIndex::place_batch)).
    pub fn place(&mut self, task: &CompiledTask, spread: &JobSpread) -> Option<AgentId> {
        let slot = self.search(task, spread, None)?;
        self.consume_slot(slot, &task.resources);
        Some(self.slots[slot as usize].id)
    }

    /// Places up to `count` instances of one job, counting each in `spread` as it goes so limit
    /// constraints see the earlier ones. Appends the chosen agents to `out` and returns how many
    /// were placed; stops at the first instance that fits nowhere (the rest would not either:
    /// nothing changed). Equivalent to `count` calls of [`place`](PlacementIndex::place) with
    /// the spread updated in between, except that parking may reorder agents within a bucket and
    /// so which near-equal candidate the bounded search meets first.
    ///
    /// Faster than that loop: within one batch an agent that fails a filter keeps failing it
    /// (constraints are fixed, nothing is released, limit counts only grow), so the batch parks
    /// each rejected agent out of the buckets until it ends. Every agent is rejected at most once
    /// per batch; without this, a job limited to one instance per host would re-examine all of
    /// its earlier hosts (the tightest, so scanned first) for each instance: quadratic.
    pub fn place_batch(
        &mut self,
        task: &CompiledTask,
        spread: &mut JobSpread,
        count: usize,
        out: &mut Vec<AgentId>,
    ) -> usize {
        let mut parked = std::mem::take(&mut self.parked);
        debug_assert!(parked.is_empty());
        let mut placed = 0;
        while placed < count {
            let newly_parked = parked.len();
            let chosen = self.search(task, spread, Some(&mut parked));
            for &slot in &parked[newly_parked..] {
                self.unlink(slot);
            }
            let Some(slot) = chosen else {
                break;
            };
            self.consume_slot(slot, &task.resources);
            if !task.limits.is_empty() {
                spread.add_attributes(self.slot_attribute_ids(slot));
            }
            out.push(self.slots[slot as usize].id);
            placed += 1;
        }
        for &slot in &parked {
            self.link(slot);
        }
        parked.clear();
        self.parked = parked;
        placed
    }

    /// The chosen slot; appends every agent that failed a filter to `rejected` when given.
    fn search(
        &self,
        task: &CompiledTask,
        spread: &JobSpread,
        rejected: Option<&mut Vec<u32>>,
    ) -> Option<u32> {
        let mut scan = Scan::new(rejected);
        match &task.dedicated {
            None => {
                self.scan_pool(SHARED_POOL, task, spread, &mut scan);
            }
            Some(values) => {
                for value in values.iter() {
                    if let Some(&pool) = self.dedicated_pools.get(value) {
                        if self.scan_pool(pool, task, spread, &mut scan) {
                            break;
                        }
                    }
                }
            }
        }
        (scan.found > 0).then_some(scan.best_slot)
    }

    /// Visits the pool's buckets that may hold the task in order of increasing distance
    /// `(c - cn) + (r - rn)` from the task's own classes: the tightest fits first. Returns true
    /// when the scan has enough candidates.
    fn scan_pool(
        &self,
        pool: u32,
        task: &CompiledTask,
        spread: &JobSpread,
        scan: &mut Scan,
    ) -> bool {
        let pool = &self.pools[pool as usize];
        let need_cpu = cpu_class(task.resources.cpu_millis);
        let need_ram = ram_class(task.resources.ram_mib);
        let top = CLASS_COUNT - 1;
        // Only cpu classes >= need_cpu with a bucket at ram class >= need_ram matter. Their
        // nearest and farthest non-empty buckets bound the distances worth visiting, so the
        // walk skips the (often many) empty diagonals between the task's class and the agents.
        let mut columns = pool.columns & (u32::MAX << need_cpu);
        let mut remaining = columns;
        let mut distance_min = u32::MAX;
        let mut distance_max = 0;
        while remaining != 0 {
            let c = remaining.trailing_zeros();
            remaining &= remaining - 1;
            let rows = pool.rows[c as usize] >> need_ram;
            if rows == 0 {
                columns &= !(1 << c);
                continue;
            }
            let offset = c - need_cpu;
            distance_min = distance_min.min(offset + rows.trailing_zeros());
            distance_max = distance_max.max(offset + (u32::BITS - 1 - rows.leading_zeros()));
        }
        if columns == 0 {
            return false;
        }
        for distance in distance_min..=distance_max {
            // c - need_cpu + r - need_ram = distance, with r <= top.
            let c_low = need_cpu + distance.saturating_sub(top - need_ram);
            let c_high = (need_cpu + distance).min(top);
            if c_low > c_high {
                continue;
            }
            let mut candidates = columns & range_mask(c_low, c_high);
            while candidates != 0 {
                let c = candidates.trailing_zeros();
                candidates &= candidates - 1;
                let r = need_ram + distance - (c - need_cpu);
                if pool.rows[c as usize] >> r & 1 == 0 {
                    continue;
                }
                let bucket = &pool.buckets[(c * CLASS_COUNT + r) as usize];
                if self.scan_bucket(bucket, task, spread, scan) {
                    return true;
                }
            }
        }
        false
    }

    #[inline]
    fn scan_bucket(
        &self,
        bucket: &[u32],
        task: &CompiledTask,
        spread: &JobSpread,
        scan: &mut Scan,
    ) -> bool {
        let need = &task.resources;
        for &slot in bucket {
            scan.examined += 1;
            let record = &self.slots[slot as usize];
            if fits_resources(&record.free, need) {
                let view = ColumnView {
                    columns: &self.columns,
                    slot: slot as usize,
                };
                if satisfies_constraints(task, &view) && limit_ok(task, spread, &view) {
                    let score = score_binpack(&record.total, &record.free.minus(need));
                    scan.found += 1;
                    if better(score, record.id.0, scan.best_score, scan.best_id) || scan.found == 1
                    {
                        scan.best_score = score;
                        scan.best_id = record.id.0;
                        scan.best_slot = slot;
                    }
                } else {
                    scan.reject(slot);
                }
            } else {
                scan.reject(slot);
            }
            if scan.done() {
                return true;
            }
        }
        false
    }
}

/// Bits `low..=high` set.
#[inline]
fn range_mask(low: u32, high: u32) -> u32 {
    debug_assert!(low <= high && high < u32::BITS);
    (u32::MAX >> (u32::BITS - 1 - high)) & (u32::MAX << low)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_mask_table() {
        assert_eq!(range_mask(0, 0), 1);
        assert_eq!(range_mask(0, 31), u32::MAX);
        assert_eq!(range_mask(3, 5), 0b111000);
        assert_eq!(range_mask(31, 31), 1 << 31);
    }
}
