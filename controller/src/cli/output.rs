//! What isdfctl prints: the API's JSON (pretty), YAML, or aligned tables
//! from one table renderer.

use std::io::Write;

use serde_json::Value;

use super::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, pretty; lists are one array of all fetched items.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// A table column: its header and where its cell is in an item (a JSON pointer).
pub type Column = (&'static str, &'static str);

/// Longest table cell; longer ones are cut with `…` (`-o json` has them whole).
const MAX_CELL: usize = 64;

/// Prints a list: a table with `columns`, or the items as one JSON/YAML array.
pub fn print_list(format: Format, items: &[Value], columns: &[Column]) -> Result<(), CliError> {
    match format {
        Format::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|(_, pointer)| cell(item.pointer(pointer).unwrap_or(&Value::Null)))
                        .collect()
                })
                .collect();
            let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
            write_out(&table(&headers, &rows))
        }
        _ => print_document(format, &Value::Array(items.to_vec())),
    }
}

/// Prints one object: `key: value` lines in a table, nested lists of objects
/// as tables of their own; or the document as JSON/YAML.
pub fn print_object(format: Format, value: &Value) -> Result<(), CliError> {
    match format {
        Format::Table => write_out(&describe(value)),
        _ => print_document(format, value),
    }
}

/// Prints a JSON/YAML document (tables print as [`print_object`]).
pub fn print_document(format: Format, value: &Value) -> Result<(), CliError> {
    let text = match format {
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Other(e.to_string()))? + "\n"
        }
        Format::Yaml => {
            serde_yaml_ng::to_string(value).map_err(|e| CliError::Other(e.to_string()))?
        }
        Format::Table => describe(value),
    };
    write_out(&text)
}

/// Writes to stdout; a closed pipe (`isdfctl ... | head`) is not an error.
pub fn write_out(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Other(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// The one table renderer: headers and rows, columns padded to their widest
/// cell, two spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut text = line(&mut headers.iter().copied());
    for row in rows {
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    text
}

/// A JSON value as a table cell: strings bare, null as `-`, a map of strings
/// as `k=v,k=v`, arrays of scalars comma-separated, anything else compact JSON.
pub fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
        Value::Object(map) if map.values().all(Value::is_string) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    if text.chars().count() > MAX_CELL {
        let mut cut: String = text.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

/// One object for people: `key: value` lines, nested objects indented under
/// their key, lists of objects as tables, multi-line strings as blocks. Unlike
/// table cells, nothing is cut.
fn describe(value: &Value) -> String {
    let mut text = String::new();
    match value {
        Value::Object(_) => describe_into(value, 0, &mut text),
        other => text.push_str(&format!("{}\n", cell(other))),
    }
    text
}

fn describe_into(value: &Value, indent: usize, text: &mut String) {
    let Value::Object(map) = value else {
        return;
    };
    let pad = " ".repeat(indent);
    let width = map.keys().map(|k| k.chars().count() + 1).max().unwrap_or(0);
    for (key, v) in map {
        let label = format!("{key}:");
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                text.push_str(&format!("{pad}{label}\n"));
                describe_into(v, indent + 2, text);
            }
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                let columns = scalar_keys(items);
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|item| {
                        columns
                            .iter()
                            .map(|c| cell(item.get(c.as_str()).unwrap_or(&Value::Null)))
                            .collect()
                    })
                    .collect();
                let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
                let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
                text.push_str(&format!("{pad}{label}\n"));
                for line in table(&headers, &rows).lines() {
                    text.push_str(&format!("{pad}  {line}\n"));
                }
            }
            Value::String(s) if s.contains('\n') => {
                text.push_str(&format!("{pad}{label} |\n"));
                for line in s.lines() {
                    text.push_str(&format!("{pad}  {line}\n"));
                }
            }
            Value::String(s) => text.push_str(&format!("{pad}{label:width$} {s}\n")),
            Value::Array(items) if items.is_empty() => {
                text.push_str(&format!("{pad}{label:width$} -\n"));
            }
            other => text.push_str(&format!("{pad}{label:width$} {}\n", cell(other))),
        }
    }
}

/// The keys of a list of objects, in first-seen order.
fn scalar_keys(items: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for item in items.iter().filter_map(Value::as_object) {
        for key in item.keys() {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_cells_read_well() {
        let text = table(
            &["NAME", "LABELS"],
            &[
                vec!["r1".into(), cell(&json!({"a": "1", "b": "2"}))],
                vec!["router-two".into(), cell(&Value::Null)],
            ],
        );
        assert_eq!(
            text,
            "NAME        LABELS\nr1          a=1,b=2\nrouter-two  -\n"
        );
        assert_eq!(cell(&json!(["x", 1])), "x,1");
        assert_eq!(cell(&json!("é".repeat(100))).chars().count(), MAX_CELL);
    }

    #[test]
    fn objects_describe_nested_fields_in_full() {
        let text = describe(&json!({
            "name": "x", "passes": [], "agent": "a = 1\nb = 2",
            "relay": {"slot": 1}, "members": [{"name": "m", "role": "hub"}],
        }));
        assert_eq!(
            text,
            "agent: |\n  a = 1\n  b = 2\nmembers:\n  NAME  ROLE\n  m     hub\n\
             name:    x\npasses:  -\nrelay:\n  slot: 1\n"
        );
    }
}
