//! Generates the flatbuffers code from `schema/borealis.fbs` with a flatc built from source by
//! the `flatc` crate, so a fresh machine reproduces it with no system flatc (Debian's 2.0.8 is
//! incompatible with the runtime crate). The flatc version and the `flatbuffers` runtime crate
//! are pinned to the same release (23.5.26).
use std::path::Path;
use std::process::Command;

fn main() {
    let schema = "schema/borealis.fbs";
    println!("cargo:rerun-if-changed={schema}");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let status = Command::new(flatc::flatc())
        .args(["--rust", "-o", &out_dir, schema])
        .status()
        .expect("run flatc");
    assert!(status.success(), "flatc failed on {schema}");
    assert!(Path::new(&out_dir).join("borealis_generated.rs").exists());
}
