//! The gateway's fuzz targets (`proto/fuzz`) on their checked-in corpus:
//! every seed and every input that once crashed stays a regression test.

use std::path::Path;

fn corpus(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} panics", path.display());
        n += 1;
    }
    assert!(n > 0, "{}: empty corpus", dir.display());
}

#[test]
fn fuzz_corpus_registry_document() {
    corpus(
        "registry_document",
        fanout_gateway::fuzzing::registry_document_target,
    );
}

#[test]
fn fuzz_corpus_admin_body() {
    corpus("admin_body", fanout_gateway::fuzzing::admin_body_target);
}

#[test]
fn fuzz_corpus_spill_segment() {
    corpus(
        "spill_segment",
        fanout_gateway::fuzzing::spill_segment_target,
    );
}
