//! Test-mode datasets: `.json` (an array of objects), `.jsonl`, `.csv` and
//! `.parquet`, each row with the columns `system_prompt`, `user_prompt` and
//! `ground_truth` (non-empty strings, names matched case-insensitively);
//! any other column goes into the rollout's metadata.
//!
//! A dataset is read and checked whole before any LLM call: a bad one is a
//! single [`DatasetError`] naming the file, the row and the column.

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// The columns every row must have, in the order the errors name them.
pub const REQUIRED_COLUMNS: [&str; 3] = ["system_prompt", "user_prompt", "ground_truth"];

/// One checked row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Position in the file, from 0 (the rollout is `test-<index>`).
    pub index: usize,
    pub system_prompt: String,
    pub user_prompt: String,
    pub ground_truth: String,
    /// Every other column, under its own name.
    pub extra: Map<String, Value>,
}

impl Row {
    /// The rollout's messages: the system prompt, then the user prompt.
    pub fn messages(&self) -> Vec<Value> {
        vec![
            serde_json::json!({"role": "system", "content": self.system_prompt}),
            serde_json::json!({"role": "user", "content": self.user_prompt}),
        ]
    }

    /// The rollout's metadata: the extra columns, then `ground_truth`,
    /// `test_mode: true` and `row_index` (which win over columns of the
    /// same name).
    pub fn metadata(&self) -> Map<String, Value> {
        let mut metadata = self.extra.clone();
        metadata.insert("ground_truth".into(), self.ground_truth.clone().into());
        metadata.insert("test_mode".into(), true.into());
        metadata.insert("row_index".into(), self.index.into());
        metadata
    }
}

/// Why a dataset cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct DatasetError {
    pub path: PathBuf,
    /// The row (from 0) the problem is in, when it is in one.
    pub row: Option<usize>,
    pub column: Option<String>,
    pub reason: String,
}

impl fmt::Display for DatasetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match (&self.row, &self.column) {
            (Some(row), Some(column)) => write!(f, "row {row}, column '{column}': ")?,
            (Some(row), None) => write!(f, "row {row}: ")?,
            (None, Some(column)) => write!(f, "column '{column}': ")?,
            (None, None) => {}
        }
        f.write_str(&self.reason)
    }
}

/// A problem found while reading, before the file's name is attached.
struct Problem {
    row: Option<usize>,
    column: Option<String>,
    reason: String,
}

impl Problem {
    fn file(reason: impl fmt::Display) -> Self {
        Self {
            row: None,
            column: None,
            reason: reason.to_string(),
        }
    }

    fn row(row: usize, reason: impl fmt::Display) -> Self {
        Self {
            row: Some(row),
            column: None,
            reason: reason.to_string(),
        }
    }
}

/// The formats a dataset can be in, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Jsonl,
    Csv,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Result<Self, Problem> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("json") => Ok(Format::Json),
            Some("jsonl") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some("parquet") => Ok(Format::Parquet),
            other => Err(Problem::file(format!(
                "unknown dataset format{} (use .json, .jsonl, .csv or .parquet)",
                other.map(|e| format!(" '.{e}'")).unwrap_or_default()
            ))),
        }
    }
}

/// Reads and checks every row of the dataset at `path`.
pub fn load(path: &Path) -> Result<Vec<Row>, DatasetError> {
    read(path).map_err(|p| DatasetError {
        path: path.to_owned(),
        row: p.row,
        column: p.column,
        reason: p.reason,
    })
}

fn read(path: &Path) -> Result<Vec<Row>, Problem> {
    let format = Format::of(path)?;
    let records = match format {
        Format::Parquet => parquet_records(path)?,
        _ => {
            let bytes =
                std::fs::read(path).map_err(|e| Problem::file(format!("cannot read: {e}")))?;
            match format {
                Format::Json => json_records(&bytes)?,
                Format::Jsonl => jsonl_records(&bytes)?,
                _ => csv_records(&bytes)?,
            }
        }
    };
    if records.is_empty() {
        return Err(Problem::file("no rows"));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| checked_row(index, record))
        .collect()
}

