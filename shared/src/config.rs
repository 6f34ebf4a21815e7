//! Config loading shared by the binaries: an optional TOML file whose top-level keys are the
//! long flag names (`snake_case` or `kebab-case`). Precedence: command line, then environment,
//! then the file, then the documented defaults.

use std::ffi::OsString;
use std::path::Path;

/// A config file that cannot be used; `main` prints it as one line and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: line {line}: {message}")]
    Parse { path: String, line: usize, message: String },
    #[error("config file {path}: key {key}: {why}")]
    Value { path: String, key: String, why: &'static str },
}

/// The process arguments with the config file's keys spliced in as flags right after the
/// program name, so flags given on the command line come later and win (use clap's
/// `args_override_self`). A key whose environment variable (`{env_prefix}{KEY}`) is set is
/// skipped, so the environment beats the file. The file comes from `--config PATH` or
/// `{env_prefix}CONFIG`.
pub fn args_with_file(env_prefix: &str) -> Result<Vec<OsString>, ConfigError> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let path = config_path(&args).or_else(|| std::env::var(format!("{env_prefix}CONFIG")).ok());
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let flags = file_flags(&path, &text, |key| {
        std::env::var_os(format!("{env_prefix}{}", key.replace('-', "_").to_uppercase())).is_some()
    })?;
    let mut out = Vec::with_capacity(args.len() + flags.len());
    out.extend(args.iter().take(1).cloned());
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args.into_iter().skip(1));
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<String> {
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(|s| s.into_owned());
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.to_owned());
        }
    }
    None
}

/// Turns the file's keys into `--flag=value` arguments. Arrays repeat the flag; a table
/// becomes `--flag=KEY=V1,V2` per entry (for maps such as geo pools).
pub fn file_flags(
    path: &str,
    text: &str,
    env_has: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        line: e.span().map_or(1, |s| text[..s.start.min(text.len())].lines().count().max(1)),
        message: e.message().trim().replace('\n', " "),
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let flag = key.replace('_', "-");
        if flag == "config" || env_has(&flag) {
            continue;
        }
        let bad = |why| ConfigError::Value { path: path.into(), key: key.clone(), why };
        match value {
            toml::Value::Boolean(true) => flags.push(format!("--{flag}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    let v = match item {
                        // `[[rooms]]` tables: one `--rooms k=v,k=v` flag per table.
                        toml::Value::Table(map) => map
                            .iter()
                            .map(|(k, v)| scalar(v).map(|v| format!("{k}={v}")))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| bad("tables in an array hold scalars"))?
                            .join(","),
                        v => scalar(v).ok_or_else(|| bad("arrays hold scalars or tables"))?,
                    };
                    flags.push(format!("--{flag}={v}"));
                }
            }
            toml::Value::Table(map) => {
                for (k, v) in map {
                    let v = match v {
                        toml::Value::Array(items) => items
                            .iter()
                            .map(scalar)
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| bad("table values are scalars or arrays of scalars"))?
                            .join(","),
                        v => scalar(v)
                            .ok_or_else(|| bad("table values are scalars or arrays of scalars"))?,
                    };
                    flags.push(format!("--{flag}={k}={v}"));
                }
            }
            v => flags
                .push(format!("--{flag}={}", scalar(v).ok_or_else(|| bad("unsupported value"))?)),
        }
    }
    Ok(flags)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A clap value parser for durations given as seconds (`1`, `0.5`), the unit every flag of
/// the binaries uses.
pub fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{s:?} must be a non-negative number of seconds"))
}

/// Whether `path` exists; used for clear start-up errors on file options.
pub fn require_file(path: &Path, what: &str) -> Result<(), String> {
    if path.is_file() { Ok(()) } else { Err(format!("{what} {}: no such file", path.display())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_become_flags() {
        let text = r#"
listen = "0.0.0.0:8080"
reuse_port = true
verbose = false
node = ["a=127.0.0.1:1", "b=127.0.0.1:2"]
max_conns = 10
[pools]
DE = ["a", "b"]
"#;
        let flags = file_flags("r.toml", text, |k| k == "max-conns").unwrap();
        assert_eq!(
            flags,
            vec![
                "--listen=0.0.0.0:8080",
                "--node=a=127.0.0.1:1",
                "--node=b=127.0.0.1:2",
                "--pools=DE=a,b",
                "--reuse-port",
            ]
        );
    }

    #[test]
    fn arrays_of_tables_become_one_flag_each() {
        let text = r#"
[[rooms]]
pattern = "chat:*"
history_size = 50
[[rooms]]
pattern = "*"
history_ttl = 1.5
"#;
        let flags = file_flags("n.toml", text, |_| false).unwrap();
        assert_eq!(
            flags,
            vec!["--rooms=history_size=50,pattern=chat:*", "--rooms=history_ttl=1.5,pattern=*"]
        );
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_secs("1.5"), Ok(std::time::Duration::from_millis(1500)));
        assert_eq!(parse_secs("0"), Ok(std::time::Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("inf").is_err());
    }

    #[test]
    fn bad_files_name_the_path() {
        let e = file_flags("x.toml", "listen = ", |_| false).unwrap_err();
        assert!(e.to_string().starts_with("config file x.toml:"), "{e}");
        let e = file_flags("x.toml", "a = [[1]]", |_| false).unwrap_err();
        assert!(e.to_string().contains("key a"), "{e}");
    }
}
