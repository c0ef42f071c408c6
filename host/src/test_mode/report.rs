//! What a test run reports: one result per row run, the summary (the
//! reference's fields, plus rewards and pass@k), the results file, and the
//! progress shown while it runs.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Tokens one row run used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub num_llm_calls: u64,
}

/// One row run (the reference's fields, then ours).
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub row_index: usize,
    /// `success`: the rollout ran to a completion without error, whatever
    /// its reward.
    pub success: bool,
    pub error: Option<String>,
    pub duration_ms: f64,
    pub token_usage: TokenUsage,
    pub reward: Option<f64>,
    pub finish_reason: String,
    /// Which run of the row (from 0; `--n`).
    pub run: u32,
    pub rollout_id: String,
    /// A successful run whose reward reached `--pass-threshold`.
    pub passed: bool,
    pub num_tool_calls: u64,
    /// The conversation as the trainer would have received it.
    pub final_messages: Vec<Box<RawValue>>,
}

/// Reward statistics over the runs that returned one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardStats {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary: `total`/`passed`/`failed` count runs as the reference
/// counts rows (passed = ran without error); rewards and pass@k are ours.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub total_duration_ms: f64,
    pub total_tokens: u64,
    pub rows: usize,
    pub runs_per_row: u32,
    /// Runs planned but not run (Ctrl-C, or a fatal LLM error).
    pub not_run: usize,
    pub interrupted: bool,
    pub reward: Option<RewardStats>,
    pub pass_threshold: f64,
    /// pass@k for k = 1, 2, 4, ... and `--n`: the chance that at least one
    /// of k runs of a row passes, averaged over rows (the unbiased
    /// estimator of Chen et al. 2021).
    pub pass_at_k: BTreeMap<String, f64>,
    pub model: String,
    pub plugin: String,
    pub dataset: String,
}

/// What the summary is computed for.
pub struct SummaryOf<'a> {
    pub results: &'a [RunResult],
    pub rows: usize,
    pub runs_per_row: u32,
    pub planned: usize,
    pub interrupted: bool,
    pub pass_threshold: f64,
    pub elapsed: Duration,
    pub model: String,
    pub plugin: String,
    pub dataset: String,
}