/// Finds the required columns (case-insensitively) in `record`.
fn checked_row(index: usize, mut record: Map<String, Value>) -> Result<Row, Problem> {
    let mut found: [Option<String>; 3] = Default::default();
    for key in record.keys() {
        let lower = key.to_lowercase();
        if let Some(i) = REQUIRED_COLUMNS.iter().position(|c| *c == lower) {
            if let Some(first) = &found[i] {
                return Err(Problem {
                    row: Some(index),
                    column: Some(REQUIRED_COLUMNS[i].into()),
                    reason: format!("two columns match it: '{first}' and '{key}'"),
                });
            }
            found[i] = Some(key.clone());
        }
    }
    let mut take = |i: usize| -> Result<String, Problem> {
        let column = REQUIRED_COLUMNS[i];
        let problem = |reason: String| Problem {
            row: Some(index),
            column: Some(column.into()),
            reason,
        };
        let Some(key) = &found[i] else {
            return Err(problem("missing".into()));
        };
        match record.remove(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
            Some(Value::String(_)) => Err(problem("empty string".into())),
            Some(other) => Err(problem(format!(
                "must be a non-empty string, not {}",
                kind(&other)
            ))),
            None => Err(problem("missing".into())),
        }
    };
    Ok(Row {
        index,
        system_prompt: take(0)?,
        user_prompt: take(1)?,
        ground_truth: take(2)?,
        extra: record,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn object(row: usize, value: Value) -> Result<Map<String, Value>, Problem> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Problem::row(
            row,
            format!("must be a JSON object, not {}", kind(&other)),
        )),
    }
}

fn json_records(bytes: &[u8]) -> Result<Vec<Map<String, Value>>, Problem> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Array(rows)) => rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| object(i, row))
            .collect(),
        Ok(other) => Err(Problem::file(format!(
            "must be a JSON array of objects, not {}",
            kind(&other)
        ))),
        Err(e) => Err(Problem::file(format!("not valid JSON: {e}"))),
    }
}

/// One object per non-blank line.
fn jsonl_records(bytes: &[u8]) -> Result<Vec<Map<String, Value>>, Problem> {
    let mut rows = Vec::new();
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row = rows.len();
        let value = serde_json::from_slice(line)
            .map_err(|e| Problem::row(row, format!("line {}: not valid JSON: {e}", number + 1)))?;
        rows.push(object(row, value)?);
    }
    Ok(rows)
}

/// A header line, then one row per record; every value is a string.
fn csv_records(bytes: &[u8]) -> Result<Vec<Map<String, Value>>, Problem> {
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| Problem::file(format!("cannot read the CSV header: {e}")))?
        .clone();
    reader
        .records()
        .enumerate()
        .map(|(row, record)| {
            let record = record.map_err(|e| Problem::row(row, format!("not valid CSV: {e}")))?;
            Ok(header
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect())
        })
        .collect()
}

