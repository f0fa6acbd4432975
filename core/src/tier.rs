//! Tiers: what a task's tier says about how it may be treated (Aurora's `--tier-config`).
//!
//! Aurora reads a JSON file naming the cluster's tiers and, for each, whether its tasks may be
//! preempted and whether they run on revocable resources:
//!
//! ```json
//! {"default": "preemptible",
//!  "tiers": {"preferred":   {"revocable": false, "preemptible": false},
//!            "preemptible": {"revocable": false, "preemptible": true},
//!            "revocable":   {"revocable": true,  "preemptible": true}}}
//! ```
//!
//! Borealis reads the same format, with two restrictions that keep the rest of the scheduler
//! simple: the tiers are exactly [`Tier::ALL`] (the names a job file may use), each must be
//! described, and `preferred` must be neither preemptible nor revocable, since it is the tier a
//! production job gets when it names none (see [`TierConfig::resolve`]).
//!
//! Pure: the caller reads the file and hands over its text.

use crate::model::{TaskConfig, Tier};

/// How a tier's tasks are treated; one entry of the tier configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TierSettings {
    /// The tier's tasks may be killed to make room for production work.
    pub preemptible: bool,
    /// The tier's tasks run on revocable resources (which the cluster may take back at any
    /// time), so they can never be production work.
    pub revocable: bool,
}

/// The cluster's tier configuration: a setting for every [`Tier`] and the tier a
/// non-production job gets when it names none.
///
/// Immutable once built, and valid by construction (see [`TierConfig::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TierConfig {
    default: Tier,
    /// Indexed by [`slot`], in [`Tier::ALL`] order.
    settings: [TierSettings; 3],
}

/// Why a tier configuration was refused. `Display` is one line naming where the problem is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TierConfigError {
    /// The text is not JSON at all; serde_json's message carries the line and column.
    #[error("tier config is not valid JSON: {0}")]
    Syntax(String),
    /// JSON, but a field is missing, repeated, unknown, of the wrong type or out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted path of the offending field, e.g. `tiers.preferred.preemptible`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TierConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TierConfigError {
        TierConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How errors name the supported tiers.
const SUPPORTED: &str = "Borealis supports preferred, preemptible and revocable";

/// Where a tier's settings live in [`TierConfig::settings`].
fn slot(tier: Tier) -> usize {
    match tier {
        Tier::Preferred => 0,
        Tier::Preemptible => 1,
        Tier::Revocable => 2,
    }
}

impl Default for TierConfig {
    /// Aurora's stock configuration (the JSON in the module docs): `preferred` is neither
    /// preemptible nor revocable, `preemptible` is preemptible, `revocable` is both, and a job
    /// that names no tier (and is not production) is `preemptible`.
    fn default() -> TierConfig {
        TierConfig {
            default: Tier::Preemptible,
            settings: [
                TierSettings {
                    preemptible: false,
                    revocable: false,
                },
                TierSettings {
                    preemptible: true,
                    revocable: false,
                },
                TierSettings {
                    preemptible: true,
                    revocable: true,
                },
            ],
        }
    }
}

impl TierConfig {
    /// A configuration from its parts, `settings` in [`Tier::ALL`] order. Refuses a `preferred`
    /// tier that is preemptible or revocable: production jobs that name no tier land there, and
    /// [`validate`](TierConfig::validate) would then refuse every one of them.
    pub fn new(default: Tier, settings: [TierSettings; 3]) -> Result<TierConfig, TierConfigError> {
        let preferred = settings[slot(Tier::Preferred)];
        for (name, set) in [
            ("preemptible", preferred.preemptible),
            ("revocable", preferred.revocable),
        ] {
            if set {
                return Err(TierConfigError::invalid(
                    format!("tiers.preferred.{name}"),
                    "must be false: production jobs that name no tier run in preferred",
                ));
            }
        }
        Ok(TierConfig { default, settings })
    }

