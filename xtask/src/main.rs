//! `cargo xtask`: the Headwaters task runner (std + anyhow only, so it builds in seconds).
//!
//! | command                 | what it does                                                        |
//! |-------------------------|---------------------------------------------------------------------|
//! | `demo [ARGS]`           | the main job: `examples/pipeline.rs` in release mode                |
//! | `test`                  | unit, doc and emulator tests, then `integration`                    |
//! | `integration`           | starts PostgreSQL, RabbitMQ, kinesalite and Apache Pulsar on 127.0.0.1 (or uses `DATABASE_URL` / `AMQP_URL` / `KINESIS_ENDPOINT` / `PULSAR_WS_URL`), runs the server tests (those marked ignored for plain `cargo test`) and the three `*_ordered` examples briefly, checks the emulators with third-party clients, a smoke run of every benchmark, tears down |
//! | `bench [NAME] [ARGS]`   | the benchmarks (`ordering`, `status`, `flusher`, `amqp`, `pulsar`, … or all), against throwaway PostgreSQL, RabbitMQ, kinesalite and (for `pulsar`) Apache Pulsar |
//! | `codegen [--check]`     | prost code from `proto/` into the crates (protox: no `protoc` needed) |
//! | `fuzz [SECONDS]`        | every fuzz target under `fuzz/` for SECONDS each (default 600; stable toolchain) |
//! | `emulators`             | only the third-party checks of the emulators                        |
//! | `pulsar CMD [ARGS]`     | a throwaway Apache Pulsar standalone (from Maven Central) around one command, e.g. an example |
//! | `chaos [--minutes N]`   | the chaos soak (`examples/chaos.rs`, release) against a throwaway RabbitMQ and the emulators |
//! | `first-consumer`        | the README's first-consumer programs, built and run in fresh projects outside the workspace |
//! | `ci`                    | fmt, clippy, each crate without default features and the facade per feature, `test`, a 1-minute chaos soak, docs, the demo, `cargo package` checks |

mod emulators;
mod first_consumer;
mod pulsar;
mod servers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::pulsar::Pulsar;
use crate::servers::{Kinesis, Postgres, Rabbit};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    std::env::set_current_dir(root()).context("cannot enter the workspace root")?;
    match args.first().map(String::as_str) {
        Some("demo") => demo(rest),
        Some("test") => test(),
        Some("integration") => integration(),
        Some("bench") => bench(rest),
        Some("emulators") => {
            emulators::pulsar_python_check()?;
            emulators::eventstore_node_check()
        }
        Some("fuzz") => fuzz(rest),
        Some("chaos") => chaos(rest, true),
        Some("codegen") => run(cargo()
            .args(["run", "-q", "-p", "xtask-codegen", "--locked", "--"])
            .args(rest)),
        Some("pulsar") => pulsar_with(rest),
        Some("first-consumer") => first_consumer_alone(),
        Some("ci") => ci(),
        Some("help" | "-h" | "--help") | None => {
            println!("{}", USAGE);
            Ok(())
        }
        Some(other) => bail!("unknown xtask command {other:?}\n\n{USAGE}"),
    }
}

const USAGE: &str = "\
usage: cargo xtask <command>

  demo [ARGS]    run the pipeline example (ARGS go to it: --messages N --keys K --db PATH)
  test           unit, doc and emulator tests, then `integration` (the README's test command)
  integration    start PostgreSQL, RabbitMQ, kinesalite and Apache Pulsar on 127.0.0.1 (or use DATABASE_URL /
                 AMQP_URL / KINESIS_ENDPOINT / PULSAR_WS_URL), run the server tests and the three *_ordered examples,
                 check the emulators with third-party clients (Python websockets, node-eventstore-client),
                 smoke-run the benchmarks
  bench [NAME] [ARGS]  run the benchmarks: NAME is ordering | status | flusher | amqp | mississippi | pulsar | pulsar_codec | eventstore | kinesis
                 (default: all);
                 ARGS go to criterion (e.g. a filter, --measurement-time 3)
  codegen [--check]  regenerate the prost code from proto/ (or check it is up to date)
  fuzz [SECONDS] run every fuzz target for SECONDS each (default 600; installs cargo-fuzz if missing)
  emulators      only the third-party checks of the emulators (Python websockets, node-eventstore-client)
  chaos [ARGS]   the chaos soak against a throwaway RabbitMQ (kill -9 and restart) and the emulators, with
                 frozen, cut and slow connections and handler panics; ARGS: --minutes N (default 1) --keys K
                 --rate MSGS_PER_S --seed S --hang-limit SECONDS, --real-pulsar (a throwaway Pulsar standalone,
                 restarted with kill -9, instead of the emulator); exits non-zero on loss, disorder or a hang
  pulsar CMD [ARGS]  start a throwaway Apache Pulsar standalone (Maven Central jars, Java 17), run CMD with
                 PULSAR_WS_URL, PULSAR_TOKEN, PULSAR_ADMIN_URL and PULSAR_BROKER_URL set, then stop it
                 (e.g. `cargo xtask pulsar cargo run -p headwaters --example pulsar_ordered`)
  first-consumer build and run the README's 'Your first ordered consumer' programs in fresh projects outside
                 the workspace, against throwaway RabbitMQ and Pulsar and the EventStore emulator
  ci             fmt, clippy, test, docs, demo, cargo package (what .ci/run runs)";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Run a command, echoing it (the values of variables that hold secrets redacted); fail with
/// its exit status.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = shown(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("`{shown}` failed with {status}");
    }
    Ok(())
}

