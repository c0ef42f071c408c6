//! The calculator dataset (`datasets/calc.jsonl` and `.parquet`) is made
//! by `calc_rows` here; the test below checks the committed files are
//! exactly what it makes (`ROLLOUT_REGENERATE_DATASETS=1` rewrites them).
//! Also: writing any rows as .json, .csv or .parquet, for the test-mode tests.

use crate::harness::repo_root;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rollout_host::test_mode::dataset;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CALC_SYSTEM_PROMPT: &str = "You are a calculator. Use the tools add, subtract, multiply \
and divide for the arithmetic, then give the final answer on its own line as '#### <number>'.";

/// 24 questions `What is A <op> B?`, six per operation, with exact answers.
pub fn calc_rows() -> Vec<Map<String, Value>> {
    let mut state: u64 = 0x5eed_2026_1202;
    let mut next = |range: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % range
    };
    let ops = [
        ("add", "plus"),
        ("subtract", "minus"),
        ("multiply", "times"),
        ("divide", "divided by"),
    ];
    (0..24)
        .map(|i| {
            let (op, word) = ops[i % 4];
            let level = 1 + (i / 8) as i64;
            let scale = 10u64.pow(level as u32);
            let (a, b) = match op {
                "multiply" => (next(scale) as i64 + 2, next(99) as i64 + 2),
                "divide" => {
                    let b = next(24) as i64 + 2;
                    (b * (next(scale) as i64 + 1), b)
                }
                _ => (next(scale * 10) as i64, next(scale * 10) as i64),
            };
            let answer = match op {
                "add" => a + b,
                "subtract" => a - b,
                "multiply" => a * b,
                _ => a / b,
            };
            let row = json!({
                "system_prompt": CALC_SYSTEM_PROMPT,
                "user_prompt": format!("What is {a} {word} {b}?"),
                "ground_truth": answer.to_string(),
                "operation": op,
                "level": level,
            });
            match row {
                Value::Object(map) => map,
                _ => unreachable!(),
            }
        })
        .collect()
}

pub fn calc_jsonl() -> PathBuf {
    repo_root().join("datasets/calc.jsonl")
}

/// Writes rows to a dataset file in one format.
pub type WriteRows = fn(&Path, &[Map<String, Value>]);

/// One JSON object a line.
pub fn jsonl_text(rows: &[Map<String, Value>]) -> String {
    rows.iter()
        .map(|r| format!("{}\n", Value::Object(r.clone())))
        .collect()
}

pub fn write_jsonl(path: &Path, rows: &[Map<String, Value>]) {
    std::fs::write(path, jsonl_text(rows)).unwrap();
}

pub fn write_json(path: &Path, rows: &[Map<String, Value>]) {
    let rows: Vec<Value> = rows.iter().cloned().map(Value::Object).collect();
    std::fs::write(path, serde_json::to_vec_pretty(&rows).unwrap()).unwrap();
}

/// A header of every column the first row has, then the rows (numbers as text).
pub fn write_csv(path: &Path, rows: &[Map<String, Value>]) {
    let columns: Vec<&String> = rows[0].keys().collect();
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(&columns).unwrap();
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match &row[c.as_str()] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        w.write_record(&cells).unwrap();
    }
    w.flush().unwrap();
}

/// A Parquet file (Snappy) with the columns of the first row: text columns
/// as UTF8 byte arrays, integer columns as INT64; a column with a null (or
/// a missing value) is OPTIONAL.
pub fn write_parquet(path: &Path, rows: &[Map<String, Value>]) {
    let columns: Vec<String> = rows[0].keys().cloned().collect();
    let mut fields = Vec::new();
    for c in &columns {
        let values: Vec<&Value> = rows
            .iter()
            .map(|r| r.get(c).unwrap_or(&Value::Null))
            .collect();
        let optional = values.iter().any(|v| v.is_null());
        let repetition = if optional { "OPTIONAL" } else { "REQUIRED" };
        let text = values.iter().any(|v| v.is_string());
        let kind = if text { "BYTE_ARRAY" } else { "INT64" };
        let annotation = if text { " (UTF8)" } else { "" };
        fields.push(format!("{repetition} {kind} {c}{annotation};"));
    }
    let schema = parse_message_type(&format!("message rows {{ {} }}", fields.join(" "))).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("rollout-host tests".into())
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for c in &columns {
        let values: Vec<&Value> = rows
            .iter()
            .map(|r| r.get(c).unwrap_or(&Value::Null))
            .collect();
        let levels: Vec<i16> = values.iter().map(|v| i16::from(!v.is_null())).collect();
        let levels = values
            .iter()
            .any(|v| v.is_null())
            .then_some(levels.as_slice());
        let mut column = group.next_column().unwrap().unwrap();
        if values.iter().any(|v| v.is_string()) {
            let data: Vec<ByteArray> = values
                .iter()
                .filter_map(|v| v.as_str())
                .map(ByteArray::from)
                .collect();
            column
                .typed::<ByteArrayType>()
                .write_batch(&data, levels, None)
                .unwrap();
        } else {
            let data: Vec<i64> = values.iter().filter_map(|v| v.as_i64()).collect();
            column
                .typed::<Int64Type>()
                .write_batch(&data, levels, None)
                .unwrap();
        }
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn calc_dataset_files_are_what_the_generator_makes() {
    let rows = calc_rows();
    let jsonl = calc_jsonl();
    let parquet = jsonl.with_extension("parquet");
    if std::env::var_os("ROLLOUT_REGENERATE_DATASETS").is_some() {
        std::fs::create_dir_all(jsonl.parent().unwrap()).unwrap();
        std::fs::write(&jsonl, jsonl_text(&rows)).unwrap();
        write_parquet(&parquet, &rows);
    }
    let hint =
        "run `ROLLOUT_REGENERATE_DATASETS=1 cargo test --test e2e calc_dataset` to rewrite it";
    assert_eq!(
        std::fs::read_to_string(&jsonl).expect("datasets/calc.jsonl"),
        jsonl_text(&rows),
        "datasets/calc.jsonl is not what calc_rows makes: {hint}"
    );
    // Parquet bytes depend on the writer's version: compare what it holds.
    let from_jsonl = dataset::load(&jsonl).unwrap();
    let from_parquet = dataset::load(&parquet).expect("datasets/calc.parquet");
    assert_eq!(from_parquet, from_jsonl, "datasets/calc.parquet: {hint}");
    assert_eq!(from_jsonl.len(), 24);
    assert_eq!(from_jsonl[0].extra["level"], json!(1));
}
