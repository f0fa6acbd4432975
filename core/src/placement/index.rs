//! The placement index: the offers one shard owns, kept ready for fast candidate search.
//!
//! Layout, and why:
//! - Agents live in dense slots (`Vec<Slot>`); an `AgentId -> slot` map is used only at the API
//!   boundary. The scan reads slots sequentially by index, never through the map.
//! - Attributes are stored by column (`columns[attr][slot]`), so a constraint check is one array
//!   read, and adding an attribute name costs one column, not one field per agent.
//! - Agents are partitioned into pools: one shared pool and one pool per dedicated value, so a
//!   dedicated job scans only its agents and an ordinary job never sees dedicated ones.
//! - Within a pool, agents sit in buckets keyed by the class of their free cpu and free ram
//!   (a 32 x 32 grid, two classes per power of two). A task jumps straight to the buckets that can
//!   hold it, and the tightest buckets come first, which is what bin-packing wants. Two bitmaps
//!   (rows per cpu class, one for non-empty cpu classes) skip empty buckets without touching them.
//! - consume / release move an agent between buckets only when its class changes: O(1) with a
//!   swap-remove and a stored position.

use crate::model::{Attributes, Resources, DEDICATED_ATTRIBUTE};

use super::filters::{AttributeLookup, DEDICATED_ATTR};
use super::intern::{AttrId, FxHashMap, Interner, ValueId};

/// A globally unique agent number, chosen by the caller (the agent registry), so an offer keeps
/// its identity when it is lent to another shard. 64 bits: the registry packs its shard in the
/// top byte and a registration count below it that never wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub u64);

/// Free-resource classes per dimension; a power of two no larger than 32 so one `u32` holds a
/// row of the bucket grid.
pub(super) const CLASS_COUNT: u32 = 32;
const _: () = assert!(CLASS_COUNT <= u32::BITS);
/// cpu is classed in units of 8 millicores: 32 classes cover up to 2^16 units = 524 cores.
const CPU_CLASS_SHIFT: u32 = 3;
/// ram is classed in units of 16 MiB: 32 classes cover up to 2^16 units = 1 TiB.
const RAM_CLASS_SHIFT: u32 = 4;

/// Class of a quantity: two classes per power of two (`[2^k, 1.5 * 2^k)` and `[1.5 * 2^k,
/// 2^(k+1))`), saturating at the top. Monotonic, which is all correctness needs: an agent whose
/// class is below the task's cannot fit, one in the same class might, one above does.
#[inline]
pub(super) fn class_of(units: u32) -> u32 {
    if units < 2 {
        return units;
    }
    let octave = u32::BITS - 1 - units.leading_zeros();
    let upper_half = (units >> (octave - 1)) & 1;
    (2 * octave + upper_half).min(CLASS_COUNT - 1)
}

#[inline]
pub(super) fn cpu_class(cpu_millis: u32) -> u32 {
    class_of(cpu_millis >> CPU_CLASS_SHIFT)
}

#[inline]
pub(super) fn ram_class(ram_mib: u32) -> u32 {
    class_of(ram_mib >> RAM_CLASS_SHIFT)
}

#[inline]
fn bucket_of(free: &Resources) -> u16 {
    // At most 32 * 32 - 1, so the narrowing is exact.
    (cpu_class(free.cpu_millis) * CLASS_COUNT + ram_class(free.ram_mib)) as u16
}

/// Marks a slot that holds no agent (free for reuse).
pub(super) const POOL_NONE: u32 = u32::MAX;
/// Column entry of an agent that lacks the attribute.
const VALUE_NONE: u32 = u32::MAX;

/// The hot per-agent record, read by every scan.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) id: AgentId,
    pub(super) free: Resources,
    pub(super) total: Resources,
    /// Index into `pools`, or `POOL_NONE` for an empty slot.
    pub(super) pool: u32,
    /// `cpu_class * CLASS_COUNT + ram_class` of `free`.
    bucket: u16,
    /// Position within the bucket's vector, for O(1) removal.
    position: u32,
}

