//! Per-role production quota, as in Aurora: a role may run production work up to its quota of
//! cpu, ram and disk; non-production work never counts, so it can always be submitted (and is
//! what preemption reclaims when production needs room).
//!
//! Pure arithmetic: the caller keeps the quotas and the usage ([`QuotaLedger`] helps) and asks
//! [`check_quota`] before accepting production work.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Resources, TaskConfig};
use crate::tier::TierConfig;

/// A role's quota: cpu, ram and disk in [`Resources`]' units. Ports are ignored: Aurora does not
/// meter them, and agents hand them out from their own ranges.
pub type Quota = Resources;

/// Whether a task's resources count against its role's quota: it is production work in a tier
/// that is neither preemptible nor revocable. Non-production work never counts, as in Aurora,
/// because it holds its resources only until production needs them.
pub fn counts_against_quota(config: &TaskConfig, tiers: &TierConfig) -> bool {
    let settings = tiers.settings(config.tier);
    config.production && !settings.preemptible && !settings.revocable
}

/// What `instances` copies of a task ask for in all, saturating at the type's maximum (a
/// saturated demand exceeds any real quota, so it is refused rather than wrapped).
pub fn job_demand(per_task: &Resources, instances: u32) -> Resources {
    let times = |value: u32| value.saturating_mul(instances);
    Resources {
        cpu_millis: times(per_task.cpu_millis),
        ram_mib: times(per_task.ram_mib),
        disk_mib: times(per_task.disk_mib),
        ports: u16::try_from(u32::from(per_task.ports).saturating_mul(instances))
            .unwrap_or(u16::MAX),
    }
}

/// A resource quota meters, in the order [`check_quota`] checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaResource {
    /// Thousandths of a core; shown in cores.
    Cpu,
    /// MiB.
    Ram,
    /// MiB.
    Disk,
}

impl QuotaResource {
    /// Every metered resource, in check order.
    pub const ALL: [QuotaResource; 3] =
        [QuotaResource::Cpu, QuotaResource::Ram, QuotaResource::Disk];

    /// The resource's name in messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaResource::Cpu => "cpu",
            QuotaResource::Ram => "ram",
            QuotaResource::Disk => "disk",
        }
    }

    /// The resource's amount in `resources`, widened so sums never overflow.
    pub fn of(self, resources: &Resources) -> u64 {
        u64::from(match self {
            QuotaResource::Cpu => resources.cpu_millis,
            QuotaResource::Ram => resources.ram_mib,
            QuotaResource::Disk => resources.disk_mib,
        })
    }

    /// `amount` as a person reads it: cpu in cores with three decimals, sizes in MiB.
    fn show(self, amount: u64) -> String {
        match self {
            QuotaResource::Cpu => format!("{}.{:03}", amount / 1000, amount % 1000),
            QuotaResource::Ram | QuotaResource::Disk => format!("{amount} MiB"),
        }
    }
}

/// Production work refused because it would take its role over quota in one resource.
///
/// `Display`: `quota exceeded for role www: ram: quota 4096 MiB, used 3072 MiB, requested
/// 2048 MiB`, so the user sees how far over they are and what to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaError {
    /// The role whose quota would be exceeded.
    pub role: String,
    /// The first resource (in cpu, ram, disk order) that would be over.
    pub resource: QuotaResource,
    /// The role's quota of that resource (0 when the role has none).
    pub quota: u64,
    /// What the role's counted work uses now.
    pub used: u64,
    /// What the refused work asked for.
    pub requested: u64,
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |amount| self.resource.show(amount);
        write!(
            f,
            "quota exceeded for role {}: {}: quota {}, used {}, requested {}",
            self.role,
            self.resource.as_str(),
            show(self.quota),
            show(self.used),
            show(self.requested)
        )
    }
}

impl std::error::Error for QuotaError {}

/// Admits `request` for `role` when `used + request` stays within `quota` in cpu, ram and disk;
/// otherwise reports the first resource over, in that order.
///
/// A role with no quota set has a quota of zero: in Aurora, production work needs quota. As in
/// Aurora the check is of the total (`used + request <= quota` in every resource), so a role
/// already over quota in one resource (its quota was lowered) is refused even a request of none
/// of it. Sums are in `u64`, so nothing overflows.
pub fn check_quota(
    role: &str,
    quota: Option<&Resources>,
    used: &Resources,
    request: &Resources,
) -> Result<(), QuotaError> {
    let quota = quota.copied().unwrap_or(Resources::ZERO);
    for resource in QuotaResource::ALL {
        let (limit, used, requested) =
            (resource.of(&quota), resource.of(used), resource.of(request));
        if used + requested > limit {
            return Err(QuotaError {
                role: role.to_string(),
                resource,
                quota: limit,
                used,
                requested,
            });
        }
    }
    Ok(())
}

/// The quota-counted usage of every role, for the caller that keeps it incrementally: add a
/// task's resources when it becomes active, subtract them when it ends.
///
/// Ports are dropped on the way in (quota does not meter them). Roles iterate in name order and
/// a role whose usage returns to zero is forgotten, so equal histories give equal ledgers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaLedger {
    used: BTreeMap<String, Resources>,
}

