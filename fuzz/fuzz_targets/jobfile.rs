//! The job file parser the CLI reads job files with (`borealis_core::jobfile::parse_job_file`)
//! on arbitrary UTF-8 text, then the config validator (`validate::validate_task_config`) on
//! whatever parses. Properties:
//! - nothing panics; errors display as one line (no line break of any kind);
//! - what parses is valid (the parser's own last step is the validator: they must agree);
//! - a parsed spec rendered back as a job file (`JobSpec::to_toml`, what `update info` diffs)
//!   parses to the same spec;
//! - the spec as the CLI sends it (`Encoder::create_job_spec`) decodes on the scheduler's side
//!   to the same config.
#![no_main]

use borealis_core::jobfile::parse_job_file;
use borealis_core::validate::validate_task_config;
use borealis_core::JobKey;
use borealis_net::codec::to_owned;
use borealis_net::views::OwnedMessage;
use borealis_net::{decode_message, Encoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let job: JobKey = "www/prod/fuzz".parse().expect("a valid key");
    let spec = match parse_job_file(job.clone(), text) {
        Ok(spec) => spec,
        Err(e) => {
            let line = e.to_string();
            assert!(
                !line.contains(['\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}']),
                "a job file error spans lines: {line:?}"
            );
            return;
        }
    };
    if let Err(e) = validate_task_config(&spec.config) {
        panic!("the parser accepted a config the validator refuses: {e:?}");
    }
    assert!(spec.instances >= 1);

    // Rendered back as a job file, it reads the same.
    let rendered = spec.to_toml();
    match parse_job_file(job.clone(), &rendered) {
        Ok(again) => assert_eq!(again, spec, "to_toml does not round-trip:\n{rendered}"),
        Err(e) => panic!("to_toml renders a job file the parser refuses ({e}):\n{rendered}"),
    }

    // As the CLI sends it.
    let tier_explicit = borealis_fuzz::names_tier(text);
    let mut encoder = Encoder::new();
    let bytes = encoder
        .create_job_spec(1, spec.instances, &spec.config, tier_explicit)
        .to_vec();
    let message = decode_message(&bytes).expect("the encoder's output verifies");
    match to_owned(message).expect("the encoder's output decodes") {
        (
            1,
            OwnedMessage::CreateJob {
                job_key,
                instances,
                config,
                tier_unset,
            },
        ) => {
            assert_eq!(job_key, job);
            assert_eq!(instances, spec.instances);
            assert_eq!(tier_unset, !tier_explicit);
            assert_eq!(config, spec.config, "the config changed on the wire");
        }
        other => panic!("a create decoded as {other:?}"),
    }
});