    /// Parses Aurora's tier-config JSON (see the module docs). Unknown, repeated and missing
    /// fields are refused, so a typo never silently takes a default; errors name the field.
    pub fn parse_json(text: &str) -> Result<TierConfig, TierConfigError> {
        let root: Json =
            serde_json::from_str(text).map_err(|e| TierConfigError::Syntax(e.to_string()))?;
        let fields = object("tier config", &root)?;
        let mut default = None;
        let mut tiers = None;
        for (key, value) in fields {
            match key.as_str() {
                "default" => default = Some(value),
                "tiers" => tiers = Some(value),
                _ => {
                    return Err(TierConfigError::invalid(
                        key.as_str(),
                        "unknown field (expected default or tiers)",
                    ))
                }
            }
        }
        let default = match default {
            None => return Err(TierConfigError::invalid("default", "missing")),
            Some(Json::String(name)) => tier_named(name).ok_or_else(|| {
                TierConfigError::invalid("default", format!("unknown tier {name:?} ({SUPPORTED})"))
            })?,
            Some(_) => return Err(TierConfigError::invalid("default", "expected a string")),
        };
        let tiers = tiers.ok_or_else(|| TierConfigError::invalid("tiers", "missing"))?;
        let mut settings: [Option<TierSettings>; 3] = [None; 3];
        for (key, value) in object("tiers", tiers)? {
            let field = format!("tiers.{key}");
            let tier = tier_named(key).ok_or_else(|| {
                TierConfigError::invalid(&field, format!("unknown tier ({SUPPORTED})"))
            })?;
            settings[slot(tier)] = Some(tier_settings(&field, value)?);
        }
        let mut complete = [TierSettings::default(); 3];
        for tier in Tier::ALL {
            complete[slot(tier)] = settings[slot(tier)].ok_or_else(|| {
                TierConfigError::invalid(
                    format!("tiers.{}", tier.as_str()),
                    "missing (Borealis needs all of preferred, preemptible and revocable)",
                )
            })?;
        }
        TierConfig::new(default, complete)
    }

    /// The configuration as compact JSON that [`parse_json`](TierConfig::parse_json) reads back
    /// to an equal configuration; fields in a fixed order, so equal configs render equally.
    pub fn to_json(&self) -> String {
        let tiers: Vec<String> = Tier::ALL
            .iter()
            .map(|&tier| {
                let s = self.settings(tier);
                format!(
                    "\"{}\":{{\"revocable\":{},\"preemptible\":{}}}",
                    tier.as_str(),
                    s.revocable,
                    s.preemptible
                )
            })
            .collect();
        format!(
            "{{\"default\":\"{}\",\"tiers\":{{{}}}}}",
            self.default.as_str(),
            tiers.join(",")
        )
    }

    /// The tier a non-production job gets when it names none (the file's `default`).
    pub fn default_tier(&self) -> Tier {
        self.default
    }

    /// How `tier`'s tasks are treated.
    pub fn settings(&self, tier: Tier) -> TierSettings {
        self.settings[slot(tier)]
    }

    /// The tier of a job that named `explicit` (or none) and is or is not `production`.
    ///
    /// Borealis's rule: a named tier is kept; with none named, a production job gets
    /// `preferred` (production work must not be preemptible) and any other job gets the
    /// configuration's default. Aurora instead derives production from the tier; Borealis keeps
    /// the job file's explicit `production` flag and checks the two agree with
    /// [`validate`](TierConfig::validate).
    pub fn resolve(&self, explicit: Option<Tier>, production: bool) -> Tier {
        match explicit {
            Some(tier) => tier,
            None if production => Tier::Preferred,
            None => self.default,
        }
    }

    /// Refuses a production job in a preemptible or revocable tier: production work is what
    /// preemption makes room for, so it must never itself be preempted or revoked. The message
    /// names the job's field `tier`.
    pub fn validate(&self, tier: Tier, production: bool) -> Result<(), String> {
        if !production {
            return Ok(());
        }
        let settings = self.settings(tier);
        let why = match (settings.preemptible, settings.revocable) {
            (_, true) => "revocable",
            (true, false) => "preemptible",
            (false, false) => return Ok(()),
        };
        Err(format!(
            "tier: a production job cannot run in tier {}, which is {why}",
            tier.as_str()
        ))
    }

