//! `--config FILE`: deployments listed in TOML, each with its own plugin,
//! admission, limits and API key. A key left out takes the value of the
//! command-line flag (or its default), so a file states only what differs:
//!
//! ```toml
//! [[deployment]]
//! name = "calc"
//! plugin = "calc.wasm"          # relative to this file
//! max_concurrent = 50
//! cpu_budget = 5                # seconds
//! api_key_env = "CALC_API_KEY"  # or api_key = "..."
//! ```

use crate::runtime::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a deployment is served with: admission, limits and the API key of
/// its init and /platform/health.
#[derive(Debug, Clone)]
pub struct DeploymentSettings {
    /// Rollouts whose agent runs at once.
    pub max_concurrent: usize,
    /// Accepted rollouts that may wait for a slot; beyond, init answers 429.
    pub max_queued: usize,
    /// Per-rollout limits of the plugin.
    pub limits: Limits,
    pub api_key: Option<String>,
}

/// A deployment served from a plugin file.
#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub name: String,
    pub plugin: PathBuf,
    pub settings: DeploymentSettings,
}

/// Why a config file cannot be used (one line each, naming the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("config file {file}: deployment '{name}': {message}")]
    Invalid {
        file: PathBuf,
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    deployment: Vec<Entry>,
}

/// One `[[deployment]]` table: every key but `name` and `plugin` is
/// optional and named as its command-line flag (with `_` for `-`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    plugin: PathBuf,
    max_concurrent: Option<u32>,
    max_queued: Option<u32>,
    api_key: Option<String>,
    api_key_env: Option<String>,
    max_memory_mib: Option<u32>,
    cpu_budget: Option<f64>,
    rollout_timeout: Option<f64>,
    max_wasm_stack_kib: Option<u32>,
    chat_calls_per_turn: Option<u32>,
    max_log_event_kib: Option<u32>,
    max_guest_output_kib: Option<u32>,
    max_history_mib: Option<u32>,
    max_final_messages_mib: Option<u32>,
}

/// Reads `file`'s deployments, filling what each leaves out from `defaults`.
pub fn load(
    file: &Path,
    defaults: &DeploymentSettings,
) -> Result<Vec<DeploymentSpec>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    parse(&text, file, defaults, &|name| std::env::var(name).ok())
}

fn parse(
    text: &str,
    file: &Path,
    defaults: &DeploymentSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<DeploymentSpec>, ConfigError> {
    let parsed: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        message: one_line(&e, text),
    })?;
    if parsed.deployment.is_empty() {
        return Err(ConfigError::Parse {
            file: file.to_owned(),
            message: "no [[deployment]] tables".to_owned(),
        });
    }
    let base = file.parent().unwrap_or(Path::new(""));
    parsed
        .deployment
        .into_iter()
        .map(|entry| {
            let name = entry.name.clone();
            entry
                .into_spec(base, defaults, env)
                .map_err(|message| ConfigError::Invalid {
                    file: file.to_owned(),
                    name,
                    message,
                })
        })
        .collect()
}

/// toml's error as one line: its message and the line it points at (its
/// `Display` adds a multi-line excerpt of the source).
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().lines().next().unwrap_or("not valid TOML");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {message}")
        }
        None => message.to_owned(),
    }
}

