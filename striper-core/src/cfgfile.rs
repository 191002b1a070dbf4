//! `--config FILE`: a TOML file that can say everything the flags say.
//!
//! Each key is a long option's name (`window = "8M"`, `stripes = 8`,
//! `insecure-no-auth = true`); the file's settings become flags put in
//! front of the command line's own, so a flag given on the command line
//! overrides the file and every value goes through the same parsers and
//! checks as a flag. A key that is no option of the program is an error
//! naming the key and its line.
//!
//! [`Reload`] reads the file again (SIGHUP) and says which options changed.

use std::ffi::OsString;
use std::path::Path;

use clap::ArgAction;

/// `args` (the program's, the name first) with the settings of the
/// `--config FILE` among them added, for `app`'s parser.
pub fn with_config(args: Vec<OsString>, app: &clap::Command) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let settings =
        settings(&text, app).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let given = |long: &str| {
        let flag = format!("--{long}");
        args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        })
    };
    let mut out = vec![args[0].clone()];
    for (long, values) in settings {
        if !given(&long) {
            out.extend(values.into_iter().map(OsString::from));
        }
    }
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

/// What a running program needs to read its config file again: its
/// command line, and the options as they were at start.
pub struct Reload {
    args: Vec<OsString>,
    path: Option<std::path::PathBuf>,
    running: clap::ArgMatches,
}

impl Reload {
    /// The program's command line and options as `app` parsed them at
    /// start (its config file read once more: a moment after the first).
    pub fn new(app: &clap::Command) -> Result<Reload, String> {
        let args: Vec<OsString> = std::env::args_os().collect();
        let running = matches(&args, app)?;
        Ok(Reload {
            path: config_path(&args),
            args,
            running,
        })
    }

    /// The config file, if the program has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The options from the command line and the file as it is now, and
    /// the long names of the options that `live` says cannot change at run
    /// time but whose values differ from the ones the program started with
    /// (the program keeps its running values for those).
    pub fn read<O: clap::Parser>(
        &self,
        live: impl Fn(&str) -> bool,
    ) -> Result<(O, Vec<String>), String> {
        let app = O::command();
        let now = matches(&self.args, &app)?;
        let opts = O::from_arg_matches(&now).map_err(|e| first_line(&e.render().to_string()))?;
        let raw = |m: &clap::ArgMatches, id: &str| -> Vec<OsString> {
            m.try_get_raw(id)
                .ok()
                .flatten()
                .map_or_else(Vec::new, |v| v.map(OsString::from).collect())
        };
        let changed = app
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?, a.get_id().as_str())))
            .filter(|&(long, id)| {
                long != "config" && !live(long) && raw(&self.running, id) != raw(&now, id)
            })
            .map(|(long, _)| long.to_string())
            .collect();
        Ok((opts, changed))
    }
}

/// `args` with its config file's settings, parsed by `app`.
fn matches(args: &[OsString], app: &clap::Command) -> Result<clap::ArgMatches, String> {
    let args = with_config(args.to_vec(), app)?;
    app.clone()
        .try_get_matches_from(args)
        .map_err(|e| first_line(&e.render().to_string()))
}

/// A clap error's first line, without its `error: `.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text);
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The file named by `--config FILE` or `--config=FILE`, if any.
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--config" {
            return it.next().map(|p| Path::new(p).to_path_buf());
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(Path::new(p).to_path_buf());
        }
    }
    None
}

/// The file's settings as flags: `(option, ["--option", "value", ...])`.
fn settings(text: &str, app: &clap::Command) -> Result<Vec<(String, Vec<String>)>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .map_or(String::new(), |l| format!("line {l}: "));
        format!("{line}not valid TOML: {}", e.message())
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let line = line_of(text, &key);
        let arg = app
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config" && !a.is_hide_set())
            .ok_or_else(|| {
                format!(
                    "line {line}: unknown key `{key}` (the keys are the long options of --help)"
                )
            })?;
        let flag = format!("--{key}");
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let one = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(format!(
                    "line {line}: `{key}` must be a string or a number, not {}",
                    other.type_str()
                )),
            }
        };
        let flags = match (&value, is_switch) {
            (toml::Value::Boolean(true), true) => vec![flag],
            (toml::Value::Boolean(false), true) => Vec::new(),
            (_, true) => return Err(format!("line {line}: `{key}` is a switch: true or false")),
            (toml::Value::Array(items), false) => {
                let mut v = Vec::new();
                for item in items {
                    v.push(flag.clone());
                    v.push(one(item)?);
                }
                v
            }
            (v, false) => vec![flag, one(v)?],
        };
        out.push((key, flags));
    }
    Ok(out)
}

/// The line where `key` is set (1-based), for messages.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn app() -> Command {
        Command::new("t")
            .arg(Arg::new("window").long("window"))
            .arg(Arg::new("stripes").long("stripes"))
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
    }

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_settings_come_first_and_flags_override_them() {
        let dir = std::env::temp_dir().join(format!("striper-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "# a comment\nwindow = \"8M\"\nstripes = 8\nquiet = true\n",
        )
        .unwrap();
        let fs = f.to_str().unwrap();
        let out = with_config(argv(&["t", "--config", fs, "--stripes", "2"]), &app()).unwrap();
        let out: Vec<&str> = out.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "t",
                "--quiet",
                "--window",
                "8M",
                "--config",
                fs,
                "--stripes",
                "2"
            ]
        );
        std::fs::write(&f, "window = \"8M\"\n\nwindwo = 3\n").unwrap();
        let e = with_config(argv(&["t", &format!("--config={fs}")]), &app()).unwrap_err();
        assert!(e.contains("line 3: unknown key `windwo`"), "{e}");
        std::fs::write(&f, "quiet = 1\n").unwrap();
        let e = with_config(argv(&["t", "--config", fs]), &app()).unwrap_err();
        assert!(e.contains("line 1: `quiet` is a switch"), "{e}");
        std::fs::write(&f, "window = [\n").unwrap();
        let e = with_config(argv(&["t", "--config", fs]), &app()).unwrap_err();
        assert!(e.contains("not valid TOML"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            with_config(argv(&["t", "--config", "/nonexistent/x.toml"]), &app())
                .unwrap_err()
                .contains("cannot read config file")
        );
    }
}