    /// Whether a task may be preempted to make room for production work: its tier is
    /// preemptible, or it is not production (non-production work never holds resources against
    /// production, as in Aurora).
    pub fn is_preemptible(&self, config: &TaskConfig) -> bool {
        self.settings(config.tier).preemptible || !config.production
    }
}

fn tier_named(name: &str) -> Option<Tier> {
    Tier::ALL.into_iter().find(|tier| tier.as_str() == name)
}

fn tier_settings(field: &str, value: &Json) -> Result<TierSettings, TierConfigError> {
    let mut preemptible = None;
    let mut revocable = None;
    for (key, value) in object(field, value)? {
        let path = format!("{field}.{key}");
        let target = match key.as_str() {
            "preemptible" => &mut preemptible,
            "revocable" => &mut revocable,
            _ => {
                return Err(TierConfigError::invalid(
                    path,
                    "unknown field (expected preemptible or revocable)",
                ))
            }
        };
        match value {
            Json::Bool(flag) => *target = Some(*flag),
            _ => return Err(TierConfigError::invalid(path, "expected a boolean")),
        }
    }
    let required = |flag: Option<bool>, name: &str| {
        flag.ok_or_else(|| TierConfigError::invalid(format!("{field}.{name}"), "missing"))
    };
    Ok(TierSettings {
        preemptible: required(preemptible, "preemptible")?,
        revocable: required(revocable, "revocable")?,
    })
}

/// `value`'s members, refusing a non-object and a repeated key.
fn object<'a>(field: &str, value: &'a Json) -> Result<&'a [(String, Json)], TierConfigError> {
    let Json::Object(members) = value else {
        return Err(TierConfigError::invalid(field, "expected an object"));
    };
    for (index, (key, _)) in members.iter().enumerate() {
        if members[..index].iter().any(|(seen, _)| seen == key) {
            let path = if field == "tier config" {
                key.clone()
            } else {
                format!("{field}.{key}")
            };
            return Err(TierConfigError::invalid(path, "repeated"));
        }
    }
    Ok(members)
}

/// A JSON document that keeps every member of an object in document order, repeats included
/// (`serde_json::Value` keeps only the last of a repeated key, which would hide a typo'd
/// duplicate). Only the shapes the tier config uses are kept in full.
#[derive(Debug)]
enum Json {
    Bool(bool),
    String(String),
    Object(Vec<(String, Json)>),
    /// Null, a number or an array: never valid in a tier config, so their content is dropped.
    Other,
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_string()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Json::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AURORA_DEFAULT: &str = r#"
        {"default": "preemptible",
         "tiers": {"preferred":   {"revocable": false, "preemptible": false},
                   "preemptible": {"revocable": false, "preemptible": true},
                   "revocable":   {"revocable": true,  "preemptible": true}}}"#;

    fn settings(preemptible: bool, revocable: bool) -> TierSettings {
        TierSettings {
            preemptible,
            revocable,
        }
    }

    /// The default JSON with `from` replaced by `to` (which must occur exactly once).
    fn edited(from: &str, to: &str) -> String {
        assert_eq!(AURORA_DEFAULT.matches(from).count(), 1, "{from}");
        AURORA_DEFAULT.replace(from, to)
    }

    #[track_caller]
    fn check(text: &str, expected: Result<TierConfig, &str>) {
        let parsed = TierConfig::parse_json(text).map_err(|e| e.to_string());
        match expected {
            Ok(config) => assert_eq!(parsed, Ok(config), "{text}"),
            Err(message) => {
                let error = parsed.expect_err(text);
                assert!(
                    error.starts_with(message),
                    "{text}\n got {error}\nwant {message}"
                );
            }
        }
    }

