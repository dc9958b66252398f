//! Human tables by default, JSON for scripts.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON with stable field names, for scripts.
    Json,
}

impl Output {
    /// Prints one record: JSON, or `field: value` lines.
    pub fn record<T: Serialize>(self, value: &T, fields: &[(&str, String)]) -> anyhow::Result<()> {
        match self {
            Self::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Self::Table => {
                let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (key, value) in fields {
                    println!("{key:<width$}  {value}");
                }
            }
        }
        Ok(())
    }

    /// Prints a list: a JSON array, or an aligned table.
    pub fn list<T: Serialize>(self, values: &[T], headers: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
        match self {
            Self::Json => println!("{}", serde_json::to_string_pretty(values)?),
            Self::Table => print!("{}", table(headers, &rows)),
        }
        Ok(())
    }
}

/// A JSON value as a table cell: strings bare, null as `-`, anything else as JSON.
pub fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let out = table(&["ID", "NAME"], &[vec!["a".into(), "first".into()], vec!["long-id".into(), "x".into()]]);
        assert_eq!(out, "ID       NAME\na        first\nlong-id  x\n");
    }
}
