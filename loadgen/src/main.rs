//! `borealis-loadgen`: see the library for what a run does.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let config = borealis_loadgen::Config::parse();
    let json = config.json.clone();
    let report = match borealis_loadgen::run(config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("borealis-loadgen: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    if let Some(path) = json {
        if let Err(e) = std::fs::write(&path, report.to_json() + "\n") {
            eprintln!("borealis-loadgen: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.verified {
        ExitCode::SUCCESS
    } else {
        eprintln!("borealis-loadgen: the run FAILED verification; its figures are not valid");
        ExitCode::FAILURE
    }
}
