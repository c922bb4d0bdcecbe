//! Runbooks cannot drift from the binary: every `lifeboat …` command in
//! runbooks/*.md and README.md (code blocks and inline code) must parse with
//! the real CLI (`LIFEBOAT_PARSE_ONLY=1` parses and exits without running).

mod common;

use std::path::{Path, PathBuf};

/// A command found in a document.
#[derive(Debug, Clone)]
struct Found {
    file: String,
    line: usize,
    args: Vec<String>,
}

/// Shell words of `s` (quotes and backslashes; no expansion), cut at the
/// first unquoted `|`, `;`, `&&`, `>`, `<` or `#` comment.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                has = true;
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                    cur.push(d);
                }
            }
            '"' => {
                has = true;
                while let Some(d) = chars.next() {
                    match d {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                cur.push(e);
                            }
                        }
                        _ => cur.push(d),
                    }
                }
            }
            '\\' => {
                if let Some(e) = chars.next() {
                    cur.push(e);
                    has = true;
                }
            }
            '|' | ';' | '>' | '<' | '&' => break,
            '#' if !has => break,
            c if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// The `lifeboat …` command in a line of code, if any: from the word
/// `lifeboat` (after `sudo -u postgres`, inside a quoted config value…) on.
fn command_in(code: &str) -> Option<Vec<String>> {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("lifeboat ") {
        let at = from + i;
        let before = if at == 0 { b' ' } else { bytes[at - 1] };
        if matches!(before, b' ' | b'\'' | b'"' | b'(' | b'`' | b'$') || at == 0 {
            let mut rest = &code[at..];
            // Inside a quoted value: stop at that quote.
            if matches!(before, b'\'' | b'"')
                && let Some(end) = rest.find(before as char)
            {
                rest = &rest[..end];
            }
            let words = shell_words(rest);
            if words.len() > 1 {
                return Some(words[1..].to_vec());
            }
        }
        from = at + 1;
    }
    None
}

/// Every lifeboat command in a markdown text, and the `export NAME=VALUE` lines of its code blocks.
fn extract(file: &str, text: &str) -> (Vec<Found>, Vec<(String, String)>) {
    let mut found = Vec::new();
    let mut env = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let l = line.trim().trim_start_matches("$ ");
            if pending.is_empty() {
                pending_line = i + 1;
            }
            if let Some(cont) = l.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(l);
            let full = std::mem::take(&mut pending);
            if let Some(rest) = full.strip_prefix("export ") {
                let words = shell_words(rest);
                if let Some((k, v)) = words.first().and_then(|w| w.split_once('=')) {
                    env.push((k.to_string(), v.to_string()));
                }
                continue;
            }
            if let Some(args) = command_in(&full) {
                found.push(Found { file: file.into(), line: pending_line, args });
            }
        } else {
            // Inline code spans.
            for (n, span) in line.split('`').enumerate() {
                // Prose names commands (`lifeboat run`); an invocation has flags.
                if n % 2 == 1
                    && let Some(args) = command_in(span).filter(|a| a.iter().any(|w| w.starts_with('-')))
                {
                    found.push(Found { file: file.into(), line: i + 1, args });
                }
            }
        }
    }
    (found, env)
}

/// Parse each command with the real binary; returns one line per failure.
fn check_text(file: &str, text: &str) -> (usize, Vec<String>) {
    let (found, env) = extract(file, text);
    let mut failures = Vec::new();
    for f in &found {
        let mut c = common::bin();
        c.args(&f.args).env("LIFEBOAT_PARSE_ONLY", "1");
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first: Vec<&str> =
                err.lines().map(str::trim).filter(|l| !l.is_empty()).take_while(|l| !l.starts_with("Usage")).collect();
            let first = first.join(" ");
            failures.push(format!("{}:{}: lifeboat {}: {first}", f.file, f.line, f.args.join(" ")));
        }
    }
    (found.len(), failures)
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut rb: Vec<PathBuf> = std::fs::read_dir(root.join("runbooks"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    rb.sort();
    files.extend(rb);
    files
}

#[test]
fn every_documented_command_parses() {
    let mut total = 0;
    let mut failures = Vec::new();
    for p in docs() {
        let text = std::fs::read_to_string(&p).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let name = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let (n, f) = check_text(&name, &text);
        total += n;
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{} documented command(s) do not parse:\n{}", failures.len(), failures.join("\n"));
    assert!(total >= 30, "only {total} commands found: is the extractor broken?");
}

#[test]
fn the_required_runbooks_exist_and_name_real_commands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
    for (name, must) in [
        ("database-failure.md", "lifeboat restore"),
        ("region-loss.md", "lifeboat verify"),
        ("cluster-rebuild.md", "lifeboat restore"),
        ("key-compromise.md", "lifeboat key"),
    ] {
        let text = std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("runbooks/{name}: {e}"));
        let (found, _) = extract(name, &text);
        assert!(found.len() >= 3, "runbooks/{name} has only {} lifeboat commands", found.len());
        assert!(text.contains(must), "runbooks/{name} never uses `{must}`");
    }
}

#[test]
fn a_flag_the_cli_does_not_have_is_caught() {
    let doc = "# Bad runbook\n\n```sh\nexport LIFEBOAT_REPO=/srv/backups\nsudo -u postgres lifeboat restore latest --name db --to-dir /x --start\nlifeboat restore latest --name db --to-dir /x --no-such-flag\n```\n\nAlso `lifeboat drill --scenario region-loss` (no --policy).\n";
    let (n, failures) = check_text("bad.md", doc);
    assert_eq!(n, 3);
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].starts_with("bad.md:6:") && failures[0].contains("--no-such-flag"), "{failures:?}");
    assert!(failures[1].starts_with("bad.md:9:") && failures[1].contains("--policy"), "{failures:?}");
}

#[test]
fn extraction_handles_quotes_pipes_and_config_values() {
    assert_eq!(
        command_in("pg_dump db | lifeboat backup --stdin --name \"my db\" | tee x").unwrap(),
        vec!["backup", "--stdin", "--name", "my db"]
    );
    assert_eq!(
        command_in("archive_command = 'lifeboat wal push --archive pg %p'").unwrap(),
        vec!["wal", "push", "--archive", "pg", "%p"]
    );
    assert!(command_in("the lifeboat-secrets Secret").is_none());
    assert_eq!(command_in("lifeboat status --policy p.toml # comment").unwrap(), vec!["status", "--policy", "p.toml"]);
}
