//! What `scripts/install.sh` installs beside the binaries: each program
//! writes its own man page and completion scripts from the same clap
//! definitions as its `--help`, so every option `--help` shows is in them.

use std::process::Command;

use striper_tests::harness::{self, TempDir};

/// The long options a program's `--help` lists.
fn long_options(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split([' ', ',']).find(|w| w.starts_with("--")))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .filter(|w| w.len() > 2)
        .collect()
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(harness::bin(bin))
        .args(args)
        .output()
        .expect("run the binary");
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_pages_and_completions_carry_every_option() {
    let dir = TempDir::new("install");
    let d = dir.path().to_str().unwrap().to_string();
    for bin in ["stripe-client", "stripe-server"] {
        let options = long_options(&run(bin, &["--help"]));
        assert!(options.len() >= 15, "{bin} --help lists {options:?}");
        run(bin, &["man", &d]);
        // roff escapes hyphens as \-.
        let page = std::fs::read_to_string(dir.path().join(format!("{bin}.1")))
            .expect("the man page")
            .replace("\\-", "-");
        assert!(
            page.contains(&format!(".TH {bin} 1")),
            "{bin}.1 is a man page"
        );
        for shell in ["bash", "zsh", "fish"] {
            run(bin, &["completions", shell, &d]);
        }
        let scripts = [
            format!("{bin}.bash"),
            format!("_{bin}"),
            format!("{bin}.fish"),
        ];
        for opt in &options {
            assert!(page.contains(opt.as_str()), "{bin}.1 lacks {opt}");
            for s in &scripts {
                let text =
                    std::fs::read_to_string(dir.path().join(s)).expect("a completion script");
                let bare = opt.trim_start_matches('-');
                assert!(text.contains(bare), "{s} lacks {opt}");
            }
        }
    }
}