impl QuotaLedger {
    /// An empty ledger: no role uses anything.
    pub fn new() -> QuotaLedger {
        QuotaLedger::default()
    }

    /// What `role`'s counted work uses (zero for a role never seen).
    pub fn used(&self, role: &str) -> Resources {
        self.used.get(role).copied().unwrap_or(Resources::ZERO)
    }

    /// Counts `amount` more for `role`, saturating.
    pub fn add(&mut self, role: &str, amount: &Resources) {
        let amount = metered(amount);
        if amount == Resources::ZERO {
            return;
        }
        let entry = self.used.entry(role.to_string()).or_default();
        *entry = entry.plus(&amount);
    }

    /// Counts `amount` less for `role`. Subtracting more than was added is a caller bug: it
    /// panics in debug builds and saturates at zero in release, so a bookkeeping slip never
    /// wraps into a huge usage that would lock the role out.
    pub fn sub(&mut self, role: &str, amount: &Resources) {
        let amount = metered(amount);
        let current = self.used(role);
        debug_assert!(
            current.contains(&amount),
            "quota ledger underflow for role {role}: {current:?} - {amount:?}"
        );
        let left = Resources {
            cpu_millis: current.cpu_millis.saturating_sub(amount.cpu_millis),
            ram_mib: current.ram_mib.saturating_sub(amount.ram_mib),
            disk_mib: current.disk_mib.saturating_sub(amount.disk_mib),
            ports: 0,
        };
        if left == Resources::ZERO {
            self.used.remove(role);
        } else {
            self.used.insert(role.to_string(), left);
        }
    }

    /// [`check_quota`] against this ledger's usage of `role`.
    pub fn check(
        &self,
        role: &str,
        quota: Option<&Resources>,
        request: &Resources,
    ) -> Result<(), QuotaError> {
        check_quota(role, quota, &self.used(role), request)
    }

    /// Every role with non-zero usage, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Resources)> + '_ {
        self.used.iter().map(|(role, used)| (role.as_str(), used))
    }
}

