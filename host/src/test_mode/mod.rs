//! `rollout-host test`: runs a plugin over a dataset against an
//! OpenAI-compatible LLM, the way a trainer would run it (the same sandbox,
//! limits and host calls), in batch or step by step (`-i`).
//!
//! - [`dataset`]: reading and checking the rows;
//! - [`llm`]: which LLM, with which key, and what its errors mean;
//! - `run`: one row run, a rollout with the LLM in the trainer's place;
//! - [`report`]: results, summary, progress;
//! - [`interactive`]: pausing before each LLM call.
//!
//! Exit codes: 0 every run completed, 1 a run failed (or a fatal LLM error
//! stopped the test), 2 bad flags, dataset or plugin (nothing ran),
//! 130 interrupted (Ctrl-C).

pub mod dataset;
pub mod interactive;
pub mod llm;
pub mod report;
mod run;

use crate::cli::TestArgs;
use crate::debug_log::DebugLog;
use crate::fault;
use crate::runtime::{CompileCache, LoadError, Runtime, RuntimeConfig};
use crate::trainer::TrainerClient;
use dataset::{DatasetError, Row};
use futures_util::FutureExt;
use indicatif::ProgressBar;
use llm::{CallSettings, LlmError, LlmTarget};
use report::{Progress, RunResult, Summary, SummaryOf};
use run::{Ran, RunContext};
use serde_json::{Map, Value, json};
use std::io::{IsTerminal, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

/// Why a test could not start (exit code 2; nothing was run).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Plugin(#[from] LoadError),
    #[error("{0}")]
    Usage(String),
}

/// The rows to run, checked flags and where things go.
struct Plan {
    rows: Vec<Row>,
    dataset_rows: usize,
    target: LlmTarget,
    sampling: Map<String, Value>,
    output: Option<PathBuf>,
    /// `-i`: the rows are stepped through from the first.
    interactive: bool,
}

/// Runs `rollout-host test`.
pub fn main(args: TestArgs) -> ExitCode {
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage_error(&SetupError::Usage(format!("cannot start: {e}"))),
    };
    let code = runtime.block_on(test(&args, plan));
    // A key read may still be waiting on the terminal: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

fn usage_error(e: &SetupError) -> ExitCode {
    eprintln!("rollout-host test: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// Checks the flags and the dataset, before anything runs.
fn plan(args: &TestArgs) -> Result<Plan, SetupError> {
    let usage = |m: String| Err(SetupError::Usage(m));
    if !args.pass_threshold.is_finite() {
        return usage("--pass-threshold must be a finite number".into());
    }
    let target = LlmTarget::resolve(
        &args.model,
        args.base_url.as_deref(),
        args.api_key.as_deref(),
        |var| std::env::var(var).ok(),
    )?;
    let mut sampling = Map::new();
    if let Some(t) = args.temperature {
        if !t.is_finite() || t < 0.0 {
            return usage(format!("--temperature {t} must be a number >= 0"));
        }
        sampling.insert("temperature".into(), json!(t));
    }
    if let Some(n) = args.max_tokens {
        sampling.insert("max_tokens".into(), json!(n));
    }
    let all = dataset::load(&args.dataset)?;
    let dataset_rows = all.len();
    let first = match (args.interactive, args.row) {
        (true, Some(row)) => row,
        _ => args.offset,
    };
    if first >= dataset_rows {
        let flag = if args.row.is_some() {
            "--row"
        } else {
            "--offset"
        };
        return usage(format!(
            "{flag} {first} is past the last row of {} ({dataset_rows} rows, from 0)",
            args.dataset.display()
        ));
    }
    let rows: Vec<Row> = all
        .into_iter()
        .skip(first)
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    if rows.is_empty() {
        return usage("--limit 0 leaves no rows to run".into());
    }
    if args.interactive && !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return usage(
            "-i steps through rollouts at a terminal: stdin and stdout must be one".into(),
        );
    }
    // A results file that cannot be written is found now, not after the run.
    if let Some(path) = &args.output {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| SetupError::Usage(format!("cannot write -o {}: {e}", path.display())))?;
    }
    Ok(Plan {
        rows,
        dataset_rows,
        target,
        sampling,
        output: args.output.clone(),
        interactive: args.interactive,
    })
}

