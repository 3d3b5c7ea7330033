//! The gateway's top-level modules keep their seams: `ingest` and `deliver`
//! meet only through `handoff`, `budget` and `units` (lib.rs), so neither
//! imports the other. A `use crate::deliver` in ingest (or the reverse)
//! fails here, with the file and line.

use std::fs;
use std::path::Path;

/// Every `crate::<forbidden>` path in the Rust files under `dir`, as
/// `file:line: text`. Comments are skipped.
fn imports_of(dir: &Path, forbidden: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = fs::read_to_string(&path).expect("read source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains(&format!("crate::{forbidden}")) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn ingest_and_deliver_do_not_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let ingest = imports_of(&src.join("ingest"), "deliver");
    assert!(
        ingest.is_empty(),
        "ingest imports deliver:\n{}",
        ingest.join("\n")
    );
    let deliver = imports_of(&src.join("deliver"), "ingest");
    assert!(
        deliver.is_empty(),
        "deliver imports ingest:\n{}",
        deliver.join("\n")
    );
}
