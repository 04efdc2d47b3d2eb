//! `[[plugins]]`: out-of-process provider plugins (protocol `authgate.plugin.v1`).

use super::{err, validate_id, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables the gateway sets for the handshake; a plugin's `env` may not.
pub const RESERVED_ENV_PREFIX: &str = "AUTHGATE_PLUGIN_";

/// One `[[plugins]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The provider kind credentials name (`provider = "<kind>"`); the plugin must
    /// describe itself with the same kind.
    pub kind: String,
    /// The executable and its arguments. `command[0]` is an absolute path or a name found
    /// on `PATH`; its SHA-256 is checked before every start.
    pub command: Vec<String>,
    /// Hex SHA-256 of the file `command[0]` names (`sha256sum`).
    pub sha256: String,
    /// Extra environment variables. The plugin gets only these, `PATH`, `HOME`, `LANG`,
    /// `TMPDIR` and the handshake's: never the gateway's own (its key among them).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The plugin's working directory; the gateway's when unset.
    #[serde(default)]
    pub working_directory: Option<PathBuf>,
    /// Longest a call to the plugin may take (its upstream requests included); a plugin
    /// that does not answer in time is killed and restarted.
    #[serde(default = "default_call_timeout")]
    pub call_timeout_seconds: u64,
    /// Longest the plugin may take from its start to answering `Describe`.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_seconds: u64,
    /// How often the running plugin is asked `Describe` to see that it answers.
    #[serde(default = "default_health_interval")]
    pub health_check_interval_seconds: u64,
    /// Calls to the plugin in flight at once; more wait for a free one.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
}

fn default_call_timeout() -> u64 {
    60
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_health_interval() -> u64 {
    5
}
fn default_max_concurrent_calls() -> usize {
    32
}

// `env` may hold things the operator would rather not print; Debug names the variables only.
impl std::fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginConfig")
            .field("kind", &self.kind)
            .field("command", &self.command)
            .field("sha256", &self.sha256)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("working_directory", &self.working_directory)
            .field("call_timeout_seconds", &self.call_timeout_seconds)
            .finish_non_exhaustive()
    }
}

