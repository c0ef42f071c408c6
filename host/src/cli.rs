//! Command-line flags (`rollout-host --help`).

use crate::config_file::{self, ConfigError, DeploymentSettings, DeploymentSpec};
use crate::runtime::{AllocatorChoice, CompileCache, Limits};
use crate::server::{RedisSettings, ServerConfig};
use crate::trainer::RetryPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Serve the Remote Rollout protocol with an agent loop compiled to a
/// WebAssembly component, or try one on a dataset (`rollout-host test`).
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Parser)]
#[command(
    name = "rollout-host",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand, rollout-host serves.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Remote Rollout protocol (what `rollout-host --plugin P` does).
    Serve(Box<ServeArgs>),
    /// Run a plugin over a dataset against an OpenAI-compatible LLM, as a
    /// trainer would run it: same sandbox, limits and host calls.
    Test(Box<TestArgs>),
}

impl Cli {
    /// What to do: `serve` unless a subcommand says otherwise.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(Box::new(self.serve)))
    }
}

/// Flags of `rollout-host serve` (and of `rollout-host` alone).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The agent plugin: a wasm component built against wit/rollout.wit.
    /// `NAME=PATH` serves it as deployment NAME, under
    /// /deployments/NAME/ (repeat for several); a bare PATH is the
    /// deployment `default`. The root routes serve the one named `default`,
    /// else the first.
    #[arg(
        long,
        env = "ROLLOUT_PLUGIN",
        value_name = "[NAME=]PATH",
        required_unless_present = "config",
        value_parser = deployment_plugin
    )]
    pub plugin: Vec<(String, PathBuf)>,

    /// Deployments listed in a TOML file, each with its plugin and, where it
    /// differs from the flags, its own max_concurrent, max_queued, sandbox
    /// limits and API key (see the README). Adds to --plugin's.
    #[arg(long, env = "ROLLOUT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Turn on the admin API (/admin/deployments: list, upload, delete
    /// deployments), which then requires `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "ROLLOUT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Largest plugin the admin API accepts, in MiB.
    #[arg(
        long,
        env = "ROLLOUT_MAX_UPLOAD_MIB",
        default_value_t = 256,
        value_name = "MIB"
    )]
    pub max_upload_mib: u32,

    /// Swap in the plugin file again whenever it changes (checked every
    /// 0.5 s), without a restart: running rollouts finish on the plugin they
    /// started with. `SIGHUP` reloads it with or without this flag.
    #[arg(long, env = "ROLLOUT_RELOAD", value_parser = clap::builder::FalseyValueParser::new())]
    pub reload: bool,

    /// Load the plugin, ask it for its tools and check them, print what it
    /// offers and exit (0 when valid): nothing is served.
    #[arg(long)]
    pub validate: bool,

    /// Address to bind.
    #[arg(
        short = 'H',
        long,
        env = "ROLLOUT_SERVER_HOST",
        default_value = "0.0.0.0"
    )]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(short = 'p', long, env = "ROLLOUT_SERVER_PORT", default_value_t = 9000)]
    pub port: u16,

    /// Debug log directory: each rollout's log-events go to
    /// DIR/<server-start-unix-time>/<rollout_id>.jsonl. Off when unset.
    #[arg(long = "log", env = "ROLLOUT_DEBUG_DIR", value_name = "DIR")]
    pub log_dir: Option<PathBuf>,

    /// Require `Authorization: Bearer KEY` on init and /platform/health
    /// (a deployment in --config may have its own).
    #[arg(
        long,
        env = "ROLLOUT_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Rollouts whose agent runs at once; more wait for a slot. Running plus
    /// queued rollouts are capped by what this machine can hold (see
    /// /health's `capacity`); a larger value is lowered to it at start.
    #[arg(long, env = "ROLLOUT_MAX_CONCURRENT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,

    /// Accepted rollouts that may wait for a slot; beyond that, init answers 429 with Retry-After.
    #[arg(long, env = "ROLLOUT_MAX_QUEUED", default_value_t = 1000)]
    pub max_queued: u32,

    /// Seconds a finished rollout's init answer is kept for duplicate inits.
    #[arg(long, env = "ROLLOUT_RECORD_TTL", default_value = "3600", value_name = "SECS", value_parser = seconds)]
    pub record_ttl: Duration,

    /// Most finished rollouts' records kept for duplicate inits and status
    /// queries (about 250 bytes each); past it the oldest go first. A
    /// duplicate whose record has gone starts a new rollout, as after the
    /// TTL.
    #[arg(long, env = "ROLLOUT_MAX_RECORDS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: u64,

    /// Seconds an idle connection to the trainer stays open for reuse.
    #[arg(long, env = "ROLLOUT_TRAINER_IDLE_TIMEOUT", default_value = "30", value_name = "SECS", value_parser = seconds)]
    pub trainer_idle_timeout: Duration,

    /// Retries of the completion callback after 5xx, timeouts and transport errors.
    #[arg(long, env = "ROLLOUT_COMPLETION_RETRIES", default_value_t = 2)]
    pub completion_retries: u32,

    /// Seconds a callback the trainer could not take (down, failing) is
    /// tried again in the background, with backoff up to
    /// --retry-max-delay; with --state-dir, across restarts. 0: give up
    /// after --completion-retries.
    #[arg(long, env = "ROLLOUT_DELIVERY_DEADLINE", default_value = "3600", value_name = "SECS", value_parser = seconds)]
    pub delivery_deadline: Duration,

    /// Journal every accepted rollout in DIR (created 0700; the file holds
    /// the trainers' bearer tokens and is 0600) until its callback is
    /// delivered: after a crash or kill, a restart sends each rollout that
    /// was lost its one ERROR callback and redelivers callbacks still
    /// pending. Off when unset.
    #[arg(long, env = "ROLLOUT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Share idempotency keys, rollout status and /health totals with the
    /// other replicas behind the same address through this Redis
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`): a retried init that reaches
    /// another replica gets the first answer and starts nothing. Without
    /// it, each process keeps its own (one replica only).
    #[arg(
        long,
        env = "ROLLOUT_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = redis_url
    )]
    pub redis: Option<String>,

    /// What this server's Redis keys start with (several clusters may
    /// share one Redis under different prefixes).
    #[arg(
        long,
        env = "ROLLOUT_REDIS_PREFIX",
        default_value = "rollout-host",
        value_name = "PREFIX"
    )]
    pub redis_prefix: String,

    /// This replica's name among the others (in /health, status lookups
    /// and the `x-rollout-host-replica` response header); default
    /// HOSTNAME-PID.
    #[arg(long, env = "ROLLOUT_REPLICA_ID", value_name = "NAME", value_parser = replica_name)]
    pub replica_id: Option<String>,

    #[command(flatten)]
    pub chat: ChatArgs,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// On SIGTERM/SIGINT, seconds to let running rollouts finish before
    /// ending them with an ERROR callback.
    #[arg(long, env = "ROLLOUT_SHUTDOWN_GRACE", default_value = "30", value_name = "SECS", value_parser = seconds)]
    pub shutdown_grace: Duration,

    /// Instances whose pooled memory, stack and table stay resident between
    /// rollouts: up to this many rollouts in flight reuse warm pages (no
    /// page faults); instances beyond them give their pages back when they
    /// end, so memory reached in a burst returns. 0: none kept.
    #[arg(
        long,
        env = "ROLLOUT_WARM_SLOTS",
        default_value_t = 256,
        value_name = "N"
    )]
    pub warm_slots: u32,

    /// Log format on stderr (level filter: RUST_LOG, default info).
    #[arg(long, env = "ROLLOUT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Chat calls: timeouts and retries (serving and test mode).
#[derive(Debug, Args)]
#[command(next_help_heading = "Chat calls")]
pub struct ChatArgs {
    /// Per-attempt timeout of a chat call (to the trainer; in test mode, to
    /// the LLM), in seconds.
    #[arg(long, env = "ROLLOUT_CHAT_TIMEOUT", default_value = "300", value_name = "SECS", value_parser = seconds)]
    pub chat_timeout: Duration,

    /// Retries of a chat call after 5xx, timeouts and transport errors (4xx
    /// is final; test mode also waits out an LLM's 429 after its Retry-After).
    #[arg(long, env = "ROLLOUT_CHAT_RETRIES", default_value_t = 3)]
    pub chat_retries: u32,

    /// First retry delay in seconds; doubles per attempt up to --retry-max-delay.
    #[arg(long, env = "ROLLOUT_RETRY_BASE_DELAY", default_value = "1", value_name = "SECS", value_parser = seconds)]
    pub retry_base_delay: Duration,

    /// Longest retry delay in seconds.
    #[arg(long, env = "ROLLOUT_RETRY_MAX_DELAY", default_value = "30", value_name = "SECS", value_parser = seconds)]
    pub retry_max_delay: Duration,
}

/// The sandbox's limits on one rollout (serving and test mode).
#[derive(Debug, Args)]
#[command(next_help_heading = "Sandbox limits")]
pub struct SandboxArgs {
    /// Linear memory cap of one rollout's plugin instance, in MiB.
    #[arg(long, env = "ROLLOUT_MAX_MEMORY_MIB", default_value_t = 256, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_memory_mib: u32,

    /// CPU budget of one rollout: seconds of CPU time the plugin may use
    /// (measured per thread: waiting for the trainer's LLM, or for a core
    /// other processes hold, does not count).
    #[arg(long, env = "ROLLOUT_CPU_BUDGET", default_value = "30", value_name = "SECS", value_parser = seconds)]
    pub cpu_budget: Duration,

    /// Wall-clock deadline of one rollout, chat waits included, in seconds
    /// (also bounds get-tools at init).
    #[arg(long, env = "ROLLOUT_TIMEOUT", default_value = "1800", value_name = "SECS", value_parser = seconds)]
    pub rollout_timeout: Duration,

    /// Wasm stack limit of a plugin, in KiB (deep recursion traps beyond it).
    #[arg(long, env = "ROLLOUT_MAX_WASM_STACK_KIB", default_value_t = 512, value_name = "KIB", value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub max_wasm_stack_kib: u32,

    /// Hard cap on chat calls per rollout, as a multiple of its max_turns.
    #[arg(long, env = "ROLLOUT_CHAT_CALLS_PER_TURN", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub chat_calls_per_turn: u32,

    /// Largest log-event (name + JSON data) a plugin may send, in KiB.
    #[arg(
        long,
        env = "ROLLOUT_MAX_LOG_EVENT_KIB",
        default_value_t = 1024,
        value_name = "KIB"
    )]
    pub max_log_event_kib: u32,

    /// Plugin stdout + stderr logged per rollout, in KiB (each line counted
    /// with the log's own overhead); the rest is dropped and counted in one
    /// "output truncated" line.
    #[arg(
        long,
        env = "ROLLOUT_MAX_GUEST_OUTPUT_KIB",
        default_value_t = 64,
        value_name = "KIB"
    )]
    pub max_guest_output_kib: u32,

    /// Largest chat history (JSON) a plugin may send in one call, in MiB.
    #[arg(
        long,
        env = "ROLLOUT_MAX_HISTORY_MIB",
        default_value_t = 32,
        value_name = "MIB"
    )]
    pub max_history_mib: u32,

    /// Largest final_messages (JSON) a plugin may complete with, in MiB.
    #[arg(
        long,
        env = "ROLLOUT_MAX_FINAL_MESSAGES_MIB",
        default_value_t = 32,
        value_name = "MIB"
    )]
    pub max_final_messages_mib: u32,

    /// Instance allocator: pooling is faster and reserves address space up
    /// front; auto probes for it and falls back to on-demand.
    #[arg(long, env = "ROLLOUT_INSTANCE_ALLOCATOR", value_enum, default_value_t = AllocatorChoice::Auto)]
    pub instance_allocator: AllocatorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Init bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// The reference's metadata limit.
pub const METADATA_LIMIT: usize = 1 << 20;

fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("'{text}' is not a non-negative number of seconds"))
}

/// Flags of `rollout-host test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The agent plugin: a wasm component built against wit/rollout.wit.
    #[arg(long, env = "ROLLOUT_PLUGIN", value_name = "PATH")]
    pub plugin: PathBuf,

    /// The dataset: .json (array of objects), .jsonl, .csv or .parquet, with
    /// the columns system_prompt, user_prompt and ground_truth; other
    /// columns go into each rollout's metadata.
    #[arg(short = 'd', long, value_name = "PATH")]
    pub dataset: PathBuf,

    /// The model. A known provider prefix picks its endpoint and key
    /// variable (openai/gpt-4o, anthropic/..., openrouter/..., groq/...);
    /// any other name goes as is to --base-url.
    #[arg(short = 'm', long, default_value = "gpt-4o")]
    pub model: String,

    /// An OpenAI-compatible API, version path included
    /// (http://localhost:8000/v1): the host posts to {base-url}/chat/completions.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// The LLM's API key (default: the provider's environment variable,
    /// e.g. OPENAI_API_KEY).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,

    /// Rows to run (default: all from --offset).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Rows to skip first.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,

    /// The rollout's max_turns (LLM calls the agent may make).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: u32,

    /// max_tokens of each LLM call (default: the provider's).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,

    /// Sampling temperature (default: the provider's).
    #[arg(long)]
    pub temperature: Option<f64>,

    /// Rows in flight at once.
    #[arg(short = 'c', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Runs of each row; the summary gives pass@k for k up to N.
    #[arg(long = "n", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,

    /// A run passes when its reward is at least this.
    #[arg(long, default_value_t = 1.0)]
    pub pass_threshold: f64,

    /// Write the results (JSON) to FILE, the finished rows' even after Ctrl-C.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Each row's debug log (the plugin's log-events) under
    /// DIR/<start-unix-time>/test-<row>.jsonl.
    #[arg(long, value_name = "DIR")]
    pub debug: Option<PathBuf>,

    /// No progress, only the summary.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Step through rollouts in the terminal, one row at a time: pause
    /// before each LLM call (n: next call, c: continue to the end, m:
    /// messages, t: tools, q: quit).
    #[arg(short = 'i', long, conflicts_with_all = ["runs", "concurrency", "quiet"])]
    pub interactive: bool,

    /// With -i: the row to start at (default: --offset).
    #[arg(long, value_name = "N", requires = "interactive")]
    pub row: Option<usize>,

    #[command(flatten)]
    pub chat: ChatArgs,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The compile cache (serving and test mode).
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Where compiled plugins are kept (private to this user; each entry
    /// checked against its sha256 before use), so a restart or a swap back
    /// to a known build skips compiling it [default:
    /// $XDG_CACHE_HOME/rollout-host, else ~/.cache/rollout-host].
    #[arg(long, env = "ROLLOUT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile the plugin at every start and keep nothing on disk.
    #[arg(long, env = "ROLLOUT_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The cache directory, unless turned off.
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(CompileCache::default_dir)
    }
}

