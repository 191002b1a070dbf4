//! Replays the fuzz corpus on stable Rust: every file in
//! `fuzz/corpus/<target>/` (seeds, grown and minimized by `cargo fuzz`) and
//! `fuzz/regressions/<target>/` (inputs that once crashed) goes through
//! the same `pipes::fuzzing` function as the libFuzzer target of that name.
//! A panic names the file; reproduce it with
//! `cargo fuzz run <target> <file>` or by running this test.
//!
//! `pipes::fuzzing` exists only with the `fuzzing` feature; `pipes` turns
//! it on for its own tests (a dev-dependency on itself), so a plain
//! `cargo test` or `cargo nextest run` runs this.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 3] = [
    ("frame", pipes::fuzzing::frame),
    ("handshake", pipes::fuzzing::handshake),
    ("session", pipes::fuzzing::session),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Every directory under `fuzz/<kind>/` must name a target: a typo would
/// silently skip its files.
fn check_dirs(kind: &str) {
    let Ok(entries) = fs::read_dir(fuzz_dir().join(kind)) else {
        return;
    };
    for e in entries {
        let p = e.expect("readable directory").path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/{kind}/{name} is not a fuzz target ({:?})",
            TARGETS.map(|t| t.0)
        );
    }
}

fn replay(kind: &str, must_exist: bool) {
    check_dirs(kind);
    for (target, run) in TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        let inputs = files(&dir);
        if must_exist {
            assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
        }
        let t0 = Instant::now();
        for path in &inputs {
            let data = fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(
                r.is_ok(),
                "fuzz/{kind}/{target}/{} failed",
                path.file_name().unwrap().to_string_lossy()
            );
        }
        println!(
            "{kind}/{target}: {} inputs in {:.2} s",
            inputs.len(),
            t0.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn corpus() {
    replay("corpus", true);
}

#[test]
fn regressions() {
    replay("regressions", false);
}