/// One partition of agents (shared, or one dedicated value) bucketed by free-resource class.
#[derive(Clone, Debug)]
pub(super) struct Pool {
    /// `CLASS_COUNT * CLASS_COUNT` buckets of slot numbers; a bucket allocates on first use.
    pub(super) buckets: Vec<Vec<u32>>,
    /// Bit `r` of `rows[c]` is set when bucket `(c, r)` is non-empty.
    pub(super) rows: [u32; CLASS_COUNT as usize],
    /// Bit `c` is set when `rows[c] != 0`.
    pub(super) columns: u32,
    len: u32,
}

impl Pool {
    fn new() -> Pool {
        Pool {
            buckets: vec![Vec::new(); (CLASS_COUNT * CLASS_COUNT) as usize],
            rows: [0; CLASS_COUNT as usize],
            columns: 0,
            len: 0,
        }
    }
}

/// A view of one slot's attributes through the columns: what the filters read on the hot path.
#[derive(Clone, Copy)]
pub(super) struct ColumnView<'a> {
    pub(super) columns: &'a [Vec<u32>],
    pub(super) slot: usize,
}

impl AttributeLookup for ColumnView<'_> {
    #[inline]
    fn value(&self, attr: AttrId) -> Option<ValueId> {
        let value = *self.columns.get(attr.0 as usize)?.get(self.slot)?;
        (value != VALUE_NONE).then_some(ValueId(value))
    }
}

/// An agent's offer as the index holds it: identity, capacity, what is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentOffer {
    pub id: AgentId,
    pub total: Resources,
    pub free: Resources,
}

/// Everything a peer shard needs to re-create a lent offer with
/// [`PlacementIndex::upsert_agent`]: attributes travel as strings because interned ids are
/// local to each index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LentAgent {
    pub id: AgentId,
    pub attributes: Attributes,
    pub total: Resources,
    pub free: Resources,
}

/// The offers one shard owns, indexed for placement. See the module docs for the layout.
///
/// Deterministic: the state after a sequence of calls depends only on that sequence. Hash maps
/// are used for lookups only, never iterated.
#[derive(Clone, Debug)]
pub struct PlacementIndex {
    pub(super) names: Interner,
    pub(super) values: Interner,
    pub(super) slots: Vec<Slot>,
    /// Per slot, the agent's interned attributes in registration order (lending, spreads).
    slot_attributes: Vec<Vec<(AttrId, ValueId)>>,
    /// `columns[attr][slot]`: the value id, or `VALUE_NONE`.
    pub(super) columns: Vec<Vec<u32>>,
    by_id: FxHashMap<AgentId, u32>,
    /// Empty slots, reused last-in first-out.
    vacant: Vec<u32>,
    /// `pools[0]` is the shared pool; the others each hold one dedicated value.
    pub(super) pools: Vec<Pool>,
    pub(super) dedicated_pools: FxHashMap<ValueId, u32>,
    /// Slots taken out of their buckets for the length of one `place_batch` (empty between
    /// calls); kept here so batches do not allocate.
    pub(super) parked: Vec<u32>,
}

/// Index of the pool of agents without a dedicated attribute.
pub(super) const SHARED_POOL: u32 = 0;

impl Default for PlacementIndex {
    fn default() -> PlacementIndex {
        PlacementIndex::new()
    }
}

impl PlacementIndex {
    pub fn new() -> PlacementIndex {
        let mut index = PlacementIndex {
            names: Interner::default(),
            values: Interner::default(),
            slots: Vec::new(),
            slot_attributes: Vec::new(),
            columns: Vec::new(),
            by_id: FxHashMap::default(),
            vacant: Vec::new(),
            pools: vec![Pool::new()],
            dedicated_pools: FxHashMap::default(),
            parked: Vec::new(),
        };
        let dedicated = index.intern_name(DEDICATED_ATTRIBUTE);
        assert_eq!(
            dedicated, DEDICATED_ATTR,
            "dedicated must be the first attribute"
        );
        index
    }