/// The part of `resources` quota meters.
fn metered(resources: &Resources) -> Resources {
    Resources {
        ports: 0,
        ..*resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;
    use proptest::prelude::*;

    fn res(cpu_millis: u32, ram_mib: u32, disk_mib: u32) -> Resources {
        Resources {
            cpu_millis,
            ram_mib,
            disk_mib,
            ports: 0,
        }
    }

    #[track_caller]
    fn check(
        quota: Option<Resources>,
        used: Resources,
        request: Resources,
        expected: Result<(), &str>,
    ) {
        let got = check_quota("www", quota.as_ref(), &used, &request).map_err(|e| e.to_string());
        assert_eq!(
            got,
            expected.map_err(String::from),
            "quota {quota:?} used {used:?} request {request:?}"
        );
    }

    #[test]
    fn check_quota_table() {
        let quota = Some(res(2000, 4096, 10_240));
        check(quota, res(0, 0, 0), res(2000, 4096, 10_240), Ok(()));
        check(quota, res(1000, 1024, 0), res(1000, 3072, 10_240), Ok(()));
        check(
            quota,
            res(1000, 3072, 0),
            res(500, 2048, 0),
            Err("quota exceeded for role www: ram: quota 4096 MiB, used 3072 MiB, requested 2048 MiB"),
        );
        check(
            quota,
            res(1500, 0, 0),
            res(1000, 0, 0),
            Err("quota exceeded for role www: cpu: quota 2.000, used 1.500, requested 1.000"),
        );
        check(
            quota,
            res(0, 0, 10_000),
            res(0, 0, 241),
            Err("quota exceeded for role www: disk: quota 10240 MiB, used 10000 MiB, requested 241 MiB"),
        );
        // cpu is reported before ram, ram before disk.
        check(
            quota,
            res(2000, 4096, 10_240),
            res(1, 1, 1),
            Err("quota exceeded for role www: cpu: quota 2.000, used 2.000, requested 0.001"),
        );
        check(
            quota,
            res(0, 4096, 10_240),
            res(0, 1, 1),
            Err("quota exceeded for role www: ram: quota 4096 MiB, used 4096 MiB, requested 1 MiB"),
        );
        // Ports are not metered.
        check(
            quota,
            res(0, 0, 0),
            Resources {
                ports: 100,
                ..res(1, 1, 1)
            },
            Ok(()),
        );
        // No quota set is a quota of zero: production needs quota.
        check(
            None,
            res(0, 0, 0),
            res(1, 0, 0),
            Err("quota exceeded for role www: cpu: quota 0.000, used 0.000, requested 0.001"),
        );
        check(None, res(0, 0, 0), res(0, 0, 0), Ok(()));
        // Over quota already (it was lowered): even a request of none of it is refused.
        check(
            quota,
            res(0, 5000, 0),
            res(1, 0, 0),
            Err("quota exceeded for role www: ram: quota 4096 MiB, used 5000 MiB, requested 0 MiB"),
        );
        // No overflow at the top of the range.
        let max = res(u32::MAX, u32::MAX, u32::MAX);
        check(Some(max), max, res(0, 0, 0), Ok(()));
        check(
            Some(max),
            max,
            res(0, 0, 1),
            Err("quota exceeded for role www: disk: quota 4294967295 MiB, used 4294967295 MiB, requested 1 MiB"),
        );
        check(
            Some(max),
            max,
            max,
            Err("quota exceeded for role www: cpu: quota 4294967.295, used 4294967.295, requested 4294967.295"),
        );
    }

    #[test]
    fn counts_against_quota_table() {
        let tiers = TierConfig::default();
        let mut config = TaskConfig {
            job: "www/prod/web".parse().unwrap(),
            command: "true".into(),
            resources: res(1, 1, 1),
            port_names: vec![],
            constraints: vec![],
            tier: Tier::Preferred,
            priority: 0,
            production: true,
            is_service: true,
            max_task_failures: 1,
            finalization_wait_secs: 0,
            health_check: None,
            http_lifecycle: None,
            sla_policy: None,
            partition_policy: None,
        };
        for (tier, production, expected) in [
            (Tier::Preferred, true, true),
            (Tier::Preferred, false, false),
            (Tier::Preemptible, true, false),
            (Tier::Preemptible, false, false),
            (Tier::Revocable, true, false),
            (Tier::Revocable, false, false),
        ] {
            config.tier = tier;
            config.production = production;
            assert_eq!(
                counts_against_quota(&config, &tiers),
                expected,
                "{tier:?} {production}"
            );
        }
    }

    #[test]
    fn job_demand_table() {
        let per_task = Resources {
            ports: 2,
            ..res(250, 512, 1024)
        };
        for (instances, expected) in [
            (0, Resources::ZERO),
            (1, per_task),
            (
                4,
                Resources {
                    ports: 8,
                    ..res(1000, 2048, 4096)
                },
            ),
            (
                u32::MAX,
                Resources {
                    ports: u16::MAX,
                    ..res(u32::MAX, u32::MAX, u32::MAX)
                },
            ),
        ] {
            assert_eq!(job_demand(&per_task, instances), expected, "x{instances}");
        }
    }

    #[test]
    fn ledger_adds_subtracts_and_forgets_zero() {
        let mut ledger = QuotaLedger::new();
        let task = Resources {
            ports: 3,
            ..res(500, 1024, 2048)
        };
        ledger.add("www", &task);
        ledger.add("www", &task);
        ledger.add("db", &task);
        assert_eq!(ledger.used("www"), res(1000, 2048, 4096), "ports dropped");
        assert_eq!(ledger.used("nobody"), Resources::ZERO);
        let roles: Vec<&str> = ledger.iter().map(|(role, _)| role).collect();
        assert_eq!(roles, ["db", "www"], "name order");
        assert_eq!(
            ledger
                .check("www", Some(&res(1000, 4096, 8192)), &res(1, 0, 0))
                .unwrap_err()
                .to_string(),
            "quota exceeded for role www: cpu: quota 1.000, used 1.000, requested 0.001"
        );
        ledger.sub("www", &task);
        ledger.sub("www", &task);
        ledger.sub("db", &task);
        assert_eq!(ledger, QuotaLedger::new());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "quota ledger underflow for role www")]
    fn ledger_underflow_panics_in_debug() {
        let mut ledger = QuotaLedger::new();
        ledger.add("www", &res(1, 1, 1));
        ledger.sub("www", &res(2, 1, 1));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn ledger_underflow_saturates_in_release() {
        let mut ledger = QuotaLedger::new();
        ledger.add("www", &res(1, 5, 1));
        ledger.sub("www", &res(2, 1, 1));
        assert_eq!(ledger.used("www"), res(0, 4, 0));
    }

    proptest! {
        #[test]
        fn admitted_iff_within_quota_everywhere(
            quota in prop::option::of((any::<u32>(), any::<u32>(), any::<u32>())),
            used in (any::<u32>(), any::<u32>(), any::<u32>()),
            request in (any::<u32>(), any::<u32>(), any::<u32>()),
        ) {
            let quota = quota.map(|(c, r, d)| res(c, r, d));
            let used = res(used.0, used.1, used.2);
            let request = res(request.0, request.1, request.2);
            let limit = quota.unwrap_or(Resources::ZERO);
            let within = QuotaResource::ALL.iter().all(|r| r.of(&used) + r.of(&request) <= r.of(&limit));
            let result = check_quota("r", quota.as_ref(), &used, &request);
            prop_assert_eq!(result.is_ok(), within);
            if let Err(error) = result {
                // The first resource over is reported, with the inputs' figures.
                let first = QuotaResource::ALL
                    .into_iter()
                    .find(|r| r.of(&used) + r.of(&request) > r.of(&limit))
                    .unwrap();
                prop_assert_eq!(error.resource, first);
                prop_assert_eq!(error.quota, first.of(&limit));
                prop_assert_eq!(error.used, first.of(&used));
                prop_assert_eq!(error.requested, first.of(&request));
            }
        }
    }
}
