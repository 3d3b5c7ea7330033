//! The prost code in `src/gen/` is generated from `proto/*.proto` and checked in,
//! so a build needs no `protoc`. This test regenerates it with protox (a pure
//! Rust protobuf compiler) and fails on any difference.
//!
//! To update the checked-in code after editing a `.proto` file:
//! `FANOUT_REGENERATE=1 cargo test -p fanout-proto --test generated`.

use std::path::Path;

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = ["proto/remote_v1.proto", "proto/remote_v2.proto"];
    let fds = protox::compile(files, [root]).expect("compile .proto files");

    let out = tempfile::tempdir().expect("temp dir");
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("generate Rust code");

    let checked_in = root.join("src/gen");
    let regenerate = std::env::var_os("FANOUT_REGENERATE").is_some();
    for name in ["prometheus.rs", "io.prometheus.write.v2.rs"] {
        let fresh = std::fs::read_to_string(out.path().join(name)).expect("generated file");
        let path = checked_in.join(name);
        if regenerate {
            std::fs::write(&path, &fresh).expect("write generated file");
            continue;
        }
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            old == fresh,
            "{} is stale: run FANOUT_REGENERATE=1 cargo test -p fanout-proto --test generated",
            path.display()
        );
    }
}
