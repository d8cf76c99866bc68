//! The module graph points one way. Each top-level module of `src/` has a layer, and
//! a module may name (`crate::…`) only modules of a lower layer: the projection knows
//! nothing of the store, the store nothing of HTTP, the read model nothing of HTTP or
//! the CLI. Read from the source text, so a new `use` that points up fails here, with
//! the file and line (comments are skipped: a doc link is no dependency). Test code (`#[cfg(test)]` modules, `tests.rs` files) is exempt:
//! a test may build its fixtures from anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Inner to outer. Equal layers may not name each other either (no cycles).
const LAYERS: &[&[&str]] = &[
    &["timestamp"],
    &["projection"],
    &["adapty", "index", "status", "telemetry"],
    &["store"],
    &["access", "config"],
    &["refresh", "notify"],
    &["http"],
    &["cli", "startup"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::<module>` names in the non-test part of `text`, with their line numbers.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    let mut named = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue; // a doc link is no dependency
        }
        for (at, _) in line.match_indices("crate::") {
            if at > 0 && line.as_bytes()[at - 1].is_ascii_alphanumeric() {
                continue; // `entitled_crate::`, say
            }
            let rest = &line[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            named.push((n + 1, rest[..end].to_owned()));
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = line.trim_start().strip_prefix("use crate::{") {
            for name in group.split([',', '}']).map(str::trim) {
                let module = name.split("::").next().unwrap_or_default();
                if !module.is_empty() {
                    named.push((n + 1, module.to_owned()));
                }
            }
        }
    }
    named
}

#[test]
fn no_module_names_an_outer_one() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        if relative.file_name().is_some_and(|f| f == "tests.rs") {
            continue;
        }
        let module = relative
            .iter()
            .next()
            .and_then(|m| m.to_str())
            .map(|m| m.trim_end_matches(".rs"))
            .unwrap();
        if matches!(module, "lib" | "main") {
            continue; // the crate root declares them all
        }
        let own = layer_of(module)
            .unwrap_or_else(|| panic!("src/{module} has no layer: add it to LAYERS"));
        let text = std::fs::read_to_string(file).unwrap();
        for (line, named) in named_modules(&text) {
            *checked.entry(module.to_owned()).or_default() += 1;
            if named == module {
                continue;
            }
            match layer_of(&named) {
                Some(layer) if layer < own => {}
                _ => wrong.push(format!(
                    "src/{}:{line}: {module} names crate::{named}",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        checked.len() >= 8,
        "read too few modules' imports (did the layout move?): {checked:?}"
    );
    assert!(
        wrong.is_empty(),
        "arrows pointing up or sideways:\n{}",
        wrong.join("\n")
    );
}