/// The command as a shell would spell it, with the value of each variable whose name says
/// it holds a secret (`…TOKEN…`, `…PASSWORD…`, `…SECRET…`) replaced by `<redacted>`.
fn shown(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (name, value) in cmd.get_envs() {
        let name = name.to_string_lossy();
        let secret = ["TOKEN", "PASSWORD", "SECRET"]
            .iter()
            .any(|s| name.to_ascii_uppercase().contains(s));
        let value = match value {
            Some(_) if secret => "<redacted>".to_owned(),
            Some(v) => without_password(&v.to_string_lossy()),
            None => continue,
        };
        words.push(format!("{name}={value}"));
    }
    words.push(cmd.get_program().to_string_lossy().into_owned());
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// A URL with the password of its user info (`scheme://user:password@host`) redacted.
fn without_password(value: &str) -> String {
    if let Some((scheme, rest)) = value.split_once("://")
        && let Some((user_info, host)) = rest.split_once('@')
        && let Some((user, _password)) = user_info.split_once(':')
    {
        return format!("{scheme}://{user}:<redacted>@{host}");
    }
    value.to_owned()
}

/// Whether CI asked for `--locked` (always in `ci`; everywhere else the lock file may move).
fn locked() -> &'static [&'static str] {
    if std::env::var_os("CI").is_some() {
        &["--locked"]
    } else {
        &[]
    }
}

fn demo(args: &[String]) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "headwaters",
            "--example",
            "pipeline",
        ])
        .args(locked())
        .arg("--")
        .args(args))
}

fn test() -> Result<()> {
    run(cargo().args(["test", "--workspace"]).args(locked()))?;
    integration()
}