impl ChatArgs {
    /// The retry policy of chat calls (completion callbacks: `completion_retries`).
    pub fn retry_policy(&self, completion_retries: u32) -> RetryPolicy {
        RetryPolicy {
            chat_timeout: self.chat_timeout,
            chat_retries: self.chat_retries,
            completion_retries,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
            ..RetryPolicy::default()
        }
    }
}

impl SandboxArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_memory_bytes: (self.max_memory_mib as usize) << 20,
            cpu_budget: self.cpu_budget,
            wall_clock: self.rollout_timeout,
            max_wasm_stack_bytes: (self.max_wasm_stack_kib as usize) << 10,
            chat_calls_per_turn: self.chat_calls_per_turn,
            max_log_event_bytes: (self.max_log_event_kib as usize) << 10,
            max_history_bytes: (self.max_history_mib as usize) << 20,
            max_final_messages_bytes: (self.max_final_messages_mib as usize) << 20,
            max_guest_output_bytes: (self.max_guest_output_kib as usize) << 10,
        }
    }
}

impl ServeArgs {
    /// The server's configuration: the flags, and the deployments of
    /// `--plugin` and `--config`.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let defaults = DeploymentSettings {
            max_concurrent: self.max_concurrent as usize,
            max_queued: self.max_queued as usize,
            limits: self.sandbox.limits(),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
        };
        let mut plugins: Vec<DeploymentSpec> = self
            .plugin
            .iter()
            .map(|(name, path)| DeploymentSpec {
                name: name.clone(),
                plugin: path.clone(),
                settings: defaults.clone(),
            })
            .collect();
        if let Some(file) = &self.config {
            plugins.extend(config_file::load(file, &defaults)?);
        }
        Ok(ServerConfig {
            plugins,
            defaults,
            reload: self.reload,
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            max_upload_bytes: (self.max_upload_mib as usize) << 20,
            bind: SocketAddr::new(self.host, self.port),
            debug_dir: self.log_dir.clone(),
            state_dir: self.state_dir.clone(),
            redis: self.redis.clone().map(|url| RedisSettings {
                url,
                prefix: self.redis_prefix.clone(),
                replica: self
                    .replica_id
                    .clone()
                    .unwrap_or_else(crate::cluster::default_replica_id),
            }),
            delivery_deadline: self.delivery_deadline,
            record_ttl: self.record_ttl,
            max_records: usize::try_from(self.max_records).unwrap_or(usize::MAX),
            trainer_idle_timeout: self.trainer_idle_timeout,
            retry: self.chat.retry_policy(self.completion_retries),
            max_body_bytes: MAX_BODY_BYTES,
            metadata_limit: METADATA_LIMIT,
            shutdown_grace: self.shutdown_grace,
            allocator: self.sandbox.instance_allocator,
            warm_slots: self.warm_slots,
            compile_cache: self.cache.dir(),
        })
    }
}

