//! The README's "Your first ordered consumer" programs, checked as a new user would use them:
//! each `<!-- first-consumer NAME Cargo.toml -->` / `<!-- first-consumer NAME main.rs -->`
//! pair of code blocks becomes a fresh project outside the workspace (its dependencies exactly
//! as the README writes them, `headwaters` patched to this checkout since it is not published,
//! the workspace's `Cargo.lock` as the starting point of the resolution), which is built and
//! run against the servers, and must print every one of its 100 messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::emulators::target_dir;
use crate::{cargo, root, run};

/// One program: its `[dependencies]` and its `src/main.rs`.
#[derive(Default)]
struct Program {
    manifest: Option<String>,
    main: Option<String>,
}

/// The programs of the README, by name.
fn programs(readme: &str) -> Result<BTreeMap<String, Program>> {
    let mut found: BTreeMap<String, Program> = BTreeMap::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line
            .trim()
            .strip_prefix("<!-- first-consumer ")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            continue;
        };
        let (name, file) = marker
            .trim()
            .split_once(' ')
            .with_context(|| format!("README marker {line:?} names no file"))?;
        let fence = lines
            .by_ref()
            .find(|l| !l.trim().is_empty())
            .with_context(|| format!("README marker {line:?} is followed by nothing"))?;
        if !fence.starts_with("```") {
            bail!("README marker {line:?} is not followed by a code block");
        }
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let text = block.join("\n") + "\n";
        let program = found.entry(name.to_owned()).or_default();
        match file {
            "Cargo.toml" => program.manifest = Some(text),
            "main.rs" => program.main = Some(text),
            other => bail!("README marker {line:?}: unknown file {other}"),
        }
    }
    if found.is_empty() {
        bail!("README.md has no first-consumer programs");
    }
    Ok(found)
}

/// Build and run every program with the servers `with_servers` points it at.
pub(crate) fn check(with_servers: &dyn Fn(&mut Command)) -> Result<()> {
    let readme =
        std::fs::read_to_string(root().join("README.md")).context("cannot read README.md")?;
    let base =
        std::env::temp_dir().join(format!("headwaters-first-consumer-{}", std::process::id()));
    let outcome = (|| {
        for (name, program) in programs(&readme)? {
            let dir = base.join(&name);
            write_project(&dir, &name, &program)?;
            let mut build = cargo();
            build
                .args(["build", "--quiet"])
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", target_dir().join("first-consumer"));
            run(&mut build)
                .with_context(|| format!("the README's {name} program does not build"))?;
            let mut program_run = cargo();
            program_run
                .args(["run", "--quiet"])
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", target_dir().join("first-consumer"));
            with_servers(&mut program_run);
            let shown = format!("the README's {name} program");
            println!("$ ({shown}) cargo run");
            let out = program_run
                .output()
                .with_context(|| format!("cannot run {shown}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!(
                    "{shown} failed with {}:\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Each message printed as "order-N: …"; all 100 (a redelivery may print twice).
            let seen: BTreeSet<&str> = stdout.lines().filter(|l| l.starts_with("order-")).collect();
            if seen.len() != 100 {
                bail!(
                    "{shown} printed {} distinct messages, not 100:\n{stdout}",
                    seen.len()
                );
            }
            println!("{shown}: built and ran, 100 messages processed");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&base);
    outcome
}

fn write_project(dir: &Path, name: &str, program: &Program) -> Result<()> {
    let (Some(dependencies), Some(main)) = (&program.manifest, &program.main) else {
        bail!("the README's {name} program needs both a Cargo.toml and a main.rs block");
    };
    std::fs::create_dir_all(dir.join("src"))?;
    let facade: PathBuf = root().join("crates").join("headwaters");
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"first-{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
             {dependencies}\n\
             # Not published yet: the README's version requirement is met by this checkout.\n\
             [patch.crates-io]\nheadwaters = {{ path = {:?} }}\n",
            facade.display().to_string()
        ),
    )?;
    std::fs::write(dir.join("src").join("main.rs"), main)?;
    // Start from the versions the workspace is tested with.
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::programs;

    #[test]
    fn the_readme_blocks_after_each_marker_are_the_program() {
        let readme = "intro\n<!-- first-consumer x Cargo.toml -->\n```toml\n[dependencies]\na = \"1\"\n```\n\
                      text\n<!-- first-consumer x main.rs -->\n\n```rust\nfn main() {}\n```\n";
        let found = programs(readme).unwrap();
        let x = &found["x"];
        assert_eq!(x.manifest.as_deref(), Some("[dependencies]\na = \"1\"\n"));
        assert_eq!(x.main.as_deref(), Some("fn main() {}\n"));
        assert!(programs("no markers").is_err());
        assert!(programs("<!-- first-consumer y lib.rs -->\n```rust\n```\n").is_err());
    }
}