fn integration() -> Result<()> {
    let pg = Postgres::from_env_or_start()?;
    let rabbit = Rabbit::from_env_or_start()?;
    let kinesis = Kinesis::from_env_or_start()?;
    let pulsar = Pulsar::from_env_or_start()?;
    let with_servers = |cmd: &mut Command| {
        cmd.env("DATABASE_URL", pg.url())
            .env("AMQP_URL", rabbit.url())
            .env("KINESIS_ENDPOINT", kinesis.url());
        cmd.envs(rabbit.test_env());
        cmd.envs(pg.test_env());
        cmd.envs(pulsar.test_env());
    };
    let outcome = (|| {
        let mut tests = cargo();
        tests.args(["test", "--workspace"]).args(locked());
        // The tests that kill and restart the broker run alone, after the others.
        // `sac_child_instance` and `kinesis_child_instance` are roles that tests run in a
        // child process they kill.
        tests.args([
            "--",
            "--ignored",
            "--skip",
            "broker_restart",
            "--skip",
            "sac_child_instance",
            "--skip",
            "kinesis_child_instance",
        ]);
        if !rabbit.is_local() {
            println!(
                "note: AMQP_URL points at a broker xtask did not set up: the tests that need its TLS listener (`amqps_`) \
                 or kill and restart it (`broker_restart`) are not run"
            );
            tests.args(["--skip", "amqps_"]);
        }
        if !pg.is_local() {
            println!(
                "note: DATABASE_URL points at a server xtask did not set up: the PostgreSQL TLS tests (`pg_tls_`) need its CA and are not run"
            );
            tests.args(["--skip", "pg_tls_"]);
        }
        if !pulsar.is_local() {
            if std::env::var_os("PULSAR_TOKEN").is_none() {
                println!(
                    "note: PULSAR_WS_URL is set without PULSAR_TOKEN: the live token scenario (`live::tokens_`) needs a broker with JWT authentication and is not run"
                );
                tests.args(["--skip", "live::tokens_"]);
            }
            if std::env::var_os("HEADWATERS_PULSAR_PEER_CLASSPATH").is_none()
                || std::env::var_os("PULSAR_BROKER_URL").is_none()
            {
                println!(
                    "note: PULSAR_WS_URL is set without PULSAR_BROKER_URL and HEADWATERS_PULSAR_PEER_CLASSPATH: the Java client peer tests (`java_peer`) are not run"
                );
                tests.args(["--skip", "java_peer"]);
            }
        }
        with_servers(&mut tests);
        run(&mut tests)?;
        if rabbit.is_local() {
            let mut restart = cargo();
            restart.args(["test", "--workspace"]).args(locked());
            restart.args(["--", "--ignored", "--nocapture", "broker_restart"]);
            with_servers(&mut restart);
            run(&mut restart)?;
        }
        // The three ordered examples of one shape, briefly, as a user would run them: the
        // Pulsar one against the real broker, then against its embedded emulator.
        for example in ["amqp_ordered", "pulsar_ordered", "eventstore_ordered"] {
            let mut run_example = cargo();
            run_example
                .args(["run", "-p", "headwaters", "--example", example])
                .args(locked())
                .args(["--", "2000", "20"]);
            with_servers(&mut run_example);
            run(&mut run_example)?;
            if example == "pulsar_ordered" {
                run(run_example.env_remove("PULSAR_WS_URL"))?;
            }
        }
        // The README's first consumers, as a user would copy them.
        let (_eventstore, eventstore_addr) = emulators::eventstore_emulator()?;
        first_consumer::check(&|cmd: &mut Command| {
            with_servers(cmd);
            cmd.env("EVENTSTORE_ADDR", &eventstore_addr);
        })?;
        // The emulators, checked by clients we did not write — the Pulsar check also against
        // the real broker, so that it holds the emulator to what the broker does.
        emulators::pulsar_python_check()?;
        if let Some((url, token)) = pulsar.fresh_broker() {
            emulators::pulsar_python_check_at(&url, &token)?;
        }
        emulators::eventstore_node_check()?;
        // Every benchmark once, briefly (a smoke run), against the real servers.
        let mut benches = cargo();
        benches
            .args(["test", "-p", "headwaters-benches", "--benches"])
            .args(locked());
        with_servers(&mut benches);
        with_node_client(&mut benches);
        run(&mut benches)
    })();
    if outcome.is_err() {
        pg.print_log();
        rabbit.print_log();
        pulsar.print_log();
    }
    outcome
}

/// The README's first-consumer programs against throwaway RabbitMQ, Pulsar and EventStore
/// emulator (or the servers the environment names).
fn first_consumer_alone() -> Result<()> {
    let rabbit = Rabbit::from_env_or_start()?;
    let pulsar = Pulsar::from_env_or_start()?;
    let (_eventstore, eventstore_addr) = emulators::eventstore_emulator()?;
    first_consumer::check(&|cmd: &mut Command| {
        cmd.env("AMQP_URL", rabbit.url())
            .env("EVENTSTORE_ADDR", &eventstore_addr)
            .envs(pulsar.test_env());
    })
}

/// Run `args` (a command) beside a throwaway Pulsar standalone.
fn pulsar_with(args: &[String]) -> Result<()> {
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: cargo xtask pulsar CMD [ARGS]");
    };
    let pulsar = Pulsar::from_env_or_start()?;
    let outcome = run(Command::new(program).args(rest).envs(pulsar.test_env()));
    if outcome.is_err() {
        pulsar.print_log();
    }
    outcome
}

/// Let the eventstore bench compare with node-eventstore-client (installed on first use);
/// without Node the bench says the comparison did not run.
fn with_node_client(cmd: &mut Command) {
    match emulators::node_modules() {
        Ok(modules) => {
            cmd.env("NODE_PATH", modules);
        }
        Err(e) => eprintln!("xtask: no node-eventstore-client for the eventstore bench: {e:#}"),
    }
}

/// The bench targets of `benches/`.
const BENCHES: [&str; 9] = [
    "ordering",
    "status",
    "flusher",
    "amqp",
    "mississippi",
    "pulsar",
    "pulsar_codec",
    "eventstore",
    "kinesis",
];