    /// Number of agents held.
    pub fn agent_count(&self) -> usize {
        self.by_id.len()
    }

    /// Adds an agent's offer, or replaces everything known about it (attributes, capacity, free
    /// resources) when it re-registers or re-reports.
    pub fn upsert_agent(
        &mut self,
        id: AgentId,
        attributes: &Attributes,
        total: Resources,
        free: Resources,
    ) {
        debug_assert!(
            total.contains(&free),
            "agent {id:?}: free {free:?} exceeds total {total:?}"
        );
        let interned = self.intern_attributes(attributes);
        let slot = match self.by_id.get(&id) {
            Some(&slot) => {
                self.unlink(slot);
                self.clear_columns(slot);
                slot
            }
            None => {
                let slot = self.allocate_slot();
                self.by_id.insert(id, slot);
                slot
            }
        };
        let index = slot as usize;
        for (attr, value) in &interned {
            self.columns[attr.0 as usize][index] = value.0;
        }
        let view = ColumnView {
            columns: &self.columns,
            slot: index,
        };
        let pool = match view.value(DEDICATED_ATTR) {
            None => SHARED_POOL,
            Some(value) => self.dedicated_pool(value),
        };
        self.slot_attributes[index] = interned;
        let record = &mut self.slots[index];
        record.id = id;
        record.total = total;
        record.free = free;
        record.pool = pool;
        self.link(slot);
    }

    /// Removes an agent (gone, or lent to a peer) and returns its free resources.
    pub fn remove_agent(&mut self, id: AgentId) -> Option<Resources> {
        let slot = self.by_id.remove(&id)?;
        self.unlink(slot);
        self.clear_columns(slot);
        self.slot_attributes[slot as usize].clear();
        let record = &mut self.slots[slot as usize];
        record.pool = POOL_NONE;
        let free = record.free;
        self.vacant.push(slot);
        Some(free)
    }

    /// Removes an agent and returns what a peer needs to re-create its offer.
    pub fn take_agent_for_lending(&mut self, id: AgentId) -> Option<LentAgent> {
        let attributes = self.attributes(id)?;
        let total = self.slots[self.by_id[&id] as usize].total;
        let free = self.remove_agent(id)?;
        Some(LentAgent {
            id,
            attributes,
            total,
            free,
        })
    }

    /// The agent's free resources.
    pub fn free(&self, id: AgentId) -> Option<Resources> {
        self.by_id
            .get(&id)
            .map(|&slot| self.slots[slot as usize].free)
    }

    /// The agent's capacity.
    pub fn total(&self, id: AgentId) -> Option<Resources> {
        self.by_id
            .get(&id)
            .map(|&slot| self.slots[slot as usize].total)
    }

    /// The agent's attributes as strings, in registration order (one per name).
    pub fn attributes(&self, id: AgentId) -> Option<Attributes> {
        let slot = *self.by_id.get(&id)?;
        Some(
            self.slot_attributes[slot as usize]
                .iter()
                .map(|(attr, value)| {
                    (
                        self.names.resolve(attr.0).to_string(),
                        self.values.resolve(value.0).to_string(),
                    )
                })
                .collect(),
        )
    }

    /// The agent's interned attributes, for [`JobSpread`](super::JobSpread).
    pub fn attribute_ids(&self, id: AgentId) -> Option<&[(AttrId, ValueId)]> {
        let slot = *self.by_id.get(&id)?;
        Some(&self.slot_attributes[slot as usize])
    }

    /// Interns an attribute list (first value wins for a repeated name). Used for agents this
    /// index does not hold, e.g. to count a job's task on an agent another shard owns.
    pub fn intern_attributes(&mut self, attributes: &Attributes) -> Vec<(AttrId, ValueId)> {
        let mut interned: Vec<(AttrId, ValueId)> = Vec::with_capacity(attributes.len());
        for (name, value) in attributes {
            let attr = self.intern_name(name);
            if interned.iter().any(|(seen, _)| *seen == attr) {
                continue;
            }
            interned.push((attr, ValueId(self.values.intern(value))));
        }
        interned
    }