impl Summary {
    pub fn of(s: SummaryOf<'_>) -> Self {
        let results = s.results;
        let passed = results.iter().filter(|r| r.success).count();
        let rewards: Vec<f64> = results.iter().filter_map(|r| r.reward).collect();
        let reward = (!rewards.is_empty()).then(|| RewardStats {
            count: rewards.len(),
            mean: rewards.iter().sum::<f64>() / rewards.len() as f64,
            min: rewards.iter().copied().fold(f64::INFINITY, f64::min),
            max: rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        });
        Summary {
            total: results.len(),
            passed,
            failed: results.len() - passed,
            total_duration_ms: s.elapsed.as_secs_f64() * 1000.0,
            total_tokens: results.iter().map(|r| r.token_usage.total_tokens).sum(),
            rows: s.rows,
            runs_per_row: s.runs_per_row,
            not_run: s.planned.saturating_sub(results.len()),
            interrupted: s.interrupted,
            reward,
            pass_threshold: s.pass_threshold,
            pass_at_k: pass_at_k(results, s.runs_per_row),
            model: s.model,
            plugin: s.plugin,
            dataset: s.dataset,
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let runs = match self.runs_per_row {
            1 => String::new(),
            n => format!(" x {n} runs"),
        };
        let _ = writeln!(t, "\n{:<10}{}", "plugin", self.plugin);
        let _ = writeln!(t, "{:<10}{}", "model", self.model);
        let _ = writeln!(
            t,
            "{:<10}{}: {} rows{runs}",
            "dataset", self.dataset, self.rows
        );
        let mut ran = format!("{} ran without error, {} failed", self.passed, self.failed);
        if self.not_run > 0 {
            let why = if self.interrupted {
                "interrupted"
            } else {
                "stopped"
            };
            let _ = write!(ran, ", {} not run ({why})", self.not_run);
        }
        let _ = writeln!(t, "{:<10}{ran}", "runs");
        match &self.reward {
            Some(r) => {
                let _ = writeln!(
                    t,
                    "{:<10}mean {:.3}  min {:.3}  max {:.3}  (over {} runs)",
                    "reward", r.mean, r.min, r.max, r.count
                );
            }
            None => {
                let _ = writeln!(t, "{:<10}none returned", "reward");
            }
        }
        if !self.pass_at_k.is_empty() {
            let ks: Vec<String> = self
                .pass_at_k
                .iter()
                .map(|(k, v)| format!("pass@{k} {v:.3}"))
                .collect();
            let _ = writeln!(
                t,
                "{:<10}{}  (reward >= {:?})",
                "pass",
                ks.join("  "),
                self.pass_threshold
            );
        }
        let secs = self.total_duration_ms / 1000.0;
        let _ = writeln!(t, "{:<10}{}", "tokens", self.total_tokens);
        let _ = write!(
            t,
            "{:<10}{secs:.1} s ({:.2} runs/s)",
            "time",
            self.total as f64 / secs.max(1e-9)
        );
        t
    }
}

/// Unbiased pass@k per row (`1 - C(n-c, k) / C(n, k)` for a row with `n`
/// runs of which `c` passed), averaged over rows, for k = 1, 2, 4, ... < n
/// and n. Rows with fewer than k runs (an interrupted run) are left out of
/// pass@k.
fn pass_at_k(results: &[RunResult], runs_per_row: u32) -> BTreeMap<String, f64> {
    let mut rows: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for r in results {
        let (n, c) = rows.entry(r.row_index).or_default();
        *n += 1;
        *c += u64::from(r.passed);
    }
    let mut ks: Vec<u64> = std::iter::successors(Some(1u64), |k| Some(k * 2))
        .take_while(|k| *k < u64::from(runs_per_row))
        .collect();
    ks.push(runs_per_row.into());
    let mut out = BTreeMap::new();
    for k in ks {
        let per_row: Vec<f64> = rows
            .values()
            .filter(|(n, _)| *n >= k)
            .map(|&(n, c)| {
                if n - c < k {
                    return 1.0;
                }
                // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
                let miss: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
                1.0 - miss
            })
            .collect();
        if !per_row.is_empty() {
            out.insert(
                k.to_string(),
                per_row.iter().sum::<f64>() / per_row.len() as f64,
            );
        }
    }
    out
}

/// Writes `{"summary": ..., "results": [...]}` to `path`.
pub fn write_results(path: &Path, summary: &Summary, results: &[RunResult]) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct File<'a> {
        summary: &'a Summary,
        results: &'a [RunResult],
    }
    let text = serde_json::to_vec_pretty(&File { summary, results })?;
    std::fs::write(path, text)
}

/// One line for a finished run: `row 3: OK reward 1.0 (1.2 s, 345 tokens)`.
pub fn run_line(r: &RunResult, runs_per_row: u32) -> String {
    let mut line = format!("row {}", r.row_index);
    if runs_per_row > 1 {
        let _ = write!(line, " run {}", r.run);
    }
    let secs = r.duration_ms / 1000.0;
    let tokens = r.token_usage.total_tokens;
    match (&r.error, r.success) {
        (None, true) => {
            let reward = r.reward.map_or("none".to_owned(), |v| format!("{v:?}"));
            let _ = write!(line, ": OK reward {reward} ({secs:.1} s, {tokens} tokens)");
        }
        (error, _) => {
            let _ = write!(
                line,
                ": FAILED ({secs:.1} s, {tokens} tokens): {}",
                error.as_deref().unwrap_or("the agent reported an error")
            );
        }
    }
    line
}

/// Progress while rows run: a live bar on a terminal, a line per run
/// otherwise, nothing with `-q`.
pub enum Progress {
    /// The bar and the tallies its message shows.
    Bar {
        bar: ProgressBar,
        ok: usize,
        failed: usize,
        passed: usize,
        tokens: u64,
    },
    Lines {
        total: usize,
        done: usize,
    },
    Quiet,
}

