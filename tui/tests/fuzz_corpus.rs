//! The `sse_stream` fuzz target (`proto/fuzz`) on its checked-in corpus.

use std::path::Path;

#[test]
fn fuzz_corpus_sse_stream() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/fuzz/corpus/sse_stream");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        fanout_tui::sse::fuzz_target(&data);
        n += 1;
    }
    assert!(n > 0);
}