    #[test]
    fn default_is_aurora_stock_config() {
        let config = TierConfig::default();
        check(AURORA_DEFAULT, Ok(config));
        assert_eq!(config.default_tier(), Tier::Preemptible);
        assert_eq!(config.settings(Tier::Preferred), settings(false, false));
        assert_eq!(config.settings(Tier::Preemptible), settings(true, false));
        assert_eq!(config.settings(Tier::Revocable), settings(true, true));
    }

    #[test]
    fn accepted_configs() {
        let preferred_default =
            TierConfig::new(Tier::Preferred, TierConfig::default().settings).unwrap();
        check(
            &edited(r#""default": "preemptible""#, r#""default": "preferred""#),
            Ok(preferred_default),
        );
        // Members in any order, whitespace anywhere.
        check(
            r#"{"tiers":{"revocable":{"preemptible":true,"revocable":true},
                "preferred":{"preemptible":false,"revocable":false},
                "preemptible":{"preemptible":true,"revocable":false}},"default":"preemptible"}"#,
            Ok(TierConfig::default()),
        );
        // A preemptible tier that is not preemptible is odd but allowed.
        let stiff = TierConfig::new(
            Tier::Preemptible,
            [
                settings(false, false),
                settings(false, false),
                settings(true, true),
            ],
        )
        .unwrap();
        check(
            &edited(
                r#""preemptible": {"revocable": false, "preemptible": true}"#,
                r#""preemptible": {"revocable": false, "preemptible": false}"#,
            ),
            Ok(stiff),
        );
    }

    #[test]
    fn rejected_configs() {
        let table: Vec<(String, &str)> = vec![
            ("".into(), "tier config is not valid JSON: EOF while parsing a value at line 1 column 0"),
            ("{".into(), "tier config is not valid JSON: EOF while parsing an object at line 1 column 1"),
            (AURORA_DEFAULT.replace("}}}", "}}"), "tier config is not valid JSON: EOF while parsing an object"),
            ("[]".into(), "tier config: expected an object"),
            ("{}".into(), "default: missing"),
            (r#"{"default": "preferred"}"#.into(), "tiers: missing"),
            (edited(r#""default": "preemptible""#, r#""default": 1"#), "default: expected a string"),
            (edited(r#""default": "preemptible""#, r#""default": "gold""#), "default: unknown tier \"gold\" (Borealis supports preferred, preemptible and revocable)"),
            (edited(r#"{"default""#, r#"{"extra": 1, "default""#), "extra: unknown field (expected default or tiers)"),
            (edited(r#"{"default""#, r#"{"default": "preferred", "default""#), "default: repeated"),
            (edited(r#""tiers": {"#, r#""tiers": {"gold": {}, "#), "tiers.gold: unknown tier (Borealis supports preferred, preemptible and revocable)"),
            (r#"{"default": "preferred", "tiers": 7}"#.into(), "tiers: expected an object"),
            (r#"{"default": "preferred", "tiers": {"preferred": {"revocable": false, "preemptible": false}, "preemptible": {"revocable": false, "preemptible": true}}}"#.into(), "tiers.revocable: missing (Borealis needs all of preferred, preemptible and revocable)"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": true"#), "tiers.preferred: expected an object"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false}"#), "tiers.preferred.preemptible: missing"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"preemptible": false}"#), "tiers.preferred.revocable: missing"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false, "preemptible": "no"}"#), "tiers.preferred.preemptible: expected a boolean"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": null, "preemptible": false}"#), "tiers.preferred.revocable: expected a boolean"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false, "preemptible": false, "gpu": true}"#), "tiers.preferred.gpu: unknown field (expected preemptible or revocable)"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false, "revocable": false, "preemptible": false}"#), "tiers.preferred.revocable: repeated"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false, "preemptible": false}, "preferred": {"revocable": false, "preemptible": false}"#), "tiers.preferred: repeated"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": false, "preemptible": true}"#), "tiers.preferred.preemptible: must be false: production jobs that name no tier run in preferred"),
            (edited(r#""preferred":   {"revocable": false, "preemptible": false}"#, r#""preferred": {"revocable": true, "preemptible": false}"#), "tiers.preferred.revocable: must be false"),
        ];
        for (text, message) in table {
            check(&text, Err(message));
        }
    }

    #[test]
    fn resolve_table() {
        let config = TierConfig::default();
        let preferred_default = TierConfig::new(Tier::Preferred, config.settings).unwrap();
        for (config, explicit, production, expected) in [
            (config, None, true, Tier::Preferred),
            (config, None, false, Tier::Preemptible),
            (preferred_default, None, false, Tier::Preferred),
            (config, Some(Tier::Revocable), true, Tier::Revocable),
            (config, Some(Tier::Preferred), false, Tier::Preferred),
            (config, Some(Tier::Revocable), false, Tier::Revocable),
        ] {
            assert_eq!(
                config.resolve(explicit, production),
                expected,
                "{explicit:?} production {production}"
            );
        }
    }

    #[test]
    fn validate_table() {
        let config = TierConfig::default();
        for (tier, production, expected) in [
            (Tier::Preferred, true, Ok(())),
            (Tier::Preferred, false, Ok(())),
            (Tier::Preemptible, false, Ok(())),
            (Tier::Revocable, false, Ok(())),
            (
                Tier::Preemptible,
                true,
                Err("tier: a production job cannot run in tier preemptible, which is preemptible"),
            ),
            (
                Tier::Revocable,
                true,
                Err("tier: a production job cannot run in tier revocable, which is revocable"),
            ),
        ] {
            assert_eq!(
                config.validate(tier, production),
                expected.map_err(String::from),
                "{tier:?} production {production}"
            );
        }
    }

    #[test]
    fn preemptible_table() {
        let config = TierConfig::default();
        let mut task = TaskConfig {
            job: "r/e/n".parse().unwrap(),
            command: "true".into(),
            resources: crate::Resources::ZERO,
            port_names: vec![],
            constraints: vec![],
            tier: Tier::Preferred,
            priority: 0,
            production: true,
            is_service: false,
            max_task_failures: 1,
            finalization_wait_secs: 0,
            health_check: None,
            http_lifecycle: None,
            sla_policy: None,
            partition_policy: None,
        };
        for (tier, production, expected) in [
            (Tier::Preferred, true, false),
            (Tier::Preferred, false, true),
            (Tier::Preemptible, false, true),
            (Tier::Preemptible, true, true),
            (Tier::Revocable, false, true),
        ] {
            task.tier = tier;
            task.production = production;
            assert_eq!(
                config.is_preemptible(&task),
                expected,
                "{tier:?} {production}"
            );
        }
    }

    fn any_settings() -> impl Strategy<Value = TierSettings> {
        (any::<bool>(), any::<bool>()).prop_map(|(preemptible, revocable)| TierSettings {
            preemptible,
            revocable,
        })
    }

    proptest! {
        #[test]
        fn json_roundtrips(
            default in prop::sample::select(Tier::ALL.to_vec()),
            preemptible in any_settings(),
            revocable in any_settings(),
        ) {
            let config = TierConfig::new(
                default,
                [TierSettings::default(), preemptible, revocable],
            ).unwrap();
            prop_assert_eq!(TierConfig::parse_json(&config.to_json()), Ok(config));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[ -~\n]{0,120}") {
            let _ = TierConfig::parse_json(&text);
        }

        #[test]
        fn resolved_production_tier_always_validates(
            explicit in prop::option::of(prop::sample::select(Tier::ALL.to_vec())),
            default in prop::sample::select(Tier::ALL.to_vec()),
        ) {
            let config = TierConfig::new(default, TierConfig::default().settings).unwrap();
            if explicit.is_none() {
                prop_assert_eq!(config.validate(config.resolve(None, true), true), Ok(()));
            }
            prop_assert_eq!(config.validate(config.resolve(explicit, false), false), Ok(()));
        }
    }
}