impl Progress {
    pub fn new(total: usize, quiet: bool, terminal: bool) -> Self {
        if quiet {
            return Progress::Quiet;
        }
        if !terminal {
            return Progress::Lines { total, done: 0 };
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} runs  {msg}  {elapsed_precise} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar {
            bar,
            ok: 0,
            failed: 0,
            passed: 0,
            tokens: 0,
        }
    }

    /// The bar, for log lines to print around.
    pub fn bar(&self) -> Option<&ProgressBar> {
        match self {
            Progress::Bar { bar, .. } => Some(bar),
            _ => None,
        }
    }

    /// A run finished.
    pub fn finished(&mut self, result: &RunResult, runs_per_row: u32) {
        match self {
            Progress::Bar {
                bar,
                ok,
                failed,
                passed,
                tokens,
            } => {
                if result.success {
                    *ok += 1;
                } else {
                    *failed += 1;
                }
                *passed += usize::from(result.passed);
                *tokens += result.token_usage.total_tokens;
                bar.set_message(format!(
                    "ok {ok}  failed {failed}  reward-passed {passed}  tokens {tokens}"
                ));
                bar.inc(1);
                if !result.success {
                    bar.println(run_line(result, runs_per_row));
                }
            }
            Progress::Lines { total, done } => {
                *done += 1;
                println!("[{done}/{total}] {}", run_line(result, runs_per_row));
            }
            Progress::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar { bar, .. } = self {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(row: usize, passed: bool, reward: Option<f64>) -> RunResult {
        RunResult {
            row_index: row,
            success: reward.is_some(),
            error: None,
            duration_ms: 1000.0,
            token_usage: TokenUsage {
                total_tokens: 10,
                ..Default::default()
            },
            reward,
            finish_reason: "stop".into(),
            run: 0,
            rollout_id: format!("test-{row}"),
            passed,
            num_tool_calls: 0,
            final_messages: vec![],
        }
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimate() {
        // Row 0: 1 of 4 runs passes; row 1: all 4; row 2: none.
        let mut results = vec![];
        for (row, passes) in [(0, 1), (1, 4), (2, 0)] {
            for i in 0..4 {
                results.push(run(
                    row,
                    i < passes,
                    Some(if i < passes { 1.0 } else { 0.0 }),
                ));
            }
        }
        let p = pass_at_k(&results, 4);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // pass@1 = mean pass rate; pass@2 for c=1,n=4 is 1 - C(3,2)/C(4,2) = 0.5.
        assert!(close(p["1"], (0.25 + 1.0 + 0.0) / 3.0), "{p:?}");
        assert!(close(p["2"], (0.5 + 1.0 + 0.0) / 3.0), "{p:?}");
        assert!(close(p["4"], (1.0 + 1.0 + 0.0) / 3.0), "{p:?}");
        assert_eq!(p.len(), 3);
        let s = Summary::of(SummaryOf {
            results: &results,
            rows: 3,
            runs_per_row: 4,
            planned: 14,
            interrupted: true,
            pass_threshold: 1.0,
            elapsed: Duration::from_secs(2),
            model: "m".into(),
            plugin: "p".into(),
            dataset: "d".into(),
        });
        assert_eq!(
            (s.total, s.passed, s.failed, s.not_run, s.total_tokens),
            (12, 12, 0, 2, 120)
        );
        assert_eq!(s.reward.as_ref().unwrap().mean, 5.0 / 12.0);
        let table = s.table();
        assert!(table.contains("2 not run (interrupted)"), "{table}");
        assert!(
            table.contains("pass@1 0.417  pass@2 0.500  pass@4 0.667"),
            "{table}"
        );
    }

    #[test]
    fn run_lines_say_ok_or_why_not() {
        assert_eq!(
            run_line(&run(3, true, Some(1.0)), 1),
            "row 3: OK reward 1.0 (1.0 s, 10 tokens)"
        );
        let mut failed = run(4, false, None);
        failed.error = Some("the LLM refused the API key".into());
        assert_eq!(
            run_line(&failed, 2),
            "row 4 run 0: FAILED (1.0 s, 10 tokens): the LLM refused the API key"
        );
    }
}
