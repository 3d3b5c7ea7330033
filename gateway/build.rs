//! Records the source revision for `fanout_build_info` and `fanout --version`:
//! `FANOUT_REVISION` when set (an image built without `.git`), else the
//! commit `git` reports for the workspace, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FANOUT_REVISION");
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("FANOUT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FANOUT_REVISION={revision}");
}