/// Loads the plugin, runs the rows, reports.
async fn test(args: &TestArgs, plan: Plan) -> ExitCode {
    let runs_per_row = if plan.interactive { 1 } else { args.runs };
    let planned = plan.rows.len() * runs_per_row as usize;
    let stdout_terminal = std::io::stdout().is_terminal();
    let mut progress = if plan.interactive {
        Progress::new(planned, true, false)
    } else {
        Progress::new(planned, args.quiet, stdout_terminal)
    };
    init_logging(progress.bar().cloned());

    let ctx = match context(args, &plan).await {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            progress.finish();
            return usage_error(&e);
        }
    };
    let started = Instant::now();
    let batch = if plan.interactive {
        run_interactive(&ctx, plan.rows.clone()).await
    } else {
        let jobs = plan
            .rows
            .iter()
            .flat_map(|row| (0..runs_per_row).map(move |run| (row.clone(), run)))
            .collect();
        run_batch(&ctx, jobs, args.concurrency as usize, &mut progress).await
    };
    progress.finish();

    let mut results = batch.results;
    results.sort_by_key(|r| (r.row_index, r.run));
    let summary = Summary::of(SummaryOf {
        results: &results,
        rows: plan.rows.len(),
        runs_per_row,
        planned,
        interrupted: batch.stop == Some(Stop::Interrupted),
        pass_threshold: args.pass_threshold,
        elapsed: started.elapsed(),
        model: format!("{} at {}", plan.target.model, plan.target.chat_url),
        plugin: ctx.plugin.label().to_string(),
        dataset: format!(
            "{} ({} rows in all)",
            args.dataset.display(),
            plan.dataset_rows
        ),
    });
    if let Some(Stop::Fatal(why)) = &batch.stop {
        eprintln!("rollout-host test: stopped: {why}");
    }
    println!("{}", summary.table());
    if let Some(path) = &plan.output {
        match report::write_results(path, &summary, &results) {
            Ok(()) => println!("results   {}", path.display()),
            Err(e) => {
                eprintln!("rollout-host test: cannot write {}: {e}", path.display());
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    match batch.stop {
        Some(Stop::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Some(Stop::Fatal(_)) => ExitCode::from(EXIT_FAILED),
        Some(Stop::Quit) | None if summary.failed > 0 => ExitCode::from(EXIT_FAILED),
        _ => ExitCode::SUCCESS,
    }
}

/// Loads the plugin and makes the client the rows share.
async fn context(args: &TestArgs, plan: &Plan) -> Result<RunContext, SetupError> {
    let limits = args.sandbox.limits();
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        limits: limits.clone(),
        instance_slots: args.concurrency.saturating_add(1),
        allocator: args.sandbox.instance_allocator,
        warm_slots: 0,
        compile_cache: args
            .cache
            .dir()
            .as_deref()
            .and_then(CompileCache::open_or_warn),
    })?);
    let plugin = Arc::new(runtime.load(&args.plugin).await?);
    let mut policy = args.chat.retry_policy(0);
    // A provider's 429 is a rate limit worth waiting out.
    policy.retry_rate_limited = true;
    let client = TrainerClient::new(policy, Duration::from_secs(30))
        .map_err(|e| SetupError::Usage(format!("cannot make the HTTP client: {e}")))?;
    let debug_log = match &args.debug {
        Some(dir) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Some(DebugLog::create(dir, now).map_err(|e| {
                SetupError::Usage(format!("cannot create --debug {}: {e}", dir.display()))
            })?)
        }
        None => None,
    };
    Ok(RunContext {
        plugin,
        client,
        chat_url: Arc::new(plan.target.chat_url.clone()),
        target: plan.target.clone(),
        sampling: plan.sampling.clone(),
        max_turns: args.max_turns,
        limits,
        debug_log,
        pass_threshold: args.pass_threshold,
        runs_per_row: if plan.interactive { 1 } else { args.runs },
        calls: CallSettings {
            retries: args.chat.chat_retries,
            timeout: args.chat.chat_timeout,
        },
    })
}

/// Why a test stopped before its last run.
#[derive(Debug, PartialEq)]
enum Stop {
    /// Ctrl-C.
    Interrupted,
    /// `q` in interactive mode.
    Quit,
    /// An LLM error every later run would meet too (a bad key or model).
    Fatal(String),
}

struct Batch {
    results: Vec<RunResult>,
    stop: Option<Stop>,
}

