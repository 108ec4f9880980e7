//! The documentation is checked like code: generated tables are fresh, scenario snippets parse,
//! `mqdispatch` command lines parse with the real command line, relative links and anchors
//! resolve, and every published figure redraws from committed files and is shown on a page.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use mqdispatch::report::published;

use crate::util;

/// README.md, the book's pages, the changelog and the plugin's README.
fn pages() -> Vec<PathBuf> {
    let mut out = published::documents(Path::new(".")).expect("docs/src");
    out.push(PathBuf::from("./CHANGELOG.md"));
    out.push(PathBuf::from("./mosquitto-plugin/README.md"));
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Fenced code blocks: (info string, body, first line number).
fn code_blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed.starts_with("```") => {
                open = Some((trimmed[3..].trim().to_owned(), String::new(), i + 2));
            }
            Some(_) if trimmed.starts_with("```") => out.extend(open.take()),
            Some((_, body, _)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Every generated table in README.md and the book is what `mqdispatch readme` makes from the
/// committed files under results/published/: a hand-edited figure, or a published file changed
/// without regenerating the docs, fails here.
#[test]
fn generated_tables_are_fresh() {
    // Relative, as `mqdispatch readme` runs from the repository root and names its sources.
    assert_eq!(
        std::env::current_dir().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
    );
    let mut tables = 0;
    for page in published::documents(Path::new(".")).unwrap() {
        let text = read(&page);
        tables += text.matches("<!-- table: ").count();
        let regenerated = published::regenerate(&text, Path::new("results/published"))
            .unwrap_or_else(|e| panic!("{}: {e:#}", page.display()));
        assert!(
            regenerated == text,
            "{}: tables differ from results/published/: run `mqdispatch readme`",
            page.display()
        );
    }
    assert!(tables >= 10, "only {tables} generated tables found");
}

/// A scenario to complete a snippet that holds only some top-level keys.
const BASE: &[(&str, &str)] = &[
    ("name", "name: snippet\n"),
    ("brokers", "brokers: { kind: embedded, count: 2 }\n"),
    (
        "publishers",
        "publishers:\n  - { name: light, count: 2, rate: 10, payload_bytes: 100, duration: 10s }\n",
    ),
    ("arrival", "arrival: { order: random, interval: 1s }\n"),
    (
        "methods",
        "methods:\n  - { name: dns-rr, assign: dns-rr }\n",
    ),
];

/// Every `yaml` block of the docs is a scenario or part of one, and parses as one: a snippet's
/// top-level keys are completed from a minimal scenario.
#[test]
fn scenario_snippets_parse() {
    let mut checked = 0;
    for page in pages() {
        for (info, body, line) in code_blocks(&read(&page)) {
            if info != "yaml" {
                continue;
            }
            let keys: BTreeSet<&str> = body
                .lines()
                .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
                .filter_map(|l| l.split_once(':').map(|(k, _)| k))
                .collect();
            let mut text: String = BASE
                .iter()
                .filter(|(k, _)| !keys.contains(k))
                .map(|(_, t)| *t)
                .collect();
            text.push_str(&body);
            let origin = format!("{}:{line}", page.display());
            if let Err(e) = mqdispatch::scenario::parse(&text, &origin) {
                panic!("{origin}: a scenario snippet does not parse: {e}\n{text}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} scenario snippets found");
}

/// Splits a command line as a POSIX shell would for the quoting the docs use.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|c| *c != '\''));
            }
            '"' => {
                in_word = true;
                word.extend(chars.by_ref().take_while(|c| *c != '"'));
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `mqdispatch ...` command lines of code blocks (continuations joined) and inline code spans.
fn command_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (_, body, _) in code_blocks(text) {
        let mut joined = String::new();
        for line in body.lines() {
            joined.push_str(line.trim_end().trim_end_matches('\\'));
            joined.push(' ');
            if line.trim_end().ends_with('\\') {
                continue;
            }
            let cmd = std::mem::take(&mut joined);
            let cmd = cmd.trim().trim_start_matches("$ ");
            if cmd.starts_with("mqdispatch ") {
                out.push(cmd.to_owned());
            }
        }
    }
    // An inline span is a command line when it has a flag and no synopsis notation (`...`,
    // `[optional]`, `a|b`, an upper-case placeholder such as ADDR); otherwise it names a command.
    let prose = prose(text);
    for (i, span) in prose.split('`').enumerate() {
        let span = span.replace('\n', " ");
        let synopsis = span.contains("...")
            || span.contains(['[', '|'])
            || span
                .split_whitespace()
                .any(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        if i % 2 == 1 && span.starts_with("mqdispatch ") && span.contains(" --") && !synopsis {
            out.push(span);
        }
    }
    out
}

/// Every `mqdispatch ...` command line in the docs is accepted by the real command line.
#[test]
fn command_lines_parse() {
    let mut checked = 0;
    for page in pages() {
        for cmd in command_lines(&read(&page)) {
            let words = shell_words(&cmd);
            if let Err(e) = mqdispatch::cli::Cli::try_parse_from(&words) {
                // `--help` and `--version` are answers, not errors.
                if !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) {
                    panic!("{}: `{cmd}` does not parse:\n{e}", page.display());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} command lines found");
}

/// A heading's anchor as GitHub and mdBook make it.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// Every relative link of the docs names a file that exists, and every `#anchor` a heading of
/// the page it points to.
#[test]
fn relative_links_resolve() {
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().unwrap();
        for part in prose(&text).split("](").skip(1) {
            let Some(end) = part.find(')') else { continue };
            let target = &part[..end];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(
                path.exists(),
                "{}: link to {target}: {} does not exist",
                page.display(),
                path.display()
            );
            if !anchor.is_empty() {
                assert!(
                    anchors(&read(&path)).contains(anchor),
                    "{}: link to {target}: no heading makes #{anchor}",
                    page.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} links found");
}

/// Every published figure is drawn again by `mqdispatch plot` from a copy of its folder and
/// comes out byte for byte as committed (`make figures` redraws them after a change to the
/// plots), and every committed PNG is shown on a page.
#[test]
fn published_figures_redraw_and_are_shown() {
    let docs: String = pages().iter().map(|p| read(p)).collect();
    let mut figures = 0;
    for entry in std::fs::read_dir("results/published").unwrap() {
        let dir = entry.unwrap().path();
        let pngs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        if pngs.is_empty() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let from = entry.unwrap().path();
            if from.extension().is_some_and(|x| x != "png") {
                std::fs::copy(&from, copy.path().join(from.file_name().unwrap())).unwrap();
            }
        }
        let out = std::process::Command::new(util::bin())
            .arg("plot")
            .arg(copy.path())
            .output()
            .expect("run mqdispatch plot");
        assert!(
            out.status.success(),
            "mqdispatch plot {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for png in &pngs {
            let file = png.file_name().unwrap().to_string_lossy().into_owned();
            let redrawn = std::fs::read(copy.path().join(&file))
                .unwrap_or_else(|e| panic!("{name}/{file} was not redrawn: {e}"));
            assert!(
                redrawn == std::fs::read(png).unwrap(),
                "{name}/{file} differs from what `mqdispatch plot` draws: run `make figures`"
            );
            assert!(
                docs.contains(&format!("published/{name}/{file}")),
                "{name}/{file} is committed but no page shows it"
            );
            figures += 1;
        }
    }
    assert!(figures >= 2, "only {figures} published figures found");
}
