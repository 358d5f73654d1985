//! The documents of an apply file: their kinds and fields, where each is
//! (file, document, line), and reading them in the order they are applied.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cli::rollout::Policy;
use crate::cli::CliError;

/// One document of an apply file.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    Device(DeviceDoc),
    Customer(CustomerDoc),
    Site(SiteDoc),
    Service(ServiceDoc),
    Assignment(AssignmentDoc),
    Vpn(VpnDoc),
}

impl Document {
    /// Objects are applied in this order, so a file may name them in any:
    /// what others refer to comes first.
    fn rank(&self) -> u8 {
        match self {
            Document::Device(_) => 0,
            Document::Customer(_) => 1,
            Document::Site(_) => 2,
            Document::Service(_) => 3,
            Document::Assignment(_) => 4,
            Document::Vpn(_) => 5,
        }
    }

    /// `Kind/name` as the file says it (an assignment: `service:selector`).
    pub fn label(&self) -> String {
        match self {
            Document::Device(d) => format!("Device/{}", d.name),
            Document::Customer(c) => format!("Customer/{}", c.name),
            Document::Site(s) => {
                format!("Site/{}/{}", s.catalog.as_deref().unwrap_or("main"), s.name)
            }
            Document::Service(s) => format!("Service/{}", s.name),
            Document::Assignment(a) => format!("Assignment/{}:{}", a.service, a.selector),
            Document::Vpn(v) => format!("Vpn/{}", v.name),
        }
    }
}

/// Where a document is: its file, its place in the file (1-based, counting
/// every `---` document), and its first line when the file's layout says it.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub index: usize,
    pub line: Option<usize>,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, document {}", self.file, self.index)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// A document and where it came from.
#[derive(Debug)]
pub struct Located {
    pub source: Source,
    pub document: Document,
}

/// A router, found by name (its key). With `labels`, its labels are set to
/// exactly these (`PATCH`); without, they are left alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A household. With `devices`, exactly these routers are attached.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerDoc {
    pub name: String,
    #[serde(default)]
    pub external_ref: Option<String>,
    #[serde(default)]
    pub devices: Option<Vec<String>>,
}

/// A pay-per-site catalog entry, found by catalog and name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteDoc {
    #[serde(default)]
    pub catalog: Option<String>,
    pub name: String,
    pub domains: Vec<String>,
    pub currency: String,
    pub passes: Vec<Value>,
}

/// A service; a spec that differs from the latest revision's makes a new revision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    pub name: String,
    /// The service kind (`flow-block`, ...): `kind` names the document's.
    #[serde(rename = "type")]
    pub service_type: String,
    pub spec: Value,
}

/// A service revision on a selector, found by (service, selector). With
/// `rollout`, a revision change is staged as a rollout instead of applied at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentDoc {
    pub service: String,
    pub selector: String,
    /// Default: the service's latest.
    #[serde(default)]
    pub revision: Option<i32>,
    #[serde(default)]
    pub rollout: Option<Policy>,
}

/// A customer's VPN. Members not in the file are removed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpnDoc {
    pub name: String,
    pub customer: String,
    #[serde(default = "auto")]
    pub topology: String,
    #[serde(default)]
    pub hub: Option<String>,
    /// Tunnel address pool; fixed once the VPN exists.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberDoc>,
}

fn auto() -> String {
    "auto".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    pub device: String,
    #[serde(alias = "prefixes")]
    pub lan_prefixes: Vec<String>,
}

/// Reads every document of every file, in the order they are applied.
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<Located>, CliError> {
    let mut documents = Vec::new();
    for path in files {
        let text = crate::cli::commands::read_input(path)?;
        let file = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        let parsed: Vec<_> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect();
        let lines = document_lines(&text);
        let lines = (lines.len() == parsed.len()).then_some(lines);
        for (i, value) in parsed.into_iter().enumerate() {
            let source = Source {
                file: file.clone(),
                index: i + 1,
                line: lines.as_ref().map(|l| l[i]),
            };
            let value = value.map_err(|e| CliError::Usage(format!("{source}: {e}")))?;
            if value.is_null() {
                continue;
            }
            let document = serde_json::from_value(value.clone()).map_err(|e| {
                let what = match (value["kind"].as_str(), value["name"].as_str()) {
                    (Some(kind), Some(name)) => format!(" {kind}/{name}"),
                    (Some(kind), None) => format!(" {kind}"),
                    _ => String::new(),
                };
                CliError::Usage(format!("{source}{what}: {e}"))
            })?;
            documents.push(Located { source, document });
        }
    }
    documents.sort_by_key(|d| d.document.rank());
    Ok(documents)
}

/// The first line of each document of a YAML stream, as serde_yaml_ng
/// counts documents: the text before the first `---` is one only when it
/// holds more than comments; after that every `---` starts one. The caller
/// uses these only when the counts agree (a `---` inside a block scalar
/// would fool this).
fn document_lines(text: &str) -> Vec<usize> {
    let content = |line: &str| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#')
    };
    let mut starts = Vec::new();
    // (line of the start, has content) of the document being read.
    let mut current: Option<(usize, bool)> = Some((1, false));
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if separator {
            if let Some((start, has)) = current.take() {
                if has || !first {
                    starts.push(start);
                }
            }
            first = false;
            current = Some((number, line.len() > 3 && content(&line[3..])));
            continue;
        }
        if let Some((start, has)) = current.as_mut() {
            if !*has && content(line) {
                *start = number;
                *has = true;
            }
        }
    }
    if let Some((start, has)) = current {
        if has || !first {
            starts.push(start);
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_and_sort_by_dependency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        std::fs::write(
            &path,
            "kind: Assignment\nservice: s\nselector: a=b\n---\n\
             kind: Service\nname: s\ntype: flow-block\nspec: {flows: []}\n---\n",
        )
        .unwrap();
        let documents = read_documents(std::slice::from_ref(&path)).unwrap();
        assert!(matches!(documents[0].document, Document::Service(_)));
        assert!(matches!(documents[1].document, Document::Assignment(_)));
        assert_eq!(documents[0].source.index, 2);
        assert_eq!(documents[0].source.line, Some(5));
        assert_eq!(documents[1].source.line, Some(1));

        std::fs::write(&path, "kind: Service\nname: s\nkind2: x\n").unwrap();
        let Err(CliError::Usage(message)) = read_documents(&[path]) else {
            panic!("a usage error")
        };
        assert!(
            message.contains("document 1 (line 1) Service/s: "),
            "{message}"
        );
    }

    #[test]
    fn document_lines_count_as_serde_does() {
        let text = "# a comment\n\nkind: A\n---\n# b\nkind: B\n---\n---\nkind: D\n";
        assert_eq!(document_lines(text), [3, 6, 7, 9]);
        let count = serde_yaml_ng::Deserializer::from_str(text).count();
        assert_eq!(count, 4);
        let leading = "---\nkind: A\n--- # two\nkind: B\n";
        assert_eq!(document_lines(leading), [2, 4]);
        assert_eq!(serde_yaml_ng::Deserializer::from_str(leading).count(), 2);
    }
}