/// Runs `jobs` with up to `concurrency` in flight; Ctrl-C or a fatal LLM
/// error stops the rest (runs in flight are dropped, which stops their
/// guests) and keeps what finished.
async fn run_batch(
    ctx: &Arc<RunContext>,
    jobs: Vec<(Row, u32)>,
    concurrency: usize,
    progress: &mut Progress,
) -> Batch {
    let mut jobs = jobs.into_iter();
    let mut running = JoinSet::new();
    let mut results = Vec::new();
    let mut stop = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        while stop.is_none() && running.len() < concurrency {
            let Some((row, run)) = jobs.next() else { break };
            let ctx = ctx.clone();
            running.spawn(async move { contained(&ctx, &row, run).await });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                // A run aborted below is not a result.
                let Some(Ok(ran)) = joined else { continue };
                if stop.is_none()
                    && let Some(e) = ran.llm_error.as_ref().filter(|e| llm::is_fatal(e))
                {
                    stop = Some(Stop::Fatal(ctx.target.explain(e, &ctx.calls)));
                    running.abort_all();
                }
                progress.finished(&ran.result, ctx.runs_per_row);
                results.push(ran.result);
            }
            _ = &mut ctrl_c, if stop.is_none() => {
                stop = Some(Stop::Interrupted);
                running.abort_all();
            }
        }
    }
    Batch { results, stop }
}

/// One run, a panic in the host included: it becomes a failed run.
async fn contained(ctx: &RunContext, row: &Row, run: u32) -> Ran {
    match AssertUnwindSafe(ctx.run_row(row, run, None))
        .catch_unwind()
        .await
    {
        Ok(ran) => ran,
        Err(panic) => Ran {
            result: RunResult {
                row_index: row.index,
                success: false,
                error: Some(format!(
                    "rollout-host failed internally while running the rollout ({})",
                    fault::panic_text(&*panic)
                )),
                duration_ms: 0.0,
                token_usage: Default::default(),
                reward: None,
                finish_reason: "error".into(),
                run,
                rollout_id: ctx.rollout_id(row, run),
                passed: false,
                num_tool_calls: 0,
                final_messages: Vec::new(),
            },
            llm_error: None,
        },
    }
}

/// Steps through `rows` one at a time, offering the next after each.
async fn run_interactive(ctx: &Arc<RunContext>, rows: Vec<Row>) -> Batch {
    let quit = CancellationToken::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut results = Vec::new();
    let count = rows.len();
    for (i, row) in rows.iter().enumerate() {
        interactive::say(&format!(
            "\n== row {} ({} of {count}) ==\n  system: {}\n  user: {}\n  ground truth: {}",
            row.index,
            i + 1,
            row.system_prompt,
            row.user_prompt,
            row.ground_truth
        ));
        let stepper = Arc::new(interactive::Stepper::new(row.index, quit.clone()));
        let ran = tokio::select! {
            ran = ctx.run_row(row, 0, Some(stepper)) => ran,
            _ = quit.cancelled() => return Batch { results, stop: Some(Stop::Quit) },
            // While a call is out (no key is being read): Ctrl-C.
            _ = &mut ctrl_c => return Batch { results, stop: Some(Stop::Interrupted) },
        };
        interactive::say(&format!("\n{}", report::run_line(&ran.result, 1)));
        let fatal = ran
            .llm_error
            .as_ref()
            .filter(|e| llm::is_fatal(e))
            .map(|e| ctx.target.explain(e, &ctx.calls));
        results.push(ran.result);
        if let Some(why) = fatal {
            return Batch {
                results,
                stop: Some(Stop::Fatal(why)),
            };
        }
        if i + 1 < count && interactive::read_key("[n] next row  [q] quit").await == 'q' {
            return Batch {
                results,
                stop: Some(Stop::Quit),
            };
        }
    }
    Batch {
        results,
        stop: None,
    }
}

/// Logs go to stderr at `error` for the host and `info` for the plugin's
/// own output (RUST_LOG overrides), printed above the progress bar.
fn init_logging(bar: Option<ProgressBar>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,plugin=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(AboveBar(bar))
        .try_init();
}

/// Writes each log line to stderr with the progress bar out of the way.
struct AboveBar(Option<ProgressBar>);

struct LogLine<'a> {
    bar: Option<&'a ProgressBar>,
    text: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AboveBar {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            bar: self.0.as_ref(),
            text: Vec::new(),
        }
    }
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.text);
        };
        match self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