fn bench(args: &[String]) -> Result<()> {
    let pg = Postgres::from_env_or_start()?;
    let rabbit = Rabbit::from_env_or_start()?;
    let kinesis = Kinesis::from_env_or_start()?;
    // The Pulsar bench also measures against a real broker.
    let pulsar = match args.first() {
        Some(name) if BENCHES.contains(&name.as_str()) && name != "pulsar" => None,
        _ => Some(Pulsar::from_env_or_start()?),
    };
    let mut cmd = cargo();
    if let Some(pulsar) = &pulsar {
        cmd.envs(pulsar.test_env());
    }
    cmd.args(["bench", "-p", "headwaters-benches"])
        .args(locked());
    let rest = match args.first() {
        Some(name) if BENCHES.contains(&name.as_str()) => {
            cmd.args(["--bench", name]);
            &args[1..]
        }
        _ => args,
    };
    cmd.arg("--")
        .args(rest)
        .env("DATABASE_URL", pg.url())
        .env("AMQP_URL", rabbit.url())
        .env("KINESIS_ENDPOINT", kinesis.url());
    with_node_client(&mut cmd);
    let outcome = run(&mut cmd);
    if outcome.is_err() {
        pg.print_log();
        rabbit.print_log();
        if let Some(pulsar) = &pulsar {
            pulsar.print_log();
        }
    }
    outcome
}

/// The publishable crates, each checked alone without its default features: feature gates
/// that leave something unbuilt or unused show up here, not in a user's build.
const CRATES: [&str; 9] = [
    "headwaters-ordering-core",
    "headwaters-process-status",
    "headwaters-batch-flusher",
    "headwaters-amqp-consumer",
    "headwaters-pulsar-ws",
    "headwaters-eventstore-tcp",
    "headwaters-kinesis",
    "headwaters-testkit",
    "headwaters",
];

/// The facade's features, each checked alone: a user who picks one gets a build.
const FACADE_FEATURES: [&str; 7] = [
    "ordering",
    "status",
    "flusher",
    "amqp",
    "pulsar",
    "eventstore",
    "kinesis",
];