/// `--redis`: a URL the Redis client takes (nothing is connected yet).
fn redis_url(value: &str) -> Result<String, String> {
    redis::Client::open(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a Redis URL ({e}); e.g. redis://host:6379"))
}

/// `--replica-id`: printable ASCII without spaces (it goes in a header).
fn replica_name(value: &str) -> Result<String, String> {
    if (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value.to_owned())
    } else {
        Err("use 1-128 printable ASCII characters without spaces".to_owned())
    }
}

/// `--plugin [NAME=]PATH`: a deployment's name and plugin file.
fn deployment_plugin(value: &str) -> Result<(String, PathBuf), String> {
    if let Some((name, path)) = value.split_once('=')
        && !name.contains('/')
    {
        if !crate::server::valid_name(name) {
            return Err(format!(
                "'{name}' cannot name a deployment: use 1-64 letters, digits, '.', '_' or '-', \
                 starting with a letter or digit"
            ));
        }
        if path.is_empty() {
            return Err(format!("deployment '{name}' needs a plugin path after '='"));
        }
        return Ok((name.to_owned(), PathBuf::from(path)));
    }
    if value.is_empty() {
        return Err("the plugin path is empty".to_owned());
    }
    Ok((
        crate::server::DEFAULT_DEPLOYMENT.to_owned(),
        PathBuf::from(value),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(args).map(Cli::into_command)
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let Command::Serve(serve) = parse(&[
            "rollout-host",
            "--plugin",
            "x.wasm",
            "-p",
            "8080",
            "--retry-base-delay",
            "0.05",
        ])
        .unwrap() else {
            panic!("serves without a subcommand")
        };
        assert_eq!(serve.port, 8080);
        assert_eq!(serve.chat.retry_base_delay, Duration::from_millis(50));
        assert!(parse(&["rollout-host", "--plugin", "x", "--chat-timeout", "-1"]).is_err());
        // `serve` is a synonym; --plugin is required either way.
        assert!(matches!(
            parse(&["rollout-host", "serve", "--plugin", "x"]),
            Ok(Command::Serve(s)) if s.plugin == [("default".to_owned(), "x".into())]
        ));
        assert!(parse(&["rollout-host"]).is_err());
        assert!(parse(&["rollout-host", "serve"]).is_err());
    }

    #[test]
    fn plugins_name_their_deployments() {
        let Ok(Command::Serve(serve)) = parse(&[
            "rollout-host",
            "--plugin",
            "calc=plugins/calc.wasm",
            "--plugin",
            "dir/with=sign/agent.wasm",
            "--plugin",
            "a=b=c.wasm",
        ]) else {
            panic!("parses")
        };
        assert_eq!(
            serve.plugin,
            [
                ("calc".to_owned(), "plugins/calc.wasm".into()),
                ("default".to_owned(), "dir/with=sign/agent.wasm".into()),
                ("a".to_owned(), "b=c.wasm".into()),
            ]
        );
        for bad in ["-x=a.wasm", "a b=c.wasm", "calc=", ""] {
            assert!(parse(&["rollout-host", "--plugin", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_flags_parse() {
        let Command::Test(test) = parse(&[
            "rollout-host",
            "test",
            "--plugin",
            "calc.wasm",
            "-d",
            "calc.jsonl",
            "--n",
            "4",
            "-c",
            "8",
            "--cpu-budget",
            "2",
            "-m",
            "openai/gpt-4o-mini",
        ])
        .unwrap() else {
            panic!("test subcommand")
        };
        assert_eq!((test.runs, test.concurrency, test.max_turns), (4, 8, 10));
        assert_eq!(test.sandbox.limits().cpu_budget, Duration::from_secs(2));
        assert_eq!(test.model, "openai/gpt-4o-mini");
        // --row needs -i; the dataset is required.
        assert!(
            parse(&[
                "rollout-host",
                "test",
                "--plugin",
                "p",
                "-d",
                "d",
                "--row",
                "2"
            ])
            .is_err()
        );
        assert!(parse(&["rollout-host", "test", "--plugin", "p"]).is_err());
        // -i runs one row at a time, once.
        assert!(
            parse(&[
                "rollout-host",
                "test",
                "--plugin",
                "p",
                "-d",
                "d",
                "-i",
                "-c",
                "2"
            ])
            .is_err()
        );
        // Serving flags are not test flags.
        assert!(
            parse(&[
                "rollout-host",
                "test",
                "--plugin",
                "p",
                "-d",
                "d",
                "--port",
                "1"
            ])
            .is_err()
        );
    }
}