impl PluginConfig {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_seconds)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_seconds)
    }

    pub fn health_check_interval(&self) -> Duration {
        Duration::from_secs(self.health_check_interval_seconds)
    }

    /// The expected digest, lower-case.
    pub fn digest(&self) -> String {
        self.sha256.to_ascii_lowercase()
    }

    /// The file `command[0]` names: an absolute path as given, a bare name looked up on
    /// `PATH`, so the file whose digest is checked is the file that runs.
    pub fn executable(&self) -> Result<PathBuf, String> {
        let at = format!("plugins `{}`: command[0]", self.kind);
        let program = self
            .command
            .first()
            .ok_or_else(|| format!("{at} is missing"))?;
        let path = Path::new(program);
        if path.is_absolute() {
            return Ok(path.to_owned());
        }
        if program.contains('/') {
            return Err(format!(
                "{at} `{program}` is a relative path; give an absolute path (or a bare name found on PATH)"
            ));
        }
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| format!("{at} `{program}` is not on PATH"))
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let at = format!("plugins[{i}]");
        validate_id("kind", &self.kind).map_err(|m| err(format!("{at}.kind: {m}")))?;
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(err(format!(
                "{at}.command must name the plugin's executable, e.g. [\"/opt/authgate/plugins/my_plugin.py\"]"
            )));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!(
                "{at}.sha256 must be the 64 hex digits of the executable's SHA-256 (`sha256sum {}`)",
                self.command[0]
            )));
        }
        if let Some(name) = self.env.keys().find(|k| !valid_env_name(k)) {
            return Err(err(format!(
                "{at}.env: `{name}` is not a usable variable name (letters, digits, `_`; not starting with {RESERVED_ENV_PREFIX}, which the handshake sets)"
            )));
        }
        let ranges: [(bool, &str); 4] = [
            (
                (1..=600).contains(&self.call_timeout_seconds),
                "call_timeout_seconds must be between 1 and 600 (default 60)",
            ),
            (
                (1..=120).contains(&self.handshake_timeout_seconds),
                "handshake_timeout_seconds must be between 1 and 120 (default 10)",
            ),
            (
                (1..=300).contains(&self.health_check_interval_seconds),
                "health_check_interval_seconds must be between 1 and 300 (default 5)",
            ),
            (
                (1..=1024).contains(&self.max_concurrent_calls),
                "max_concurrent_calls must be between 1 and 1024 (default 32)",
            ),
        ];
        if let Some((_, message)) = ranges.into_iter().find(|(ok, _)| !ok) {
            return Err(err(format!("{at}.{message}")));
        }
        if let Some(dir) = &self.working_directory {
            if !dir.is_dir() {
                return Err(err(format!(
                    "{at}.working_directory `{}` is not a directory",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(RESERVED_ENV_PREFIX)
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Every `[[plugins]]` entry valid, kinds unique and not a built-in kind's.
pub fn validate(plugins: &[PluginConfig], builtin: &[&str]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in plugins.iter().enumerate() {
        p.validate(i)?;
        if builtin.contains(&p.kind.as_str()) {
            return Err(err(format!(
                "plugins[{i}].kind: `{}` is a built-in provider; give the plugin a kind of its own",
                p.kind
            )));
        }
        if !seen.insert(p.kind.as_str()) {
            return Err(err(format!(
                "plugins[{i}].kind: `{}` is configured twice; kinds must be unique",
                p.kind
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(toml_text: &str) -> PluginConfig {
        toml::from_str(toml_text).expect("parses")
    }

    const OK: &str = r#"
        kind = "acme"
        command = ["/bin/sh", "-c", "true"]
        sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    "#;

    #[test]
    fn defaults_and_a_valid_entry() {
        let p = plugin(OK);
        assert_eq!(p.call_timeout(), Duration::from_secs(60));
        assert_eq!(p.max_concurrent_calls, 32);
        validate(&[p], &["oauth2"]).unwrap();
    }

    #[test]
    fn each_mistake_is_named() {
        let cases = [
            (OK.replace("\"acme\"", "\"oauth2\""), "built-in provider"),
            (OK.replace("e3b0", "zz"), "64 hex digits"),
            (
                OK.replace("[\"/bin/sh\", \"-c\", \"true\"]", "[]"),
                "command must name",
            ),
            (
                format!("{OK}\nenv = {{ AUTHGATE_PLUGIN_SECRET = \"x\" }}"),
                "not a usable variable name",
            ),
            (
                format!("{OK}\ncall_timeout_seconds = 0"),
                "call_timeout_seconds must be",
            ),
            (
                format!("{OK}\nworking_directory = \"/nonexistent/dir\""),
                "is not a directory",
            ),
        ];
        for (text, expected) in cases {
            let e = validate(&[plugin(&text)], &["oauth2"]).unwrap_err().0;
            assert!(e.contains(expected) && e.starts_with("plugins[0]"), "{e}");
        }
        let twice = validate(&[plugin(OK), plugin(OK)], &[]).unwrap_err().0;
        assert!(twice.contains("configured twice"), "{twice}");
    }

    #[test]
    fn executable_is_absolute_or_found_on_path() {
        let mut p = plugin(OK);
        assert_eq!(p.executable().unwrap(), PathBuf::from("/bin/sh"));
        p.command[0] = "sh".into();
        assert!(p.executable().unwrap().is_absolute());
        p.command[0] = "bin/sh".into();
        assert!(p.executable().unwrap_err().contains("relative path"));
        p.command[0] = "no-such-program-here".into();
        assert!(p.executable().unwrap_err().contains("not on PATH"));
    }

    #[test]
    fn debug_shows_env_names_not_values() {
        let p = plugin(&format!("{OK}\nenv = {{ TOKEN = \"canary-value\" }}"));
        let shown = format!("{p:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("canary-value"),
            "{shown}"
        );
    }
}