fn feature_checks() -> Result<()> {
    let alone = CRATES.iter().map(|krate| vec!["-p", krate]);
    let facade = FACADE_FEATURES
        .iter()
        .map(|feature| vec!["-p", "headwaters", "--features", feature]);
    for args in alone.chain(facade) {
        let shown = format!(
            "cargo check {} --no-default-features --locked",
            args.join(" ")
        );
        println!("$ {shown}");
        let out = cargo()
            .arg("check")
            .args(&args)
            .args(["--no-default-features", "--locked"])
            .output()
            .with_context(|| format!("cannot start {shown}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("warning:") {
            eprintln!("{stderr}");
            bail!("`{shown}` failed or warned");
        }
    }
    // Targets `cargo test --workspace` leaves out because they need features that are off
    // by default: said by name, then built here with every feature, so none is skipped
    // silently.
    let gated = feature_gated_targets()?;
    for (package, target, features) in &gated {
        println!(
            "note: `cargo test --workspace` does not build {package}'s `{target}` (needs {}); built below with --all-features",
            features.join(", ")
        );
    }
    for package in gated
        .iter()
        .map(|(p, ..)| p.as_str())
        .collect::<std::collections::BTreeSet<_>>()
    {
        run(cargo().args([
            "clippy",
            "-p",
            package,
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    Ok(())
}

/// The workspace's targets whose `required-features` are not all on by default:
/// (package, target, features).
fn feature_gated_targets() -> Result<Vec<(String, String, Vec<String>)>> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut gated = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        // The features on by default, with what they turn on in the same package.
        let mut on: Vec<String> = strings(&package["features"]["default"]);
        let mut i = 0;
        while i < on.len() {
            for f in strings(&package["features"][on[i].as_str()]) {
                if !f.contains(':') && !f.contains('/') && !on.contains(&f) {
                    on.push(f);
                }
            }
            i += 1;
        }
        for target in package["targets"].as_array().into_iter().flatten() {
            let needs = strings(&target["required-features"]);
            let missing: Vec<String> = needs.into_iter().filter(|f| !on.contains(f)).collect();
            if !missing.is_empty() {
                let target = target["name"].as_str().unwrap_or_default().to_owned();
                gated.push((name.to_owned(), target, missing));
            }
        }
    }
    Ok(gated)
}

/// The chaos soak, in release mode unless `release` is false (CI reuses its debug build).
/// `--real-pulsar` (taken here) runs its Pulsar part against a throwaway Pulsar standalone
/// (or `PULSAR_WS_URL`), restarted with kill -9, instead of the emulator.
fn chaos(args: &[String], release: bool) -> Result<()> {
    let rabbit = Rabbit::from_env_or_start()?;
    let real_pulsar = args.iter().any(|a| a == "--real-pulsar");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--real-pulsar").collect();
    let pulsar = if real_pulsar {
        Some(Pulsar::from_env_or_start()?)
    } else {
        None
    };
    let mut cmd = cargo();
    if let Some(pulsar) = &pulsar {
        cmd.envs(pulsar.test_env());
    }
    cmd.arg("run");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "headwaters", "--example", "chaos"])
        .args(locked())
        .arg("--")
        .args(args)
        .env("AMQP_URL", rabbit.url())
        .envs(rabbit.test_env());
    let outcome = run(&mut cmd);
    if outcome.is_err() {
        rabbit.print_log();
        if let Some(pulsar) = &pulsar {
            pulsar.print_log();
        }
    }
    outcome
}

/// The targets under `fuzz/fuzz_targets`.
const FUZZ_TARGETS: [&str; 5] = [
    "pulsar_ws_frames",
    "eventstore_frames",
    "eventstore_messages",
    "eventstore_gossip",
    "etf_terms",
];

fn fuzz(args: &[String]) -> Result<()> {
    let seconds: u64 = match args.first() {
        Some(s) => s
            .parse()
            .with_context(|| format!("SECONDS: {s:?} is not a number"))?,
        None => 600,
    };
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in FUZZ_TARGETS {
        // New inputs go to a scratch corpus; the checked-in seeds stay as they are.
        let scratch = std::env::temp_dir().join(format!("headwaters-fuzz-{target}"));
        std::fs::create_dir_all(&scratch)?;
        run(cargo()
            .current_dir(root().join("fuzz"))
            // cargo-fuzz passes nightly-only flags; this lets the stable toolchain accept them.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&scratch)
            .arg(Path::new("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

/// `cargo package --workspace` verifies each crate against the others through a local
/// registry under `target/package`, which cargo unpacks into `$CARGO_HOME/registry/src` and
/// never unpacks again for the same path and version. A second run on the same checkout
/// would then verify against the sources of the first; our crates are not published, so
/// every unpacked copy of them is such a leftover and is removed.
fn forget_unpacked_workspace_crates() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(home) = home else { return };
    for kind in ["src", "cache"] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            let Ok(entries) = std::fs::read_dir(registry.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("headwaters-")
                {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    let step = |name: &str| println!("\n==> {name} ({:.0?} so far)", started.elapsed());
    step("fmt");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    step(
        "each crate without its default features, and the facade with each feature alone (no errors, no warnings)",
    );
    feature_checks()?;
    step("test");
    test()?;
    step("chaos soak: 1 minute");
    chaos(&["--minutes".to_owned(), "1".to_owned()], false)?;
    step("generated code is up to date");
    run(cargo().args([
        "run",
        "-q",
        "-p",
        "xtask-codegen",
        "--locked",
        "--",
        "--check",
    ]))?;
    step("fuzz targets: 30 s each from the checked-in corpus");
    fuzz(&["30".to_owned()])?;
    step("docs");
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    step("demo (debug build, smaller run)");
    run(cargo()
        .args([
            "run",
            "-p",
            "headwaters",
            "--example",
            "pipeline",
            "--locked",
            "--",
        ])
        .args(["--messages", "200000", "--keys", "2000"]))?;
    step("cargo package");
    forget_unpacked_workspace_crates();
    run(cargo().args([
        "package",
        "--workspace",
        "--locked",
        "--exclude",
        "xtask",
        "--exclude",
        "xtask-codegen",
        "--exclude",
        "headwaters-benches",
    ]))?;
    println!("\nci: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn echoed_commands_do_not_show_secrets() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--workspace"])
            .env("PULSAR_TOKEN", "eyJhbGciOi.secret.sig")
            .env("PGPASSWORD", "hunter2")
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
            .env("KINESIS_ENDPOINT", "http://127.0.0.1:4567");
        let shown = super::shown(&cmd);
        assert!(
            !shown.contains("secret.sig") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("PULSAR_TOKEN=<redacted>"), "{shown}");
        assert!(
            shown.contains("AMQP_URL=amqp://guest:<redacted>@127.0.0.1:5672/%2f"),
            "{shown}"
        );
        assert!(
            shown.contains("KINESIS_ENDPOINT=http://127.0.0.1:4567"),
            "{shown}"
        );
        assert!(shown.ends_with("cargo test --workspace"), "{shown}");
    }
}