    /// Every agent's offer, in slot order (deterministic for a given call history). For a shard
    /// choosing which offers to lend.
    pub fn agents(&self) -> impl Iterator<Item = AgentOffer> + '_ {
        self.slots
            .iter()
            .filter(|slot| slot.pool != POOL_NONE)
            .map(|slot| AgentOffer {
                id: slot.id,
                total: slot.total,
                free: slot.free,
            })
    }

    /// Takes `need` from the agent's free resources (a task was assigned there outside
    /// [`place`](PlacementIndex::place), e.g. on recovery). Panics if the agent is unknown or
    /// `need` does not fit: over-committing an agent is a programmer error.
    pub fn consume(&mut self, id: AgentId, need: &Resources) {
        let slot = self.by_id[&id];
        self.consume_slot(slot, need);
    }

    /// Gives `amount` back to the agent's free resources (a task left it). Ignores an agent the
    /// index no longer holds: its offer was lent or lost, and its owner accounts for it.
    pub fn release(&mut self, id: AgentId, amount: &Resources) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let record = &mut self.slots[slot as usize];
        record.free = record.free.plus(amount);
        debug_assert!(
            record.total.contains(&record.free),
            "agent {id:?}: release of {amount:?} leaves free {:?} above total {:?}",
            record.free,
            record.total
        );
        self.relink(slot);
    }

    #[inline]
    pub(super) fn consume_slot(&mut self, slot: u32, need: &Resources) {
        let record = &mut self.slots[slot as usize];
        debug_assert!(
            record.free.contains(need),
            "agent {:?}: consume {need:?} exceeds free {:?}",
            record.id,
            record.free
        );
        record.free = record.free.minus(need);
        self.relink(slot);
    }

    pub(super) fn slot_attribute_ids(&self, slot: u32) -> &[(AttrId, ValueId)] {
        &self.slot_attributes[slot as usize]
    }

    /// Checks every structural invariant; panics with a description on the first violation.
    /// For tests and simulations: O(agents + buckets).
    pub fn check_invariants(&self) {
        assert!(self.parked.is_empty(), "agents parked outside place_batch");
        let mut seen = 0;
        for (pool_index, pool) in self.pools.iter().enumerate() {
            let mut pool_len = 0;
            for (bucket, members) in pool.buckets.iter().enumerate() {
                let c = bucket as u32 / CLASS_COUNT;
                let r = bucket as u32 % CLASS_COUNT;
                let bit = pool.rows[c as usize] >> r & 1 == 1;
                assert_eq!(
                    bit,
                    !members.is_empty(),
                    "pool {pool_index} bucket {bucket} bit"
                );
                for (position, &slot) in members.iter().enumerate() {
                    let record = &self.slots[slot as usize];
                    assert_eq!(record.pool, pool_index as u32, "slot {slot} pool");
                    assert_eq!(usize::from(record.bucket), bucket, "slot {slot} bucket");
                    assert_eq!(bucket_of(&record.free), record.bucket, "slot {slot} class");
                    assert_eq!(record.position as usize, position, "slot {slot} position");
                    assert!(
                        record.total.contains(&record.free),
                        "slot {slot} free > total"
                    );
                    assert_eq!(
                        self.by_id.get(&record.id),
                        Some(&slot),
                        "slot {slot} id map"
                    );
                    pool_len += 1;
                }
            }
            for c in 0..CLASS_COUNT {
                let bit = pool.columns >> c & 1 == 1;
                assert_eq!(
                    bit,
                    pool.rows[c as usize] != 0,
                    "pool {pool_index} column {c}"
                );
            }
            assert_eq!(pool.len, pool_len, "pool {pool_index} len");
            seen += pool_len;
        }
        assert_eq!(seen as usize, self.by_id.len(), "agents in pools vs id map");
        for column in &self.columns {
            assert_eq!(column.len(), self.slots.len(), "column length");
        }
    }

    pub(super) fn intern_name(&mut self, name: &str) -> AttrId {
        let attr = self.names.intern(name);
        while self.columns.len() <= attr as usize {
            self.columns.push(vec![VALUE_NONE; self.slots.len()]);
        }
        AttrId(attr)
    }

    fn dedicated_pool(&mut self, value: ValueId) -> u32 {
        if let Some(&pool) = self.dedicated_pools.get(&value) {
            return pool;
        }
        let pool = u32::try_from(self.pools.len()).expect("fewer than 2^32 pools");
        self.pools.push(Pool::new());
        self.dedicated_pools.insert(value, pool);
        pool
    }

    fn allocate_slot(&mut self) -> u32 {
        if let Some(slot) = self.vacant.pop() {
            return slot;
        }
        let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 agents");
        self.slots.push(Slot {
            id: AgentId(u64::MAX),
            free: Resources::ZERO,
            total: Resources::ZERO,
            pool: POOL_NONE,
            bucket: 0,
            position: 0,
        });
        self.slot_attributes.push(Vec::new());
        for column in &mut self.columns {
            column.push(VALUE_NONE);
        }
        slot
    }

    fn clear_columns(&mut self, slot: u32) {
        for (attr, _) in &self.slot_attributes[slot as usize] {
            self.columns[attr.0 as usize][slot as usize] = VALUE_NONE;
        }
    }

    /// Moves the slot to the bucket of its current free resources, if that changed.
    #[inline]
    fn relink(&mut self, slot: u32) {
        let record = &self.slots[slot as usize];
        if bucket_of(&record.free) != record.bucket {
            self.unlink(slot);
            self.link(slot);
        }
    }

    pub(super) fn link(&mut self, slot: u32) {
        let record = &mut self.slots[slot as usize];
        let bucket = bucket_of(&record.free);
        let pool = &mut self.pools[record.pool as usize];
        let members = &mut pool.buckets[usize::from(bucket)];
        record.bucket = bucket;
        record.position = members.len() as u32;
        members.push(slot);
        let c = u32::from(bucket) / CLASS_COUNT;
        let r = u32::from(bucket) % CLASS_COUNT;
        pool.rows[c as usize] |= 1 << r;
        pool.columns |= 1 << c;
        pool.len += 1;
    }

    pub(super) fn unlink(&mut self, slot: u32) {
        let record = &self.slots[slot as usize];
        let (bucket, position) = (record.bucket, record.position);
        let pool = &mut self.pools[record.pool as usize];
        let members = &mut pool.buckets[usize::from(bucket)];
        debug_assert_eq!(members[position as usize], slot);
        members.swap_remove(position as usize);
        if let Some(&moved) = members.get(position as usize) {
            self.slots[moved as usize].position = position;
        }
        if members.is_empty() {
            let c = u32::from(bucket) / CLASS_COUNT;
            let r = u32::from(bucket) % CLASS_COUNT;
            pool.rows[c as usize] &= !(1 << r);
            if pool.rows[c as usize] == 0 {
                pool.columns &= !(1 << c);
            }
        }
        pool.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_is_monotonic_and_bounded() {
        let mut previous = 0;
        for units in 0..200_000u32 {
            let class = class_of(units);
            assert!(class >= previous, "class_of({units}) decreased");
            assert!(class < CLASS_COUNT);
            previous = class;
        }
        assert_eq!(class_of(u32::MAX), CLASS_COUNT - 1);
    }

    fn check_class(units: u32, expected: u32) {
        assert_eq!(class_of(units), expected, "class_of({units})");
    }

    #[test]
    fn class_table() {
        check_class(0, 0);
        check_class(1, 1);
        check_class(2, 2);
        check_class(3, 3);
        check_class(4, 4);
        check_class(5, 4);
        check_class(6, 5);
        check_class(7, 5);
        check_class(8, 6);
        check_class(1 << 15, 30);
        check_class((1 << 15) + (1 << 14), 31);
        check_class(1 << 16, 31);
    }
}