impl Entry {
    fn into_spec(
        self,
        base: &Path,
        defaults: &DeploymentSettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DeploymentSpec, String> {
        if !crate::server::valid_name(&self.name) {
            return Err(
                "not a deployment name: use 1-64 letters, digits, '.', '_' or '-', starting \
                 with a letter or digit"
                    .to_owned(),
            );
        }
        if self.plugin.as_os_str().is_empty() {
            return Err("plugin is empty".to_owned());
        }
        let api_key = match (self.api_key, self.api_key_env) {
            (Some(_), Some(_)) => return Err("set api_key or api_key_env, not both".to_owned()),
            (Some(key), None) => Some(key),
            (None, Some(var)) => Some(env(&var).ok_or_else(|| {
                format!("api_key_env names {var}, which is not set in the environment")
            })?),
            (None, None) => defaults.api_key.clone(),
        }
        .filter(|key| !key.is_empty());
        let d = &defaults.limits;
        let limits = Limits {
            max_memory_bytes: mib(self.max_memory_mib, 1..=65536, "max_memory_mib")?
                .unwrap_or(d.max_memory_bytes),
            cpu_budget: seconds(self.cpu_budget, "cpu_budget")?.unwrap_or(d.cpu_budget),
            wall_clock: seconds(self.rollout_timeout, "rollout_timeout")?.unwrap_or(d.wall_clock),
            max_wasm_stack_bytes: kib(self.max_wasm_stack_kib, 64..=65536, "max_wasm_stack_kib")?
                .unwrap_or(d.max_wasm_stack_bytes),
            chat_calls_per_turn: at_least_one(self.chat_calls_per_turn, "chat_calls_per_turn")?
                .unwrap_or(d.chat_calls_per_turn),
            max_log_event_bytes: kib(self.max_log_event_kib, 0..=u32::MAX, "max_log_event_kib")?
                .unwrap_or(d.max_log_event_bytes),
            max_history_bytes: mib(self.max_history_mib, 0..=u32::MAX, "max_history_mib")?
                .unwrap_or(d.max_history_bytes),
            max_final_messages_bytes: mib(
                self.max_final_messages_mib,
                0..=u32::MAX,
                "max_final_messages_mib",
            )?
            .unwrap_or(d.max_final_messages_bytes),
            max_guest_output_bytes: kib(
                self.max_guest_output_kib,
                0..=u32::MAX,
                "max_guest_output_kib",
            )?
            .unwrap_or(d.max_guest_output_bytes),
        };
        Ok(DeploymentSpec {
            name: self.name,
            plugin: base.join(self.plugin),
            settings: DeploymentSettings {
                max_concurrent: at_least_one(self.max_concurrent, "max_concurrent")?
                    .map_or(defaults.max_concurrent, |n| n as usize),
                max_queued: self.max_queued.map_or(defaults.max_queued, |n| n as usize),
                limits,
                api_key,
            },
        })
    }
}

fn in_range(
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
    key: &str,
) -> Result<Option<u32>, String> {
    match value {
        Some(v) if !range.contains(&v) => Err(format!(
            "{key} is {v}; it must be {} to {}",
            range.start(),
            range.end()
        )),
        v => Ok(v),
    }
}

fn mib(
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
    key: &str,
) -> Result<Option<usize>, String> {
    Ok(in_range(value, range, key)?.map(|v| (v as usize) << 20))
}

fn kib(
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
    key: &str,
) -> Result<Option<usize>, String> {
    Ok(in_range(value, range, key)?.map(|v| (v as usize) << 10))
}

fn at_least_one(value: Option<u32>, key: &str) -> Result<Option<u32>, String> {
    in_range(value, 1..=u32::MAX, key)
}

fn seconds(value: Option<f64>, key: &str) -> Result<Option<Duration>, String> {
    value
        .map(|secs| {
            Duration::try_from_secs_f64(secs).map_err(|_| {
                format!("{key} is {secs}; it must be a non-negative number of seconds")
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> DeploymentSettings {
        DeploymentSettings {
            max_concurrent: 100,
            max_queued: 1000,
            limits: Limits::default(),
            api_key: Some("server-key".to_owned()),
        }
    }

    fn parse_str(text: &str) -> Result<Vec<DeploymentSpec>, String> {
        parse(
            text,
            Path::new("/etc/rh/config.toml"),
            &defaults(),
            &|var| (var == "CALC_KEY").then(|| "from-env".to_owned()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_deployment_overrides_what_it_names_and_inherits_the_rest() {
        let specs = parse_str(
            r#"
            [[deployment]]
            name = "calc"
            plugin = "plugins/calc.wasm"
            max_concurrent = 8
            cpu_budget = 0.5
            max_memory_mib = 64
            api_key_env = "CALC_KEY"

            [[deployment]]
            name = "search"
            plugin = "/srv/search.wasm"
            "#,
        )
        .unwrap();
        let calc = &specs[0];
        assert_eq!(calc.plugin, Path::new("/etc/rh/plugins/calc.wasm"));
        assert_eq!(calc.settings.max_concurrent, 8);
        assert_eq!(calc.settings.max_queued, 1000);
        assert_eq!(calc.settings.limits.cpu_budget, Duration::from_millis(500));
        assert_eq!(calc.settings.limits.max_memory_bytes, 64 << 20);
        assert_eq!(
            calc.settings.limits.wall_clock,
            Limits::default().wall_clock
        );
        assert_eq!(calc.settings.api_key.as_deref(), Some("from-env"));
        let search = &specs[1];
        assert_eq!(search.plugin, Path::new("/srv/search.wasm"));
        assert_eq!(search.settings.max_concurrent, 100);
        assert_eq!(search.settings.api_key.as_deref(), Some("server-key"));
        assert_eq!(search.settings.limits, Limits::default());
    }

    #[test]
    fn mistakes_are_one_line_naming_the_file_and_the_key() {
        for (text, expected) in [
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\nmax_concurent = 3",
                "unknown field `max_concurent`",
            ),
            ("[[deployment]]\nname = \"a\"", "missing field `plugin`"),
            ("", "no [[deployment]] tables"),
            ("[server]\nport = 1", "unknown field `server`"),
            (
                "[[deployment]]\nname = \"a b\"\nplugin = \"a.wasm\"",
                "deployment 'a b': not a deployment name",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\nmax_memory_mib = 0",
                "max_memory_mib is 0; it must be 1 to 65536",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\ncpu_budget = -1",
                "cpu_budget is -1",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\nmax_concurrent = 0",
                "max_concurrent is 0",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\napi_key_env = \"NOPE\"",
                "NOPE, which is not set",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\napi_key = \"k\"\napi_key_env = \"CALC_KEY\"",
                "not both",
            ),
            (
                "[[deployment]\nname = 1",
                "config file /etc/rh/config.toml: line 1: ",
            ),
            (
                "[[deployment]]\nname = \"a\"\nplugin = \"a.wasm\"\ncpu_budget = \"5s\"",
                "line 4: invalid type",
            ),
        ] {
            let error = parse_str(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(
                error.starts_with("config file /etc/rh/config.toml: "),
                "{error}"
            );
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
