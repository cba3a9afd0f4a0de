//! The daemon's layering, checked: every `crate::<module>` a module's non-test code names
//! must be allowed for it in `layers.toml` (beside ARCHITECTURE.md), every module must be
//! listed there, and the allowed imports must have no circle. So an import against the
//! layering, or an import circle, fails here with the file and the module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `layers.toml`: module -> the modules it may import.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../layers.toml");
    let text = std::fs::read_to_string(&path).expect("read layers.toml");
    let table: toml::Table = text.parse().expect("layers.toml is TOML");
    let allowed = table["allowed"].as_table().expect("an [allowed] table");
    allowed
        .iter()
        .map(|(module, imports)| {
            let imports = imports
                .as_array()
                .expect("a list of modules")
                .iter()
                .map(|m| m.as_str().expect("a module name").to_owned())
                .collect();
            (module.clone(), imports)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (top-level module, file, module it names) for every `crate::x` in non-test code; the
/// crate root (`lib.rs`, `main.rs`) is left out: it wires everything.
fn imports() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let pattern = regex::Regex::new(r"crate::([a-z_][a-z0-9_]*)").expect("regex");
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let code = production_code(&text);
        for capture in pattern.captures_iter(code) {
            let target = capture[1].to_owned();
            if target != module {
                found.push((module.clone(), relative.to_path_buf(), target));
            }
        }
    }
    found
}

/// A file's text up to its test module (`#[cfg(test)]` in the first column, then `mod`).
/// A test-only item inside the code (an indented `#[cfg(test)]`) is read like the rest: its
/// imports must follow the layers too.
fn production_code(text: &str) -> &str {
    let mut offset = 0;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        if line.trim_end() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.split_whitespace().take(2).any(|word| word == "mod"))
        {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

#[test]
fn only_the_test_module_is_left_out() {
    let text = "use crate::a;\n    #[cfg(test)]\n    Hold,\nuse crate::b;\n#[cfg(test)]\npub(crate) mod tests {\n    use crate::c;\n}\n";
    let code = production_code(text);
    assert!(
        code.contains("crate::a") && code.contains("crate::b"),
        "{code}"
    );
    assert!(!code.contains("crate::c"), "{code}");
}

#[test]
fn every_import_follows_the_layers() {
    let allowed = allowed();
    let mut wrong = BTreeSet::new();
    for (module, file, target) in imports() {
        match allowed.get(&module) {
            None => {
                wrong.insert(format!(
                    "module {module} ({}) is not in layers.toml: add it below what it uses",
                    file.display()
                ));
            }
            Some(may) if !may.contains(&target) => {
                wrong.insert(format!(
                    "{} uses crate::{target}, which layers.toml does not allow for {module}",
                    file.display()
                ));
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_allowed_imports_have_no_circle() {
    let allowed = allowed();
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(
        module: &str,
        allowed: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module.to_owned());
            return Some(circle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in allowed.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, allowed, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in allowed.keys() {
        let circle = visit(module, &allowed, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "import circle: {}",
            circle.unwrap_or_default().join(" -> ")
        );
    }
    for (module, may) in &allowed {
        for target in may {
            assert!(
                allowed.contains_key(target),
                "layers.toml lets {module} use {target}, which it does not list"
            );
        }
    }
}