/// Every row of every row group; text columns are strings, the others
/// their JSON value (numbers, lists, ...).
fn parquet_records(path: &Path) -> Result<Vec<Map<String, Value>>, Problem> {
    let file = std::fs::File::open(path).map_err(|e| Problem::file(format!("cannot read: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| Problem::file(format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| Problem::file(format!("cannot read the Parquet rows: {e}")))?;
    rows.enumerate()
        .map(|(i, row)| {
            let row = row.map_err(|e| Problem::row(i, format!("cannot read: {e}")))?;
            Ok(row
                .get_column_iter()
                .map(|(name, field)| {
                    let value = match field {
                        Field::Str(s) => Value::String(s.clone()),
                        other => other.to_json_value(),
                    };
                    (name.clone(), value)
                })
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn error(name: &str, text: &str) -> String {
        let (_dir, path) = write(name, text);
        let e = load(&path).unwrap_err();
        e.to_string().replace(&format!("{}: ", path.display()), "")
    }

    #[test]
    fn reads_each_text_format_alike() {
        let jsonl = r#"{"System_Prompt": "s", "USER_PROMPT": "u0", "ground_truth": "1", "level": 2}

{"system_prompt": "s", "user_prompt": "u1", "ground_truth": "2", "level": 3}
"#;
        let json = r#"[{"system_prompt": "s", "user_prompt": "u0", "ground_truth": "1", "level": 2},
                       {"system_prompt": "s", "user_prompt": "u1", "ground_truth": "2", "level": 3}]"#;
        let csv = "system_prompt,user_prompt,ground_truth,level\ns,u0,1,2\ns,\"u1\",2,3\n";
        for (name, text, level) in [
            ("d.jsonl", jsonl, json!(3)),
            ("d.JSON", json, json!(3)),
            ("d.csv", csv, json!("3")),
        ] {
            let (_dir, path) = write(name, text);
            let rows = load(&path).unwrap();
            assert_eq!(rows.len(), 2, "{name}");
            assert_eq!(rows[1].index, 1);
            assert_eq!(rows[1].user_prompt, "u1");
            assert_eq!(rows[1].ground_truth, "2");
            let metadata = rows[1].metadata();
            assert_eq!(metadata["level"], level, "{name}");
            assert_eq!(metadata["ground_truth"], json!("2"));
            assert_eq!(metadata["test_mode"], json!(true));
            assert_eq!(metadata["row_index"], json!(1));
            assert_eq!(
                json!(rows[0].messages()),
                json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u0"}])
            );
        }
    }

    #[test]
    fn each_bad_dataset_is_one_line_naming_row_and_column() {
        let row = |user: &str| {
            format!(r#"{{"system_prompt": "s", "user_prompt": {user}, "ground_truth": "1"}}"#)
        };
        let ok = row("\"u\"");
        for (name, text, expected) in [
            (
                "d.jsonl",
                format!("{ok}\n{}\n", r#"{"system_prompt": "s", "ground_truth": "1"}"#),
                "row 1, column 'user_prompt': missing",
            ),
            (
                "d.jsonl",
                format!("{ok}\n{ok}\n{}\n", row("\"  \"")),
                "row 2, column 'user_prompt': empty string",
            ),
            (
                "d.jsonl",
                format!("{}\n", row("7")),
                "row 0, column 'user_prompt': must be a non-empty string, not a number",
            ),
            (
                "d.jsonl",
                format!("{ok}\n\n{{\"system_prompt\": \n"),
                "row 1: line 3: not valid JSON",
            ),
            ("d.jsonl", "[1]\n".into(), "row 0: must be a JSON object, not a list"),
            ("d.json", "{}".into(), "must be a JSON array of objects, not an object"),
            ("d.json", format!("[{ok}, null]"), "row 1: must be a JSON object, not null"),
            ("d.json", "".into(), "not valid JSON"),
            ("d.jsonl", "\n\n".into(), "no rows"),
            (
                "d.csv",
                "system_prompt,user_prompt,ground_truth\ns,u,\n".into(),
                "row 0, column 'ground_truth': empty string",
            ),
            (
                "d.csv",
                "system_prompt,user_prompt\ns,u\n".into(),
                "row 0, column 'ground_truth': missing",
            ),
            (
                "d.csv",
                "system_prompt,user_prompt,ground_truth\ns,u,1,extra\n".into(),
                "row 0: not valid CSV",
            ),
            (
                "d.jsonl",
                r#"{"system_prompt": "s", "System_Prompt": "t", "user_prompt": "u", "ground_truth": "1"}"#.into(),
                "row 0, column 'system_prompt': two columns match it",
            ),
            ("d.txt", ok.clone(), "unknown dataset format '.txt' (use .json, .jsonl, .csv or .parquet)"),
            ("d", ok.clone(), "unknown dataset format (use"),
            ("d.parquet", ok.clone(), "not a readable Parquet file"),
        ] {
            let message = error(name, &text);
            assert!(message.starts_with(expected), "{name}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
        let missing = load(Path::new("/nonexistent/d.jsonl")).unwrap_err();
        assert_eq!(missing.row, None);
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/d.jsonl: cannot read: No such file")
        );
    }
}
